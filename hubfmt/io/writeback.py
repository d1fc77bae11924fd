"""Streaming writes to disk as they happen, and keeping only a little of the output in memory.

Every output is fsynced before it is published (hubfmt.atomic). Left alone, the kernel keeps the
whole output dirty in the page cache and that fsync then waits for all of it; and each new page
of cache is fresh memory, which costs as much as the copy itself on this kind of machine (a VM
whose first touch of a page is ~0.8 GB/s). So after each tensor the writer asks the kernel to
start writing it back (sync_file_range, asynchronous), and drops from the cache what it wrote
longer ago once that is on disk (wait, then POSIX_FADV_DONTNEED), the recipe for streaming
writes known from the Linux kernel list. The cache then holds a few tensors of the output, its
pages are reused warm, disk writes overlap the conversion, and the final fsync finds nothing left
to do: conversions run at about the speed of `cp` followed by `sync` (benchmarks/convert_bench.py),
where leaving it to the kernel was up to three times slower and far less steady.

The newest two ranges and at least _LAG bytes stay cached, because writers patch the bytes just
before a tensor after writing it (a zip member's CRC in its local header) and read a tensor back
(CRCs of kernel-copied data). Ranges are tracked across files, for formats with a file per tensor.
Everything here is a hint: a failure costs speed, never data. Linux only; elsewhere a no-op.
The price: a converted file is not left in the page cache, so reading it right after comes from
disk.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections import deque
from typing import BinaryIO

_EVERY = 8 << 20                 # bytes written to a file between two writeback requests
_LAG = 64 << 20                  # bytes kept cached behind the write position (at least)
_WRITE = 2                       # SYNC_FILE_RANGE_WRITE: start writeback, do not wait
_WAIT_WRITE_WAIT = 1 | 2 | 4     # WAIT_BEFORE | WRITE | WAIT_AFTER: the range is on disk after


def _load_sync_file_range():
    if not sys.platform.startswith("linux") or not hasattr(os, "posix_fadvise"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


class _Pending:
    """A range whose writeback was requested and whose pages are still cached."""
    __slots__ = ("fd", "start", "end")

    def __init__(self, fd: int, start: int, end: int):
        self.fd, self.start, self.end = fd, start, end


# descriptor -> (its file object when last seen, inode, start of unsubmitted bytes, bytes and calls
# since its end was last asked); a descriptor reused by another file is told by its file object,
# then by its inode
_unsubmitted: dict[int, tuple[object, int, int, int, int]] = {}
_pending: deque[_Pending] = deque()               # oldest first, across files (OneFlow: one per tensor)
_pending_bytes = 0
# Library users may write several outputs from several threads: the bookkeeping is shared, the
# (possibly waiting) system calls are made outside the lock.
_lock = threading.Lock()
# Where a file ends is asked (out.tell(), a system call) after this many bytes or calls, not per
# tensor: a million tiny tensors made a million lseeks (#18). Framing between tensors is not
# counted in the bytes, hence the calls.
_ASK_EVERY_CALLS = 256


def wrote(out: BinaryIO, nbytes: int) -> None:
    """`out` received `nbytes` more bytes at its end (flushed or not): pace its writeback."""
    global _pending_bytes
    if _sync_file_range is None or nbytes <= 0:
        return
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):      # an in-memory stream: nothing to do
        return
    known = _unsubmitted.get(fd)
    if known is not None and known[0] is out:
        ino = known[1]          # the same file object as last time: the same file (no fstat a tensor)
    else:
        try:
            ino = os.fstat(fd).st_ino
        except OSError:
            return
    with _lock:
        known = _unsubmitted.get(fd)
        if known is not None and known[1] == ino:
            first, since, calls = known[2], known[3] + nbytes, known[4] + 1
        else:
            first, since, calls = 0, nbytes, 1      # a file first seen: everything in it is unsubmitted
        _unsubmitted[fd] = (out, ino, first, since, calls)
    if since < _EVERY and calls < _ASK_EVERY_CALLS:
        return
    try:
        end = out.tell()
    except (OSError, ValueError):
        return
    with _lock:
        _unsubmitted[fd] = (out, ino, first if end - first < _EVERY else end, 0, 0)
    if end - first < _EVERY:
        return
    out.flush()
    if _sync_file_range(fd, first, end - first, _WRITE) != 0:
        return
    try:
        dup = os.dup(fd)                  # the writer may close its file before the range is dropped
    except OSError:
        return
    old: list[_Pending] = []
    with _lock:
        _pending.append(_Pending(dup, first, end))
        _pending_bytes += end - first
        # Drop the oldest ranges, keeping the newest two and at least _LAG bytes cached.
        while len(_pending) > 2 and _pending_bytes - (_pending[0].end - _pending[0].start) >= _LAG:
            old.append(_pending.popleft())
            _pending_bytes -= old[-1].end - old[-1].start
    for r in old:
        try:
            if _sync_file_range(r.fd, r.start, r.end - r.start, _WAIT_WRITE_WAIT) == 0:
                os.posix_fadvise(r.fd, r.start, r.end - r.start, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass                      # a hint not taken: the page cache keeps the range
        finally:
            os.close(r.fd)


def settle() -> None:
    """Forget all pending ranges (their files are about to be published or removed)."""
    global _pending_bytes
    with _lock:
        done = list(_pending)
        _pending.clear()
        _pending_bytes = 0
        _unsubmitted.clear()
    for r in done:
        os.close(r.fd)
