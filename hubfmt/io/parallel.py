"""Checksums over both cores: a checksum pass split across threads, and one folded behind the writer.

zlib.crc32 runs at about 2 GB/s on one core here (google-crc32c's CRC-32C at about 6), so a
checksum over a whole multi-GiB file is CPU bound. Both extensions release the GIL on large
buffers, so threads run them in parallel:

- `fold_file` splits a byte range into one part per core, checksums the parts at once and joins
  the values with `combine` (the CRC of A + B from crc(A), crc(B) and len(B), as zlib's
  crc32_combine: no byte is read twice);
- `BehindWriter` folds what a writer just wrote on a second thread, in order, while the writer
  produces the next bytes (MindSpore's crc_num is one CRC-32 over the whole file);
- `split` runs one job in parts on helper threads at once (hubfmt.permute's tiled transposes:
  numpy releases the GIL while it copies a tile).

Where no thread can start (an address-space limit counts thread stacks), both run in the
caller's thread. Nothing here imports a framework.

>>> import zlib
>>> combine("crc32", zlib.crc32(b"hello "), zlib.crc32(b"world"), 5) == zlib.crc32(b"hello world")
True
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from hubfmt.format import checksums
from hubfmt.io.stream import fold_region

# The reflected generator polynomials (zlib's CRC-32; Castagnoli's CRC-32C).
_POLY = {"crc32": 0xEDB88320, "crc32c": 0x82F63B78}
_MIN_PART = 64 << 20        # below this a second thread costs more than it saves


def cores() -> int:
    """CPUs this process may run on (its affinity mask: `taskset -c 0` makes it 1)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_helpers: ThreadPoolExecutor | None = None
_helpers_lock = threading.Lock()


def _helper_pool() -> ThreadPoolExecutor | None:
    """The process's helper threads (one fewer than its cores), started on first use; None when
    there is one core or no thread can start."""
    global _helpers
    with _helpers_lock:
        if _helpers is None and cores() > 1:
            try:
                _helpers = ThreadPoolExecutor(cores() - 1, thread_name_prefix="hubfmt-split")
            except RuntimeError:
                return None
        return _helpers


def _forget_helpers() -> None:
    # A forked child has the pool object but none of its threads: it starts its own.
    global _helpers, _helpers_lock
    _helpers, _helpers_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def split(job, n: int, *, step: int = 1, min_part: int = 1) -> None:
    """`job(lo, hi)` over [0, n) in one part per core (parts at least `min_part` long, bounds
    multiples of `step`), the first in this thread, the others on helper threads at once. The
    parts must not depend on one another. Where no helper can start, all of it here, in order."""
    parts = max(1, min(cores(), n // max(min_part, 1)))
    pool = _helper_pool() if parts > 1 else None
    if pool is None:
        job(0, n)
        return
    bounds = sorted({min(n, (n * i // parts + step - 1) // step * step) for i in range(parts)} | {n})
    ranges = list(zip(bounds[:-1], bounds[1:], strict=True))
    futures, here = [], ranges[:1]
    for k, (lo, hi) in enumerate(ranges[1:], start=1):
        try:
            futures.append(pool.submit(job, lo, hi))
        except RuntimeError:    # no thread could start: the rest here, in order
            here += ranges[k:]
            break
    for lo, hi in here:
        job(lo, hi)
    for fut in futures:
        fut.result()


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


_ZEROS_UP_TO = 1 << 20
_ZEROS = memoryview(bytes(_ZEROS_UP_TO))


def combine(algorithm: str, crc1: int, crc2: int, len2: int) -> int:
    """The checksum of A followed by B, from crc(A) = crc1, crc(B) = crc2 and len(B) = len2
    (zlib's crc32_combine: crc1 advanced over len2 zero bytes by matrix squaring, O(log len2))."""
    if len2 <= 0:
        return crc1
    if len2 <= _ZEROS_UP_TO:
        # Short B: run the checksum itself over len2 zero bytes (C speed; the matrix squaring
        # below costs ~1 ms in Python whatever len2 is, too much once per tiny tensor). The
        # checksum is affine in its start value: crc(Z, c1) ^ crc(Z, 0) advances c1 over Z.
        update = checksums.updater(algorithm)
        zeros = _ZEROS[:len2]
        return update(zeros, crc1) ^ update(zeros, 0) ^ crc2
    odd = [_POLY[algorithm]] + [1 << n for n in range(31)]   # the operator for one zero bit
    even = _gf2_square(odd)                                   # two zero bits
    odd = _gf2_square(even)                                   # four
    while True:
        even = _gf2_square(odd)                               # the next power of two zero bits...
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)                     # ...applied where len2 has a 1 bit
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def fold_file(fd: int, offset: int, nbytes: int, algorithm: str, value: int = 0, *, parts: int | None = None) -> int:
    """The `algorithm` checksum of bytes [offset, offset+nbytes) of the open file `fd`, continuing
    from `value`: one part per core (`parts`), each read into its own reused buffer, at once."""
    update = checksums.updater(algorithm)
    parts = max(1, min(parts or cores(), nbytes // _MIN_PART))
    if parts == 1:
        return fold_region(fd, offset, nbytes, update, value)
    bounds = [offset + nbytes * i // parts for i in range(parts + 1)]
    try:
        pool = ThreadPoolExecutor(parts - 1, thread_name_prefix="hubfmt-crc")
    except RuntimeError:
        return fold_region(fd, offset, nbytes, update, value)
    with pool:
        try:
            later = [pool.submit(fold_region, fd, bounds[i], bounds[i + 1] - bounds[i], update)
                     for i in range(1, parts)]
        except RuntimeError:          # no thread could start: the rest here, in order
            later = []
        value = fold_region(fd, bounds[0], bounds[1] - bounds[0], update, value)
        for i, fut in enumerate(later, start=1):
            value = combine(algorithm, value, fut.result(), bounds[i + 1] - bounds[i])
        for i in range(len(later) + 1, parts):
            value = fold_region(fd, bounds[i], bounds[i + 1] - bounds[i], update, value)
    return value


class BehindWriter:
    """One checksum over a file being written, folded on a second thread behind the writer:
    `advance(end)` after the writer put bytes up to `end` (flushed: the fold reads the file, from
    the page cache), `value()` waits for the fold to catch up and returns it. Regions fold in
    order, so any checksum that chains (CRC-32, CRC-32C) comes out as one pass would make it."""

    def __init__(self, fd: int, algorithm: str, start: int = 0):
        self.fd, self.done, self._value = fd, start, 0
        self._update = checksums.updater(algorithm)
        self._last: Future | None = None
        self._lock = threading.Lock()
        try:
            self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="hubfmt-fold")
        except RuntimeError:
            self._pool = None

    def _fold(self, offset: int, n: int) -> None:
        with self._lock:      # one fold at a time, in submission order (a single worker)
            self._value = fold_region(self.fd, offset, n, self._update, self._value)

    def advance(self, end: int) -> None:
        n, offset = end - self.done, self.done
        if n <= 0:
            return
        self.done = end
        if self._pool is not None:
            try:
                self._last = self._pool.submit(self._fold, offset, n)
                return
            except RuntimeError:
                self._pool = None
        self._fold(offset, n)

    def value(self) -> int:
        if self._last is not None:
            self._last.result()
        return self._value

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "BehindWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

