"""Per-head attention kernels <-> canonical linear tensors (spec: Attention projections).

Keras MultiHeadAttention keeps each projection as an EinsumDense with the heads as an axis of
their own:

    query/key/value kernel [d, H, hd] ("IHD"), bias [H, hd] ("HD")  <->  weight [H*hd, d], bias [H*hd]
    output kernel [H, hd, d] ("HDO"), bias [d]                      <->  weight [d, H*hd], bias [d]

Output row (q/k/v) or input column (output) h*hd + j is head h's j-th feature: the order torch's
nn.MultiheadAttention, timm and HF split heads in (`view(..., H, hd)`). Going back needs H: the
destination's native shape (a template), else the layer attribute `heads`.

`Heads` is a layer rule (hubfmt.io.layer_rules: natives, roles, to_canonical, to_native).

>>> >>> k = LazyTensor.from_array(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
>>> Heads("kernel", "weight", "IHD").to_canonical({"kernel": k}, "linear", Context())[0].tensor.shape
(12, 2)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hubfmt.errors import ConversionError
from hubfmt.io.layer_rules import Context, Mapped, check_rank, need

LAYOUTS = ("IHD", "HD", "HDO")
ATTR_HEADS = "heads"


def to_linear(a: np.ndarray, layout: str) -> np.ndarray:
    """A per-head native array as its canonical linear tensor."""
    if layout == "IHD":
        d, h, hd = a.shape
        return np.ascontiguousarray(a.reshape(d, h * hd).T)
    if layout == "HD":
        return np.ascontiguousarray(a.reshape(-1))
    h, hd, d = a.shape      # HDO
    return np.ascontiguousarray(a.reshape(h * hd, d).T)


def from_linear(a: np.ndarray, layout: str, heads: int) -> np.ndarray:
    """The inverse of to_linear for `heads` heads."""
    if layout == "IHD":
        hhd, d = a.shape
        return np.ascontiguousarray(a.T.reshape(d, heads, hhd // heads))
    if layout == "HD":
        return np.ascontiguousarray(a.reshape(heads, -1))
    d, hhd = a.shape        # HDO
    return np.ascontiguousarray(a.T.reshape(heads, hhd // heads, d))


def linear_shape(shape: tuple, layout: str) -> tuple:
    if layout == "IHD":
        return (shape[1] * shape[2], shape[0])
    if layout == "HD":
        return (shape[0] * shape[1],)
    return (shape[2], shape[0] * shape[1])


def native_shape(shape: tuple, layout: str, heads: int) -> tuple:
    width = shape[0] if layout in ("IHD", "HD") else shape[1]
    if heads <= 0 or width % heads:
        raise ConversionError(f"a per-head {layout} tensor of width {width} does not split into {heads} heads")
    if layout == "IHD":
        return (shape[1], heads, width // heads)
    if layout == "HD":
        return (heads, width // heads)
    return (heads, width // heads, shape[0])


def heads_of(shape: tuple, layout: str) -> int:
    """The head count a native per-head tensor shows."""
    return int(shape[0] if layout in ("HD", "HDO") else shape[1])


@dataclass(frozen=True)
class Heads:
    """One native per-head tensor (`layout` one of IHD, HD, HDO) <-> one canonical linear tensor
    (kind `linear` whatever the table's key)."""

    native: str
    role: str
    layout: str
    required: bool = False

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown per-head layout {self.layout!r}")

    @property
    def natives(self) -> tuple[str, ...]:
        return (self.native,)

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.role,)

    def to_canonical(self, nat: dict, kind: str, ctx: Context) -> list[Mapped]:
        if self.native not in nat:
            if self.required:
                need(nat, self.native, kind)
            return []
        t = nat[self.native]
        check_rank(t, len(self.layout), f"per-head {self.native}")
        shape = linear_shape(t.shape, self.layout)
        out = t.map(lambda a: to_linear(a, self.layout), shape)
        return [Mapped(self.role, out, "linear", self.native, self.layout,
                       [("reshaped", f"per-head {self.layout} {list(t.shape)} -> {list(shape)}")])]

    def to_native(self, canon: dict, kind: str, ctx: Context) -> list[Mapped]:
        if self.role not in canon:
            if self.required:
                need(canon, self.role, kind)
            return []
        t = canon[self.role]
        check_rank(t, 1 if self.layout == "HD" else 2, f"{kind} {self.role}")
        want = ctx.native_shapes.get(self.native)
        if want is not None and len(want) == len(self.layout):
            heads = heads_of(tuple(want), self.layout)
        elif ctx.attrs.get(ATTR_HEADS):
            heads = int(ctx.attrs[ATTR_HEADS])
        else:
            raise ConversionError(f"{self.role} {list(t.shape)} becomes a per-head {self.layout} kernel, and the "
                                  f"head count is unknown: pass a template (the destination model or its .keras file)")
        shape = native_shape(tuple(t.shape), self.layout, heads)
        return [Mapped(self.native, t.map(lambda a: from_linear(a, self.layout, heads), shape), "linear", self.role,
                       self.layout, [("reshaped", f"{list(t.shape)} -> per-head {self.layout} {list(shape)}")])]
