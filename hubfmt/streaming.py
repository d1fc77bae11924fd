"""Moving tensor bytes into an output file, one tensor at a time.

`write_tensor` is the one place every writer sends data through: when the source bytes already
lie in a file exactly as needed (LazyTensor.span), it copies file-to-file in the kernel
(copy_file_range, then sendfile); otherwise it loads the tensor, converts its dtype, and writes it.
Either way at most one tensor is in memory.
"""
from __future__ import annotations

import errno
import os
import sys
import time
from typing import BinaryIO

from . import dtypes
from .checkpoint import LazyTensor
from .errors import FormatError

_CHUNK = 1 << 30


def _kernel_copy(src_path: str, offset: int, nbytes: int, out: BinaryIO) -> None:
    """Append src_path[offset:offset+nbytes] to `out` without passing through Python buffers."""
    out.flush()
    dst_fd = out.fileno()
    src_fd = os.open(src_path, os.O_RDONLY)
    try:
        use_cfr = hasattr(os, "copy_file_range")
        done = 0
        while done < nbytes:
            n = min(_CHUNK, nbytes - done)
            if use_cfr:
                try:
                    k = os.copy_file_range(src_fd, dst_fd, n, offset + done)
                except OSError as e:
                    if e.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                        use_cfr = False     # another file system or kernel: sendfile instead
                        continue
                    raise
            else:
                k = os.sendfile(dst_fd, src_fd, offset + done, n)
            if k == 0:
                raise FormatError(f"file ends inside a tensor ({nbytes} bytes at offset {offset})", src_path)
            done += k
    finally:
        os.close(src_fd)
    # The kernel advanced the descriptor's offset; bring the Python file object in step.
    out.seek(0, os.SEEK_END)


def write_tensor(out: BinaryIO, tensor: LazyTensor, dtype: str | None = None) -> int:
    """Write `tensor`'s data as `dtype` (default: its own) to `out`; returns bytes written."""
    dtype = dtype or tensor.dtype
    span = tensor.span
    if span is not None and dtype == tensor.dtype and span.nbytes == tensor.nbytes and span.nbytes:
        _kernel_copy(span.path, span.offset, span.nbytes, out)
        return span.nbytes
    arr = dtypes.convert(tensor.load(), tensor.dtype, dtype)
    data = memoryview(arr).cast("B") if arr.size else b""
    out.write(data)
    return len(data)


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

