"""Keep freed memory for reuse: the allocator setting the `hubfmt` command runs with.

A converter allocates one tensor-sized buffer after another (read, transpose, dtype cast), each
freed before the next. glibc serves blocks over its mmap threshold (at most 32 MiB) with fresh
mmaps and unmaps them on free, so every tensor pays for first-touch page faults again: about
0.8 GB/s here, against 4+ GB/s writing into memory already mapped. With mmap off for the main
heap and a high trim threshold, a freed tensor's pages serve the next one. Peak memory is
unchanged (it is the largest set of tensors alive at once); memory freed late in a run is
returned when the process exits.

A process-wide setting, so only the command-line entry point asks for it (`allow_reuse`), never
the library; and it is applied (`for_tensors`) only when a conversion holds a tensor over glibc's
largest mmap threshold (32 MiB), the only case it helps: smaller buffers are reused by glibc's own
dynamic threshold. It has a cost: with mmap off, every large transient block (a million tensors'
header and manifest text, their parsed JSON) is carved from the one heap, whose peak then stays
resident: 1.32 GB instead of 0.88 GB for 1,000,000 tiny tensors (#13).
"""
from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 1 << 30
MMAP_THRESHOLD_MAX = 32 << 20          # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems

_allowed = False                       # the command line asked for reuse (allow_reuse)
_applied = False


def allow_reuse() -> None:
    """The `hubfmt` command's consent: conversions may switch the allocator to reuse (for_tensors)."""
    global _allowed
    _allowed = True


def for_tensors(largest: int) -> bool:
    """Before a conversion writes: keep freed memory for reuse when the command line allowed it
    and a tensor of `largest` bytes would otherwise be mmapped afresh each time. True when applied."""
    global _applied
    if _allowed and not _applied and largest > MMAP_THRESHOLD_MAX:
        _applied = reuse_freed_memory()
    return _applied


def reuse_freed_memory() -> bool:
    """Tell glibc to keep freed heap memory for reuse; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):          # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Trim threshold first: mmap off alone would still hand freed top-of-heap pages back.
    return mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
