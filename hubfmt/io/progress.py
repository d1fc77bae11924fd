"""Progress of a conversion on a terminal."""
from __future__ import annotations

import sys
import time


class Progress:
    """Bytes/tensors done and rate on a terminal's stderr; silent elsewhere or when quiet."""

    def __init__(self, total_bytes: int, total_tensors: int, *, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled
        self.total_bytes = max(total_bytes, 1)
        self.total_tensors = total_tensors
        self.bytes = 0
        self.tensors = 0
        self._t0 = time.monotonic()
        self._last = 0.0

    def update(self, nbytes: int, tensors: int = 1) -> None:
        self.bytes += nbytes
        self.tensors += tensors
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and self.tensors < self.total_tensors:
            return
        self._last = now
        rate = self.bytes / max(now - self._t0, 1e-9) / 2**20
        self.stream.write(f"\r  {self.bytes / 2**20:,.0f}/{self.total_bytes / 2**20:,.0f} MiB, "
                          f"{self.tensors}/{self.total_tensors} tensors, {rate:,.0f} MiB/s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tensors:
            self.stream.write("\n")
            self.stream.flush()
