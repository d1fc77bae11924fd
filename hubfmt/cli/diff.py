"""Tensor-by-tensor comparison of two checkpoints of any formats (`hubfmt diff`)."""
from __future__ import annotations

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

    @property
    def differs(self) -> bool:
        return bool(self.missing or self.unexpected or any(not t.equal for t in self.tensors))

    def to_json(self) -> dict:
        return {
            "equal": not self.differs,
            "only_in_a": self.missing,
            "only_in_b": self.unexpected,
            "tensors": [vars(t) | {"shape_a": list(t.shape_a), "shape_b": list(t.shape_b)} for t in self.tensors],
        }

    def to_text(self, verbose: bool = False) -> str:
        lines = []
        for n in self.missing:
            lines.append(f"only in A   {n}")
        for n in self.unexpected:
            lines.append(f"only in B   {n}")
        for t in self.tensors:
            if t.equal and not verbose:
                continue
            status = "same" if t.equal else "DIFFERS"
            extra = f" ({t.note})" if t.note else ""
            lines.append(f"{status:<11} {t.name}  max_abs={t.max_abs:.3g} max_rel={t.max_rel:.3g}{extra}")
        same = sum(t.equal for t in self.tensors)
        lines.append(f"{same}/{len(self.tensors)} common tensors equal, {len(self.missing)} only in A, "
                     f"{len(self.unexpected)} only in B: {'DIFFERENT' if self.differs else 'EQUAL'}")
        return "\n".join(lines)


def _as_float(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return dtypes.convert(arr, "bfloat16", "float32").astype(np.float64)
    return arr.astype(np.float64)


def compare(a: Checkpoint, b: Checkpoint, *, rtol: float = 0.0, atol: float = 0.0) -> Comparison:
    """Compare by canonical name. Values are equal when |a-b| <= atol + rtol*|b| everywhere
    (NaN equals NaN at the same place); the default tolerances demand exact equality."""
    out = Comparison()
    out.missing = [n for n in a if n not in b]
    out.unexpected = [n for n in b if n not in a]
    for name in a:
        if name not in b:
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
