"""Moving tensor bytes into an output file, one tensor at a time.

`write_tensor` is the one place every writer sends data through: when the source bytes already
lie in a file exactly as needed (LazyTensor.span), it copies file-to-file in the kernel
(copy_file_range, then sendfile); otherwise it loads the tensor, converts its dtype, and writes it.
Either way at most one tensor is in memory.

While writing, it paces the output's writeback to disk (hubfmt.writeback).
"""
from __future__ import annotations

import errno
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Iterable, Iterator

from . import dtypes
from .checkpoint import LazyTensor
from .errors import FormatError
from .writeback import wrote

_CHUNK = 1 << 30
_FOLD_CHUNK = 4 << 20            # cache-sized pieces for checksumming bytes already in a file


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


def fold_region(fd: int, offset: int, nbytes: int, update, value: int = 0) -> int:
    """Fold `update(piece, value) -> value` (zlib.crc32, crc32c) over bytes [offset, offset+nbytes)
    of the open file `fd`: a checksum of data a writer copied in the kernel, read back into one
    reused buffer."""
    buf = bytearray(min(_FOLD_CHUNK, nbytes))
    view = memoryview(buf)
    done = 0
    while done < nbytes:
        want = min(len(buf), nbytes - done)
        got = os.preadv(fd, [view[:want]], offset + done)
        if got <= 0:
            raise OSError(f"file shorter than the {nbytes} bytes written at offset {offset}")
        value = update(view[:got], value)
        done += got
    return value


def kernel_copyable(tensor: LazyTensor, dtype: str | None = None) -> bool:
    """Whether write_tensor(out, tensor, dtype) copies file-to-file (never loading the tensor)."""
    span = tensor.span
    return (span is not None and (dtype or tensor.dtype) == tensor.dtype
            and span.nbytes == tensor.nbytes and span.nbytes > 0)


def prefetched(items: Iterable[tuple[LazyTensor | None, str | None]]) -> Iterator[LazyTensor | None]:
    """Yield each (tensor, dtype)'s tensor for write_tensor, loading the next one that needs
    loading (not kernel_copyable; None passes through) in a background thread meanwhile: reading,
    checksumming and transposing the next tensor overlaps writing this one (numpy copies, preadv
    and file writes release the GIL).

    At most two loaded tensors exist at once (the one being written, the next). All loads happen
    in the one worker thread, in order, so readers with a shared file handle are never entered
    twice. Where no thread can start (a memory rlimit counts its stack), tensors load in place."""
    items = list(items)
    loads = [i for i, (t, dt) in enumerate(items) if t is not None and not kernel_copyable(t, dt)]
    if len(loads) < 2:
        yield from (t for t, _ in items)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubfmt-prefetch")
    futures: dict[int, Future] = {}
    nxt = iter(loads)

    def submit() -> None:
        i = next(nxt, None)
        if i is not None:
            futures[i] = pool.submit(items[i][0].load)
    try:
        submit()                       # starts the worker thread
    except RuntimeError:
        pool.shutdown(wait=False)
        yield from (t for t, _ in items)
        return
    try:
        for i, (t, _) in enumerate(items):
            fut = futures.pop(i, None)
            if fut is None:
                yield t
                continue
            loaded = _handed_once(t, fut.result())
            submit()                   # the next load runs while this tensor is written
            yield loaded
            del loaded
    finally:
        for fut in futures.values():
            fut.cancel()
        pool.shutdown(wait=True)


def _handed_once(t: LazyTensor, arr) -> LazyTensor:
    """`t` with its data already loaded; the first load() takes the array away, so the writer's
    copy is the only one left (a second load() reads again)."""
    held = [arr]
    return LazyTensor(t.shape, t.dtype, lambda: held.pop() if held else t.load())


def write_tensor(out: BinaryIO, tensor: LazyTensor, dtype: str | None = None) -> int:
    """Write `tensor`'s data as `dtype` (default: its own) to `out`; returns bytes written."""
    dtype = dtype or tensor.dtype
    span = tensor.span
    start = out.tell()              # files only: every writer streams into a seekable file
    if kernel_copyable(tensor, dtype):
        _kernel_copy(span.path, span.offset, span.nbytes, out)
        n = span.nbytes
    else:
        arr = dtypes.convert(tensor.load(), tensor.dtype, dtype)
        data = memoryview(arr).cast("B") if arr.size else b""
        out.write(data)
        n = len(data)
    wrote(out, start, start + n)
    return n


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

