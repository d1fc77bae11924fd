"""Verification: run the source and the converted model on one input and compare their outputs.

The hub knows no framework, so a model is given as a *runner*: a callable that maps one numpy
input to an ordered dict of named numpy outputs — intermediate outputs in execution order, the
final output last. Framework helpers build runners (e.g. hubfmt.adapters.torch.verify.runner,
which records named modules' outputs with forward hooks).

Outputs pair by name, or through `pairs` (source name -> destination name; an alignment's
`layer_map()` pairs module outputs of two differently named implementations); the two final
outputs always pair. The relative difference is max|a - b| / max|b|; the first paired output, in
the source's execution order, above `tol` is where the models diverge.

>>> v = verify(run_src, run_dst, x, pairs=alignment.layer_map())   # doctest: +SKIP
>>> v.ok, v.first_divergence                                         # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from hubfmt.errors import ConversionError

Runner = Callable[[np.ndarray], "Mapping[str, np.ndarray]"]


@dataclass
class OutputDiff:
    source: str
    destination: str
    shape: tuple
    rel_diff: float
    ok: bool
    note: str = ""


@dataclass
class Verification:
    tol: float
    rows: list[OutputDiff] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)   # source outputs with no destination counterpart

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def first_divergence(self) -> OutputDiff | None:
        return next((r for r in self.rows if not r.ok), None)

    @property
    def final(self) -> OutputDiff:
        return self.rows[-1]

    def to_text(self) -> str:
        lines = [f"{'source':<30} {'destination':<30} {'rel diff':>10}"]
        for r in self.rows:
            flag = "" if r.ok else "  <- diverges" + (f" ({r.note})" if r.note else "")
            lines.append(f"{r.source:<30} {r.destination:<30} {r.rel_diff:>10.3g}{flag}")
        first = self.first_divergence
        lines.append(f"outputs agree within {self.tol:g}" if first is None else
                     f"first divergence: {first.source} -> {first.destination} (relative difference {first.rel_diff:.3g})")
        return "\n".join(lines)

    def check(self) -> None:
        """Raise ConversionError naming the first diverging output."""
        first = self.first_divergence
        if first is not None:
            raise ConversionError(f"converted model diverges first at {first.source} -> {first.destination}: "
                                  f"relative difference {first.rel_diff:.3g} > {self.tol:g}"
                                  + (f" ({first.note})" if first.note else ""))


def relative_difference(a, b) -> float:
    """max |a - b| / max |b| (0 for two empty arrays; inf where a value is not finite).

    >>> relative_difference(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-6]))  # doctest: +ELLIPSIS
    4.99...e-07
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0 and b.size == 0:
        return 0.0
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def compare_outputs(src: Mapping[str, np.ndarray], dst: Mapping[str, np.ndarray], *, tol: float = 1e-5,
                    pairs: Mapping[str, str] | None = None) -> Verification:
    """Pair and compare two runners' outputs (see the module docstring)."""
    out = Verification(tol)
    if not src or not dst:
        raise ConversionError("a runner returned no outputs")
    src_names, dst_names = list(src), list(dst)
    pairing = {}
    for name in src_names[:-1]:
        other = pairs.get(name, name) if pairs else name
        if other in dst and other != dst_names[-1]:
            pairing[name] = other
        else:
            out.unpaired.append(name)
    pairing[src_names[-1]] = dst_names[-1]
    for s, d in pairing.items():
        a, b = np.asarray(src[s]), np.asarray(dst[d])
        if a.shape != b.shape:
            out.rows.append(OutputDiff(s, d, a.shape, float("inf"), False, f"shape {list(a.shape)} vs {list(b.shape)}"))
            continue
        r = relative_difference(a, b)
        out.rows.append(OutputDiff(s, d, a.shape, r, r <= tol, "" if np.isfinite(r) else "not finite"))
    return out


def verify(run_source: Runner, run_destination: Runner, x: np.ndarray, *, tol: float = 1e-5,
           pairs: Mapping[str, str] | None = None) -> Verification:
    """Run both models on `x` and compare their outputs (see the module docstring).

    >>> v = verify(lambda x: {"y": 2 * x}, lambda x: {"out": x + x}, np.ones(3))
    >>> v.ok, v.final.rel_diff
    (True, 0.0)
    """
    return compare_outputs(dict(run_source(x)), dict(run_destination(x)), tol=tol, pairs=pairs)
