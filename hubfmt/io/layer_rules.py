"""Declarative layer rules: how one layer's native tensors map to its canonical ones, read in both
directions from the same table (framework-neutral; an adapter's names.py declares its table).

A table maps a layer kind to a `LayerRules`: a tuple of rules, each naming native leaves (the last
component of a native variable name, "kernel") and canonical roles ("weight") and knowing both
directions of its transform. The rule types cover what native formats do to canonical tensors:

    Leaf     one native tensor <-> one canonical tensor: a layout (native "HWIO" <-> canonical
             "OIHW", "HWCM" depthwise kernels), gate blocks in another order ("zrn" <-> "rzn"),
             a default for a leaf a layer may omit (BatchNorm scale=False: gamma is 1)
    Summed   one native bias = the sum of two canonical ones (bias_ih + bias_hh); read back as
             the first, the second created as zeros
    Stacked  one native [2, n] tensor <-> two canonical [n] tensors (rows 0 and 1)

A rule type an adapter needs beyond these (TF1's fused LSTM cell) implements the same four
members: `natives`, `roles`, `to_canonical`, `to_native`.

`import_layer(table, kind, {native leaf: LazyTensor})` and `export_layer(table, kind, {role:
LazyTensor})` return `Mapped` records: lazy tensors plus the report events the change implies.

>>> table = {"linear": LayerRules((Leaf("kernel", "weight", "IO", required=True), Leaf("bias", "bias")))}
>>> k = LazyTensor.from_array(np.zeros((3, 4), np.float32))
>>> [(m.name, m.tensor.shape, m.events) for m in import_layer(table, "linear", {"kernel": k})]
[('weight', (4, 3), [('transposed', 'IO->OI')])]
>>> [(m.name, m.tensor.shape) for m in export_layer(table, "linear", {"weight": k})]
[('kernel', (4, 3))]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hubfmt.errors import ConversionError
from hubfmt.format import dtypes, layouts
from hubfmt.format.tensor import LazyTensor
from hubfmt.io.transforms import convert_layout, depthwise_to_hwcm, reorder_gates

_CANONICAL_GATES = {"lstm": layouts.LSTM_GATES, "gru": layouts.GRU_GATES}


@dataclass
class Mapped:
    """One tensor after a mapping step.

    import_layer: `name` is the canonical role relative to the layer ("weight", "weight_ih_l0",
    "depthwise.weight"), `source` the native leaf it came from ("" when created), `layout` the
    native layout when it differed from canonical ("HWIO"), `kind` the (sub)layer's canonical kind.
    export_layer: `name` is the native leaf ("kernel"), `source` the canonical role(s) used
    ("bias_ih_l0+bias_hh_l0" when several). `events` are (report action, detail) pairs the caller
    adds to its Report under its full name.
    """

    name: str
    tensor: LazyTensor
    kind: str
    source: str = ""
    layout: str = ""
    events: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    """What a rule may need besides the tensors: layer attributes (`groups`, `depth_multiplier`,
    adapter-specific ones such as TF1's `forget_bias`) and, on export, the destination's native
    shapes by leaf (a template's)."""

    attrs: dict = field(default_factory=dict)
    native_shapes: dict = field(default_factory=dict)


class Rule(Protocol):
    natives: tuple[str, ...]
    roles: tuple[str, ...]

    def to_canonical(self, nat: dict[str, LazyTensor], kind: str, ctx: Context) -> list[Mapped]: ...

    def to_native(self, canon: dict[str, LazyTensor], kind: str, ctx: Context) -> list[Mapped]: ...


@dataclass(frozen=True)
class LayerRules:
    """The rules of one layer kind. `ignore`: canonical roles dropped on export without complaint
    (the caller reports them); `needs`: native leaves a layer of this kind cannot be read without
    (checked after the rules, with one message)."""

    rules: tuple[Any, ...]
    ignore: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


# ---- helpers rules share -------------------------------------------------------------------------

def need(tensors: dict, name: str, kind: str) -> LazyTensor:
    if name not in tensors:
        raise ConversionError(f"{kind} layer without '{name}' (has: {', '.join(sorted(tensors)) or 'nothing'})")
    return tensors[name]


def check_rank(t: LazyTensor, rank: int, what: str) -> None:
    if len(t.shape) != rank:
        raise ConversionError(f"{what} must have rank {rank}, found shape {list(t.shape)}")


def numeric(a: np.ndarray, dtype: str) -> np.ndarray:
    """Data fit for arithmetic (bfloat16 bits -> float32)."""
    return dtypes.convert(a, "bfloat16", "float32") if dtype == "bfloat16" else a


def stored(a: np.ndarray, dtype: str) -> np.ndarray:
    """Arithmetic results back in `dtype`'s storage (float32 -> bfloat16 bits)."""
    return dtypes.convert(a, "float32", "bfloat16") if dtype == "bfloat16" else a.astype(dtypes.storage_dtype(dtype))


def zeros(shape, dtype: str) -> LazyTensor:
    return LazyTensor(tuple(shape), dtype, lambda: np.zeros(shape, dtype=dtypes.storage_dtype(dtype)))


def filled(shape, dtype: str, value: float) -> LazyTensor:
    return LazyTensor(tuple(shape), dtype, lambda: dtypes.convert(np.full(shape, value, np.float32), "float32", dtype))


def gate_order(kind: str) -> str:
    """The canonical gate order of a recurrent kind ('' when it has no gates)."""
    return _CANONICAL_GATES.get(kind, "")


def _gates(src: str, dst: str):
    return (lambda a: reorder_gates(a, src, dst, 0)) if src and src != dst else (lambda a: a)


def _transposed(t: LazyTensor, src: str, dst: str) -> LazyTensor:
    return t.map(lambda a: convert_layout(a, src, dst), layouts.layout_shape(t.shape, src, dst))


# ---- rule types ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Leaf:
    """One native tensor <-> one canonical tensor.

    `layout` is the native layout when it differs from canonical (the canonical one is the
    kind's, hubfmt.format.layouts; "IO" <-> "OI" for recurrent kernels); "HWCM" is a depthwise
    kernel, whose channel count on export comes from the destination's shape, else the layer's
    `depth_multiplier` or `groups`, else multiplier 1 with a warning. `gates`: the native order of
    the gate blocks (canonical order: the kind's). `default` (with `why`): the value of a leaf a
    layer may omit, created on import. `kind`: the sublayer's canonical kind when not the layer's
    (a separable conv's depthwise half). `aliases`: other native leaves read as this one.
    """

    native: str
    role: str
    layout: str = ""
    gates: str = ""
    required: bool = False
    default: float | None = None
    why: str = ""
    kind: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def natives(self) -> tuple[str, ...]:
        return (self.native, *self.aliases)

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.role,)

    def _canonical_layout(self, kind: str) -> str:
        # recurrent kernels have no canonical layout of their kind: [4h, in] is "OI"
        return layouts.canonical_layout(kind, len(self.layout)) or ("OI" if self.layout == "IO" else "")

    def _detail(self, src: str, dst: str, canon_gates: str, inverse: bool) -> str:
        a, b = (canon_gates, self.gates) if inverse else (self.gates, canon_gates)
        return f"{src}->{dst}" + (f", gates {a}->{b}" if self.gates and a != b else "")

    def to_canonical(self, nat: dict, kind: str, ctx: Context) -> list[Mapped]:
        sub = self.kind or kind
        leaf = next((n for n in self.natives if n in nat), None)
        if leaf is None:
            if self.required:
                need(nat, self.native, kind)
            return []
        t = nat[leaf]
        canon_gates = gate_order(sub)
        gates = _gates(self.gates, canon_gates)
        if not self.layout:
            return [Mapped(self.role, t.map(gates, t.shape) if self.gates else t, sub, leaf)]
        check_rank(t, len(self.layout), f"{sub} {leaf}")
        dst = self._canonical_layout(sub)
        out = _transposed(t, self.layout, dst)
        if self.gates:
            out = out.map(gates, out.shape)
        return [Mapped(self.role, out, sub, leaf, self.layout,
                       [("transposed", self._detail(self.layout, dst, canon_gates, False))])]

    def create(self, ref: LazyTensor, kind: str) -> Mapped:
        assert self.default is not None
        return Mapped(self.role, filled(ref.shape, ref.dtype, self.default), self.kind or kind, "", "",
                      [("created", self.why)])

    def to_native(self, canon: dict, kind: str, ctx: Context) -> list[Mapped]:
        sub = self.kind or kind
        if self.role not in canon:
            if self.required:
                need(canon, self.role, kind)
            return []
        t = canon[self.role]
        canon_gates = gate_order(sub)
        gates = _gates(canon_gates, self.gates)
        if not self.layout:
            return [Mapped(self.native, t.map(gates, t.shape) if self.gates else t, sub, self.role)]
        if self.layout == "HWCM":
            return [self._depthwise(t, ctx)]
        src = self._canonical_layout(sub)
        check_rank(t, len(self.layout), f"{sub} weight")
        out = t.map(gates, t.shape) if self.gates else t
        return [Mapped(self.native, _transposed(out, src, self.layout), sub, self.role, self.layout,
                       [("transposed", self._detail(src, self.layout, canon_gates, True))])]

    def _depthwise(self, t: LazyTensor, ctx: Context) -> Mapped:
        check_rank(t, 4, "depthwise weight")
        cm, one, kh, kw = t.shape
        if one != 1:
            raise ConversionError(f"depthwise weight must be [C*m,1,kh,kw], found {list(t.shape)}")
        events = [("transposed", "OIHW->HWCM")]
        native_shape = next((ctx.native_shapes[n] for n in self.natives if n in ctx.native_shapes), None)
        if native_shape is not None and len(native_shape) == 4:
            channels = native_shape[2]
        elif ctx.attrs.get("depth_multiplier"):
            channels = cm // int(ctx.attrs["depth_multiplier"])
        elif ctx.attrs.get("groups"):
            channels = int(ctx.attrs["groups"])
        else:
            channels = cm
            events.append(("warning", "depth multiplier unknown: assumed 1 (pass a template for m > 1)"))
        if channels <= 0 or cm % channels:
            raise ConversionError(f"depthwise weight {list(t.shape)} does not fit {channels} channels")
        return Mapped(self.native, t.map(lambda a: depthwise_to_hwcm(a, channels), (kh, kw, channels, cm // channels)),
                      "depthwise_conv2d", self.role, "HWCM", events)


@dataclass(frozen=True)
class Summed:
    """One native tensor holding the sum of two canonical ones (Keras keeps one RNN bias where
    torch has bias_ih and bias_hh): read back as the first, the second created as zeros."""

    native: str
    first: str
    second: str
    gates: str = ""
    why: str = ""

    @property
    def natives(self) -> tuple[str, ...]:
        return (self.native,)

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.first, self.second)

    def to_canonical(self, nat: dict, kind: str, ctx: Context) -> list[Mapped]:
        b = nat.get(self.native)
        if b is None:
            return []
        check_rank(b, 1, f"{kind} {self.native}")
        gates = _gates(self.gates, gate_order(kind))
        return [Mapped(self.first, b.map(gates, b.shape), kind, self.native),
                Mapped(self.second, zeros(b.shape, b.dtype), kind, "", "", [("created", self.why)])]

    def to_native(self, canon: dict, kind: str, ctx: Context) -> list[Mapped]:
        a, b = canon.get(self.first), canon.get(self.second)
        if a is None and b is None:
            return []
        ref = a if a is not None else b
        assert ref is not None
        gates = _gates(gate_order(kind), self.gates)

        def load():
            parts = [numeric(t.load(), ref.dtype) for t in (a, b) if t is not None]
            return gates(stored(parts[0] + parts[1] if len(parts) == 2 else parts[0], ref.dtype))
        return [Mapped(self.native, LazyTensor(ref.shape, ref.dtype, load), kind, f"{self.first}+{self.second}", "",
                       [("reshaped", f"{self.first.split('_l')[0]} + {self.second.split('_l')[0]} -> one {self.native}")])]


@dataclass(frozen=True)
class Stacked:
    """One native [2, n] tensor <-> two canonical [n] tensors, rows 0 and 1 (a Keras GRU with
    reset_after=True keeps its input and recurrent biases so). `shape_error`: the message for a
    native tensor of another shape (a layer the canonical form cannot express); `note`: what the
    export's report adds about the native tensor."""

    native: str
    first: str
    second: str
    gates: str = ""
    shape_error: str = ""
    note: str = ""

    @property
    def natives(self) -> tuple[str, ...]:
        return (self.native,)

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.first, self.second)

    def to_canonical(self, nat: dict, kind: str, ctx: Context) -> list[Mapped]:
        b = nat.get(self.native)
        if b is None:
            return []
        if len(b.shape) != 2 or b.shape[0] != 2:
            raise ConversionError(self.shape_error.format(shape=list(b.shape)) or
                                  f"{kind} {self.native} of shape {list(b.shape)} is not [2, n]")
        n = b.shape[1]
        canon_gates = gate_order(kind)
        gates = _gates(self.gates, canon_gates)
        detail = f"{self.native} [2,{n}] row {{}}" + (f", gates {self.gates}->{canon_gates}"
                                                      if self.gates and self.gates != canon_gates else "")
        return [Mapped(role, b.map(lambda a, row=row: gates(a[row]), (n,)), kind, self.native, "",
                       [("reshaped", detail.format(row))]) for row, role in enumerate(self.roles)]

    def to_native(self, canon: dict, kind: str, ctx: Context) -> list[Mapped]:
        a, b = canon.get(self.first), canon.get(self.second)
        if a is None and b is None:
            return []
        ref = a if a is not None else b
        assert ref is not None
        gates = _gates(gate_order(kind), self.gates)

        def row(t):
            return (lambda: t.load()) if t is not None else (lambda: np.zeros(ref.shape, dtypes.storage_dtype(ref.dtype)))
        la, lb = row(a), row(b)
        n = ref.shape[0]
        return [Mapped(self.native, LazyTensor((2, n), ref.dtype, lambda: np.stack([gates(la()), gates(lb())])), kind,
                       f"{self.first}+{self.second}", "",
                       [("reshaped", f"{self.first.split('_l')[0]}, {self.second.split('_l')[0]} -> "
                                     f"{self.native} {self.note or f'[2,{n}]'}")])]


# ---- the two directions ----------------------------------------------------------------------------

def _rules(table: dict, kind: str, owner: str) -> LayerRules:
    if kind not in table:
        raise ConversionError(f"no {owner} mapping for layer kind {kind!r}")
    return table[kind]


def _no_extra(given: dict, known: set, kind: str) -> None:
    extra = set(given) - known
    if extra:
        raise ConversionError(f"{kind} layer has unexpected variables: {', '.join(sorted(extra))}")


def import_layer(table: dict, kind: str, natives: dict[str, LazyTensor], *, attrs: dict | None = None,
                 owner: str = "native") -> list[Mapped]:
    """Native tensors of one `kind` layer, by leaf -> canonical tensors (lazy), by `table`.

    Raises ConversionError for a layer the table cannot represent: a required leaf missing, a
    leaf no rule reads, a tensor of the wrong rank. `owner` names the table in messages."""
    spec = _rules(table, kind, owner)
    ctx = Context(dict(attrs or {}))
    out: list[Mapped] = []
    for rule in spec.rules:
        out += rule.to_canonical(natives, kind, ctx)
    used = {m.source for m in out if m.source}
    declared = {n for r in spec.rules for n in (r.natives[:1] if isinstance(r, Leaf) else r.natives)}
    _no_extra(natives, used | declared, kind)
    defaults = [r for r in spec.rules if isinstance(r, Leaf) and r.default is not None]
    if defaults:
        ref = next((natives[n] for r in spec.rules for n in r.natives if n in natives), None)
        if ref is None:
            raise ConversionError(f"{kind} layer without variables")
        out += [r.create(ref, kind) for r in defaults if not any(n in natives for n in r.natives)]
    if spec.needs and not set(spec.needs) <= set(natives):
        raise ConversionError(f"{kind} layer without {'/'.join(spec.needs)}")
    return out


def export_layer(table: dict, kind: str, canon: dict[str, LazyTensor], *, attrs: dict | None = None,
                 native_shapes: dict[str, tuple] | None = None, owner: str = "native") -> list[Mapped]:
    """Canonical tensors of one `kind` layer, by role -> native tensors (lazy); the inverse of
    import_layer. `native_shapes`: the destination's shapes by native leaf (a template's)."""
    spec = _rules(table, kind, owner)
    ctx = Context(dict(attrs or {}), {k: tuple(v) for k, v in (native_shapes or {}).items()})
    given = {r: t for r, t in canon.items() if r not in spec.ignore}
    _no_extra(given, {role for r in spec.rules for role in r.roles}, kind)
    out: list[Mapped] = []
    for rule in spec.rules:
        out += rule.to_native(given, kind, ctx)
    return out


def transposed(t: LazyTensor, src: str, dst: str) -> LazyTensor:
    """`t` converted from layout `src` to `dst` (lazy)."""
    return _transposed(t, src, dst)


__all__ = ["Mapped", "Context", "Rule", "LayerRules", "Leaf", "Summed", "Stacked", "import_layer", "export_layer",
           "need", "check_rank", "numeric", "stored", "zeros", "filled", "gate_order", "transposed"]
