"""Fewer garbage collections while a checkpoint is converted.

A checkpoint of many tensors is many small objects that live for the whole conversion (a
LazyTensor, a FileSpan, an Entry, a TensorInfo, report events per tensor), and CPython's cyclic
collector, run every 700 new container objects, walks the young ones each time and the old ones
now and then: a third of the CPU time of converting 20,000 tiny tensors, and more the more
tensors there are (#18). While converting, the first generation is collected every 100,000
objects instead; cyclic garbage is still collected, only later (bounded by that count).
"""
from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_THRESHOLDS = (100_000, 50, 100)
_lock = threading.Lock()
_depth = 0
_saved: tuple[int, ...] = ()


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the collector's thresholds for the block (nested and threaded uses restore the
    caller's thresholds once the outermost block ends)."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(*(max(a, b) for a, b in zip(_THRESHOLDS, _saved, strict=True)))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.set_threshold(*_saved)
