"""Fused attention projections in template alignment: one [3d, d] q/k/v linear on one side, three
[d, d] linears on the other (spec: Attention projections).

timm's ViT keeps `blocks.N.attn.qkv` ([3d, d], bias [3d]) and torch's nn.MultiheadAttention
`in_proj_weight`/`in_proj_bias`; HF ViT/BERT, Keras MultiHeadAttention and mindcv keep separate
query, key and value projections. The canonical fused form is the three stacked along axis 0 in
the order q, k, v (what both torch and timm compute: `F.linear(x, w).chunk(3)`).

Alignment sees a fused layer as three virtual [d, d] layers `<path>[q]`, `<path>[k]`, `<path>[v]`
registered where the fused one is, so that modules, order and names pair them with the other side's
projections as any other layer; the table then has one "split" row (fused source -> three template
tensors) or one "merge" row (three source tensors -> a fused template tensor) per role.

A side's fused layers are split only when the shapes demand it: that side has k more layers of the
fused signature than the other, the other side has no layer of it left to take them (or exactly k
of those fused layers are named qkv/in_proj), and the other side has at least 3k more layers of the
part signature ([d, d], bias [d] as the fused one has a bias). An MLP whose hidden width happens to
be 3d is never split when the other side has its twin.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hubfmt.alignment.grouping import Layer, name_tokens
from hubfmt.alignment.table import Move

PARTS = ("q", "k", "v")
_FUSED_NAMES = {"qkv", "in"}      # name tokens of fused projections: timm `qkv`, torch `in_proj`


def qkv_width(layer: Layer) -> int:
    """d when `layer` is a linear layer of weight [3d, d] (and bias [3d] or none), else 0."""
    w = layer.shapes.get("weight")
    if layer.family != "affine" or w is None or len(w) != 2 or w[0] != 3 * w[1] or w[1] == 0:
        return 0
    if not layer.required <= {"weight", "bias"} or layer.shapes.get("bias", (w[0],)) != (w[0],):
        return 0
    return int(w[1])


def _part_signature(layer: Layer, d: int) -> tuple:
    return tuple(sorted((r, (d, d) if r == "weight" else (d,)) for r in layer.required))


def _signature(layer: Layer) -> tuple:
    return tuple(sorted((r, layer.shapes[r]) for r in layer.required))


@dataclass
class Fusions:
    """The virtual layers of one alignment: virtual layer path -> (side, fused layer, part)."""

    parts: dict[str, tuple[str, Layer, str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.parts)

    def fused_targets(self) -> dict[str, str]:
        """Template tensor of a fused layer -> that layer's path (what a merge writes)."""
        return {name: layer.path for side, layer, _ in self.parts.values() if side == "template"
                for name in layer.tensors.values()}


ATTR = "fused"      # layer attribute of a fused projection: its parts in row order (spec 3.6)


def _to_split(A: list[Layer], B: list[Layer]) -> list[Layer]:
    """The fused layers of side A to see as three parts (see the module docstring)."""
    count_a, count_b = Counter(map(_signature, A)), Counter(map(_signature, B))
    by_sig: dict[tuple, list[Layer]] = {}
    for layer in A:
        if qkv_width(layer):
            by_sig.setdefault(_signature(layer), []).append(layer)
    out = []
    for sig, fused in by_sig.items():
        d = qkv_width(fused[0])
        deficit = count_a[sig] - count_b[sig]
        part = _part_signature(fused[0], d)
        if deficit <= 0 or count_b[part] - count_a[part] < 3 * deficit:
            continue
        if count_b[sig]:
            named = [x for x in fused if _FUSED_NAMES & set(x.tokens)]
            if len(named) != deficit:
                continue
            fused = named
        out.extend(fused)
    return out


def _parts(layer: Layer, d: int) -> list[Layer]:
    out = []
    for p in PARTS:
        path = f"{layer.path}[{p}]"
        out.append(Layer(path, "linear", layer.kind_known, -1,
                         {r: f"{n}[{p}]" for r, n in layer.tensors.items()},
                         {r: (d, d) if r == "weight" else (d,) for r in layer.tensors},
                         name_tokens(path)))
    return out


def split_fused(S: list[Layer], T: list[Layer]) -> tuple[list[Layer], list[Layer], Fusions]:
    """S and T with the fused q/k/v layers that need it replaced by their three virtual parts
    (layers re-indexed), and where each part came from."""
    fusions = Fusions()
    out = []
    for side, A, B in (("source", S, T), ("template", T, S)):
        split = {id(x) for x in _to_split(A, B)}
        layers: list[Layer] = []
        for layer in A:
            if id(layer) not in split:
                layers.append(layer)
                continue
            for p, part in zip(PARTS, _parts(layer, qkv_width(layer)), strict=True):
                fusions.parts[part.path] = (side, layer, p)
                layers.append(part)
        out.append(layers)
    S2, T2 = out
    for i, layer in enumerate(S2):
        layer.index = i
    for j, layer in enumerate(T2):
        layer.index = j
    return S2, T2, fusions


def collapse(moves: list[Move], fusions: Fusions, report) -> list[Move]:
    """The table with each fused layer's part rows made one split (source fused) or merge
    (template fused) row per role, where the first part's row was. A fused layer whose three
    parts did not all pair is reported (its paired parts are dropped: never a third of a tensor)."""
    if not fusions:
        return moves
    virtual = {}                                   # virtual tensor name -> (side, real tensor, part)
    for side, layer, p in fusions.parts.values():
        for name in layer.tensors.values():
            virtual[f"{name}[{p}]"] = (side, name, p)
    groups: dict[tuple[str, str], dict[str, Move]] = {}
    slot: dict[tuple[str, str], int] = {}
    out: list[Move | None] = []
    for m in moves:
        names = m.sources if m.sources and m.sources[0] in virtual else m.targets
        hit = virtual.get(names[0]) if names else None
        if hit is None:
            out.append(m)
            continue
        side, real, p = hit
        key = (side, real)
        if key not in slot:
            slot[key] = len(out)
            out.append(None)
        groups.setdefault(key, {})[p] = m
    for key, found in groups.items():
        side, real = key
        if set(found) != set(PARTS):
            where = "source" if side == "source" else "template"
            action = "unexpected" if side == "source" else "missing"
            paired = ", ".join(f"{p} -> {(m.targets if side == 'source' else m.sources)[0]}" for p, m in found.items())
            report.add(action, real, f"fused q,k,v ({where}): only {paired} found a counterpart; the fused tensor "
                                     "is split or merged whole or not at all")
            continue
        rows = [found[p] for p in PARTS]
        conf = min((m.confidence for m in rows if m.confidence is not None), default=None)
        ev = "; ".join(dict.fromkeys(m.note for m in rows if m.note))
        if side == "source":
            out[slot[key]] = Move((real,), tuple(m.targets[0] for m in rows), "split", 0, confidence=conf,
                                  note=f"fused q,k,v split ({ev})")
        else:
            out[slot[key]] = Move(tuple(m.sources[0] for m in rows), (real,), "merge", 0, confidence=conf,
                                  note=f"q,k,v concatenated into the fused projection ({ev})")
    return [m for m in out if m is not None]
