"""Progress of a conversion on a terminal: a bar with bytes, percent, rate and ETA (tqdm).

Shown only when stderr is a terminal (and not --quiet); piped or redirected output stays clean.
tqdm is optional: without it the same facts are printed as one self-overwriting line.
"""
from __future__ import annotations

import os
import sys
import threading
import time


class Progress:
    """Bytes and tensors done against known totals. `update` is called by the write loop
    (hubfmt.io.stream.TensorStream) once per tensor; `stage` names what is being done."""

    def __init__(self, total_bytes: int, total_tensors: int, *, enabled: bool | None = None, stream=None,
                 label: str = "writing"):
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
        self._bar = self._tqdm(label) if enabled else None

    def _tqdm(self, label: str):
        return _tqdm_bar(self.stream, total=self.total_bytes, unit="iB", unit_scale=True, unit_divisor=1024,
                         desc=label, leave=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                    "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def update(self, nbytes: int, tensors: int = 1) -> None:
        self.bytes += nbytes
        self.tensors += tensors
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.tensors}/{self.total_tensors} tensors", refresh=False)
            self._bar.update(nbytes)
            return
        now = time.monotonic()
        if now - self._last < 0.1 and self.tensors < self.total_tensors:
            return
        self._last = now
        elapsed = max(now - self._t0, 1e-9)
        rate = self.bytes / elapsed
        eta = (self.total_bytes - self.bytes) / rate if rate else 0.0
        self.stream.write(f"\r  {100 * self.bytes / self.total_bytes:3.0f}% {self.bytes / 2**20:,.0f}/"
                          f"{self.total_bytes / 2**20:,.0f} MiB, {self.tensors}/{self.total_tensors} tensors, "
                          f"{rate / 2**20:,.0f} MiB/s, ETA {eta:.0f} s ")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.tensors:
            self.stream.write("\n")
            self.stream.flush()


class Busy:
    """Work of unknown length (aligning a large model): on a terminal, once it has taken longer
    than `after` seconds, a line with the label and the time so far, redrawn until it ends.

    >>> with Busy("aligning 349 tensors"):      # doctest: +SKIP
    ...     align(...)
    """

    def __init__(self, label: str, *, enabled: bool | None = None, stream=None, after: float = 1.0):
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled, self.label, self.after = enabled, label, after
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.shown = False

    def _run(self) -> None:
        if self._done.wait(self.after):
            return
        bar = _tqdm_bar(self.stream, total=None, desc=self.label, leave=False, bar_format="{desc}... {elapsed}")
        if bar is None:
            return
        self.shown = True
        while not self._done.wait(0.2):
            bar.refresh()
        bar.close()

    def __enter__(self) -> "Busy":
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="hubfmt-busy", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def _tqdm_bar(stream, **kwargs):
    """A tqdm bar on `stream`, or None without tqdm. A terminal that reports no size (a bare pty
    says 0x0) gets 100x24 rather than no bar: tqdm draws nothing on zero columns or rows."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    try:
        size = os.get_terminal_size(stream.fileno())
        cols, rows = size.columns, size.lines
    except (OSError, AttributeError, ValueError):
        cols, rows = 0, 0
    return tqdm(file=stream, dynamic_ncols=bool(cols), ncols=None if cols else 100, nrows=rows or 24,
                mininterval=0.1, **kwargs)
