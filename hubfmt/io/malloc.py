"""Keep freed memory for reuse: the allocator setting the `hubfmt` command runs with.

A converter allocates one tensor-sized buffer after another (read, transpose, dtype cast), each
freed before the next. glibc serves blocks over its mmap threshold (at most 32 MiB) with fresh
mmaps and unmaps them on free, so every tensor pays for first-touch page faults again: about
0.8 GB/s here, against 4+ GB/s writing into memory already mapped. With mmap off for the main
heap and a high trim threshold, a freed tensor's pages serve the next one. Peak memory is
unchanged (it is the largest set of tensors alive at once); memory freed late in a run is
returned when the process exits.

A process-wide setting, so only the command-line entry point applies it, never the library.
"""
from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 1 << 30


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
