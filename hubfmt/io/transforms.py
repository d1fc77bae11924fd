"""The numpy transforms between tensor layouts (hubfmt.format.layouts names them): conv and
dense kernels, depthwise kernels, fused recurrent gates."""
from __future__ import annotations

import numpy as np

from ..format.layouts import check_permutation, is_depthwise_pair
from hubfmt.io.permute import permute


def convert_layout(array: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Reorder `array` from layout `src` to `dst` (C-contiguous result).

    >>> convert_layout(np.zeros((3, 3, 8, 16)), "HWIO", "OIHW").shape
    (16, 8, 3, 3)
    """
    if src == dst:
        return array
    if is_depthwise_pair(src, dst):
        if src == "HWCM":
            kh, kw, c, m = array.shape
            # TF output channel c*m + j is channel c's j-th filter: the same order torch uses.
            return permute(array, (2, 3, 0, 1)).reshape(c * m, 1, kh, kw)
        raise ValueError("OIHW -> HWCM needs the multiplier: use depthwise_to_hwcm")
    check_permutation(src, dst)
    return permute(array, [src.index(a) for a in dst])


def depthwise_to_hwcm(array: np.ndarray, channels: int) -> np.ndarray:
    """Canonical depthwise [C*M, 1, kh, kw] -> TensorFlow [kh, kw, C, M]."""
    cm, one, kh, kw = array.shape
    if one != 1 or cm % channels:
        raise ValueError(f"not a depthwise kernel for {channels} channels: shape {array.shape}")
    return permute(array.reshape(channels, cm // channels, kh, kw), (2, 3, 0, 1))


def reorder_gates(array: np.ndarray, src: str, dst: str, axis: int = 0) -> np.ndarray:
    """Reorder the gate blocks of a fused recurrent tensor along `axis`: e.g. TF1 BasicLSTMCell
    "ijfo" (j is the cell candidate, canonical g) to canonical "ifgo" -> reorder_gates(a, "igfo", "ifgo")."""
    if src == dst:
        return array
    check_permutation(src, dst)
    blocks = np.split(array, len(src), axis=axis)
    return np.ascontiguousarray(np.concatenate([blocks[src.index(g)] for g in dst], axis=axis))
