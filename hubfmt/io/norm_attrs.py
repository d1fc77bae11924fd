"""Comparing the norm attributes that change outputs (eps) or training (momentum) between a
source and a destination that records them: a template, a live model, a .keras config. A
weights file carries neither, so a mismatch converts exactly and still gives other outputs: an
eps of 1e-3 against 1e-5 moves them by ~1e-3, the most common "why don't my outputs match".

    >>> norm_attr_mismatches("batch_norm", {"eps": 1e-3, "momentum": 0.01}, {"eps": 1e-5, "momentum": 0.1})
    ['eps 0.001 in the source, 1e-05 in the destination (changes outputs: set eps=0.001 on the destination layer)', 'momentum 0.01 in the source, 0.1 in the destination (torch convention; changes training only)']
"""
from __future__ import annotations

from typing import Any

NORM_KINDS = ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm")


def _differ(a: Any, b: Any) -> bool:
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return a != b
    return abs(fa - fb) > 1e-9 * max(1.0, abs(fa), abs(fb)) and abs(fa - fb) > 1e-12


def norm_attr_mismatches(kind: str, source: dict, destination: dict) -> list[str]:
    """One sentence per eps/momentum on which a norm layer's source and destination disagree."""
    if kind not in NORM_KINDS:
        return []
    out = []
    for key in ("eps", "momentum"):
        a, b = source.get(key), destination.get(key)
        if a is None or b is None or not _differ(a, b):
            continue
        if key == "eps":
            out.append(f"eps {float(a):g} in the source, {float(b):g} in the destination (changes outputs: set "
                       f"eps={float(a):g} on the destination layer)")
        else:
            out.append(f"momentum {float(a):g} in the source, {float(b):g} in the destination (torch convention; "
                       "changes training only)")
    return out


def _zero(v: Any) -> bool:
    return v == "valid" or v == 0 or (isinstance(v, (list, tuple)) and bool(v) and all(x == 0 for x in v))


def equivalent(key: str, a: Any, b: Any) -> bool:
    """Whether two recorded values of layer attribute `key` mean the same (TF's padding 'valid' is
    zero padding; numbers within rounding)."""
    if key == "padding" and _zero(a) and _zero(b):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return not _differ(a, b)
    return a == b


__all__ = ["NORM_KINDS", "norm_attr_mismatches", "equivalent"]
