"""Tensor-by-tensor comparison of two checkpoints of any formats (`hubfmt diff`)."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np

from hubfmt.format import dtypes
from hubfmt.format.checkpoint import Checkpoint


@dataclass
class TensorDiff:
    name: str
    shape_a: tuple
    shape_b: tuple
    max_abs: float = 0.0
    max_rel: float = 0.0
    equal: bool = True
    note: str = ""


@dataclass
class Comparison:
    missing: list[str] = field(default_factory=list)      # in A, not in B
    unexpected: list[str] = field(default_factory=list)   # in B, not in A
    tensors: list[TensorDiff] = field(default_factory=list)
    # On one side only because the other side's format has no place for it: name -> why.
    not_held: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)      # left out by --ignore

    @property
    def differs(self) -> bool:
        return bool(self.missing or self.unexpected or any(not t.equal for t in self.tensors))

    def to_json(self) -> dict:
        return {
            "equal": not self.differs,
            "only_in_a": self.missing,
            "only_in_b": self.unexpected,
            "not_held": self.not_held,
            "ignored": self.ignored,
            "tensors": [vars(t) | {"shape_a": list(t.shape_a), "shape_b": list(t.shape_b)} for t in self.tensors],
        }

    def to_text(self, verbose: bool = False) -> str:
        lines = []
        for n in self.missing:
            lines.append(f"only in A   {n}")
        for n in self.unexpected:
            lines.append(f"only in B   {n}")
        by_reason: dict[str, list[str]] = {}
        for n, why in self.not_held.items():
            by_reason.setdefault(why, []).append(n)
        for why, names in by_reason.items():
            shown = ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")
            lines.append(f"not compared: {why} (--strict counts them): {shown}")
        for t in self.tensors:
            if t.equal and not verbose:
                continue
            status = "same" if t.equal else "DIFFERS"
            extra = f" ({t.note})" if t.note else ""
            lines.append(f"{status:<11} {t.name}  max_abs={t.max_abs:.3g} max_rel={t.max_rel:.3g}{extra}")
        same = sum(t.equal for t in self.tensors)
        tail = ""
        if self.not_held:
            tail += f", {len(self.not_held)} one format cannot hold"
        if self.ignored:
            tail += f", {len(self.ignored)} ignored (--ignore)"
        lines.append(f"{same}/{len(self.tensors)} common tensors equal, {len(self.missing)} only in A, "
                     f"{len(self.unexpected)} only in B{tail}: {'DIFFERENT' if self.differs else 'EQUAL'}")
        return "\n".join(lines)


def _as_float(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return dtypes.convert(arr, "bfloat16", "float32").astype(np.float64)
    return arr.astype(np.float64)


def compare(a: Checkpoint, b: Checkpoint, *, rtol: float = 0.0, atol: float = 0.0, ignore=(),
            a_cannot_hold: dict[str, str] | None = None, b_cannot_hold: dict[str, str] | None = None) -> Comparison:
    """Compare by canonical name. Values are equal when |a-b| <= atol + rtol*|b| everywhere
    (NaN equals NaN at the same place); the default tolerances demand exact equality.

    `ignore`: glob patterns of names left out. `a_cannot_hold` / `b_cannot_hold`: role -> why, for
    roles A's (B's) format has no place for (NativeFormat.cannot_hold): a tensor of such a role
    present only in the other checkpoint is listed as not held, not as a difference."""
    out = Comparison()
    skip = {n for n in [*a, *(n for n in b if n not in a)] if any(fnmatch.fnmatchcase(n, p) for p in ignore)}
    out.ignored = sorted(skip)
    for name in a:
        if name in b or name in skip:
            continue
        why = (b_cannot_hold or {}).get(a[name].info.role)
        if why:
            out.not_held[name] = why
        else:
            out.missing.append(name)
    for name in b:
        if name in a or name in skip:
            continue
        why = (a_cannot_hold or {}).get(b[name].info.role)
        if why:
            out.not_held[name] = why
        else:
            out.unexpected.append(name)
    for name in a:
        if name not in b or name in skip:
            continue
        ta, tb = a[name].tensor, b[name].tensor
        d = TensorDiff(name, ta.shape, tb.shape)
        if ta.shape != tb.shape:
            d.equal, d.note = False, f"shape {list(ta.shape)} vs {list(tb.shape)}"
        else:
            x, y = _as_float(ta.load(), ta.dtype), _as_float(tb.load(), tb.dtype)
            if x.size:
                nan_x, nan_y = np.isnan(x), np.isnan(y)
                both = nan_x & nan_y
                diff = np.where(both, 0.0, np.abs(x - y))
                with np.errstate(invalid="ignore", divide="ignore"):
                    rel = np.where(diff == 0, 0.0, diff / np.maximum(np.abs(y), np.finfo(np.float64).tiny))
                d.max_abs = float(np.nanmax(np.where(np.isfinite(diff), diff, np.inf))) if diff.size else 0.0
                d.max_rel = float(np.max(rel)) if rel.size else 0.0
                ok = (diff <= atol + rtol * np.abs(y)) | both
                d.equal = bool(np.all(ok & (nan_x == nan_y)))
            if ta.dtype != tb.dtype:
                d.note = f"dtype {ta.dtype} vs {tb.dtype}"
        out.tensors.append(d)
    return out
