"""Axis permutation (a transposing copy) of large arrays, at up to four times numpy's speed.

numpy copies `a.transpose(p)` in the destination's order and reads the source with a large stride,
so nearly every element read is a cache miss: 0.6-0.9 GB/s on 32 MiB kernels here, which made
transposing the largest cost of converting to or from TensorFlow. Copying tile by tile, each tile
small enough to stay in cache, runs at 1.7 GB/s (conv HWIO -> OIHW) to 2.8 GB/s (dense IO -> OI);
benchmarks/permute_bench.py measures both. Axes that stay adjacent and in order are merged
first, so a conv kernel's HWIO <-> OIHW becomes a 3-axis permutation done as 2-D transposes.

>>> a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
>>> bool((permute(a, (2, 1, 0)) == a.transpose(2, 1, 0)).all())
True
"""
from __future__ import annotations

import numpy as np

from hubfmt.io import parallel

_SMALL = 1 << 20          # bytes: below this numpy's own copy is as fast
_TILE = 256               # tile side of large 2-D transposes
_ALIASING = 1024          # source rows this many bytes apart (or a multiple) share cache sets...
_ALIAS_TILE = (64, 1024)  # ...so take few rows per tile (0.6 -> 3.6 GB/s at 8 KiB rows)
_STRIP = 1 << 15          # elements per strip when one side of a 2-D transpose is narrow
# Reading runs this short (OIHW -> HWIO: runs of kh*kw), numpy's own copy beats two tiled steps
# (2.2 against 1.9 GB/s measured on 32 MiB); longer ones (HWIO -> OIHW) it reads with a stride.
_SHORT_RUNS = 16
_SPLIT = 8 << 20          # bytes of source per band at least, before a transpose is split over cores


def permute(a: np.ndarray, axes) -> np.ndarray:
    """`np.ascontiguousarray(a.transpose(axes))`, faster for large arrays."""
    axes = tuple(int(x) % a.ndim for x in axes) if a.ndim else ()
    out = np.empty(tuple(a.shape[x] for x in axes), dtype=a.dtype)
    if a.nbytes < _SMALL or not a.flags.c_contiguous:
        np.copyto(out, a.transpose(axes))
        return out
    shape, perm = _merged(a.shape, axes)
    src = a.reshape(shape)
    dst = out.reshape(tuple(shape[x] for x in perm))
    if perm == (1, 0):
        _transpose_2d(src, dst)
    elif perm == (0, 2, 1):                   # a batch of 2-D transposes
        for i in range(shape[0]):
            _transpose_2d(src[i], dst[i])
    elif perm == (1, 2, 0):                   # (A, B*C) -> (B*C, A)
        _transpose_2d(src.reshape(shape[0], -1), dst.reshape(-1, shape[0]))
    elif perm == (2, 0, 1):                   # (A*B, C) -> (C, A*B)
        _transpose_2d(src.reshape(-1, shape[2]), dst.reshape(shape[2], -1))
    elif perm == (2, 1, 0) and shape[2] > _SHORT_RUNS:   # HWIO -> OIHW: (A, B, C) -> (A, C, B) -> (C, B, A)
        tmp = np.empty((shape[0], shape[2], shape[1]), dtype=a.dtype)
        for i in range(shape[0]):
            _transpose_2d(src[i], tmp[i])
        _transpose_2d(tmp.reshape(shape[0], -1), dst.reshape(-1, shape[0]))
    else:                                     # identity, (1, 0, 2), OIHW -> HWIO and the rest
        np.copyto(dst, src.transpose(perm))
    return out


def _merged(shape: tuple, axes: tuple) -> tuple[tuple, tuple]:
    """The same permutation on fewer axes: size-1 axes dropped, and source axes that stay adjacent
    and in order merged. (3, 3, 64, 32) with (3, 2, 0, 1) -> (9, 64, 32) with (2, 1, 0)."""
    kept = [x for x in axes if shape[x] != 1]
    if not kept:
        return (1,), (0,)
    runs: list[list[int]] = []                # source axes in destination order, in runs
    for x in kept:
        if runs and x > runs[-1][-1] and all(shape[y] == 1 for y in range(runs[-1][-1] + 1, x)):
            runs[-1].append(x)
        else:
            runs.append([x])
    by_source = sorted(range(len(runs)), key=lambda r: runs[r][0])
    merged_shape = tuple(int(np.prod([shape[x] for x in runs[r]])) for r in by_source)
    rank = {r: i for i, r in enumerate(by_source)}
    return merged_shape, tuple(rank[r] for r in range(len(runs)))


def _transpose_2d(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[...] = src.T, tile by tile (src C-contiguous [R, C], dst C-contiguous [C, R]); a large
    one in bands of source rows on every core at once (numpy releases the GIL while it copies
    a tile, and bands write disjoint columns of dst)."""
    rows, cols = src.shape
    if min(rows, cols) >= _TILE:
        th, tw = _ALIAS_TILE if (cols * src.itemsize) % _ALIASING == 0 else (_TILE, _TILE)

        def band(lo: int, hi: int) -> None:
            for j in range(lo, hi, th):
                for i in range(0, cols, tw):
                    dst[i:i + tw, j:j + th] = src[j:j + th, i:i + tw].T
        parallel.split(band, rows, step=th, min_part=max(_SPLIT // max(cols * src.itemsize, 1), th))
    elif rows >= cols:                        # narrow: strips along the long side
        step = max(_STRIP // max(cols, 1), 64)

        def strips(lo: int, hi: int) -> None:
            for j in range(lo, hi, step):
                dst[:, j:j + step] = src[j:j + step].T
        parallel.split(strips, rows, step=step, min_part=max(_SPLIT // max(cols * src.itemsize, 1), step))
    else:
        step = max(_STRIP // max(rows, 1), 64)

        def strips_t(lo: int, hi: int) -> None:
            for i in range(lo, hi, step):
                dst[i:i + step] = src[:, i:i + step].T
        parallel.split(strips_t, cols, step=step, min_part=max(_SPLIT // max(rows * src.itemsize, 1), step))
