"""A concrete name table: which source tensors become which destination tensors, and how.

Rename rules (hubfmt.rules) and template alignment (hubfmt.align) both produce a `Mapping`;
`apply_mapping` turns it into a new lazy Checkpoint without reading any tensor data.

Operations (`Move.op`):
    ""         rename (or keep) one tensor
    "conv1x1"  rename and reshape [out,in] <-> [out,in,1,1] (a conv used as a classifier)
    "conv_fc"  rename and reshape [out,c*kh*kw] <-> [out,c,kh,kw] to `shape`: a Linear over a
               flattened c x kh x kw map (channels first, the hub's flatten order) is the valid
               kh x kw conv on that map (timm's VGG head against torchvision's)
    "split"    one fused tensor -> several, cut along `axis` (qkv, LSTM gates); `sizes` per part
    "merge"    several tensors -> one, concatenated along `axis` (the inverse of split)
    "create"   a tensor the destination expects and the source cannot have (num_batches_tracked)
    "drop"     a source tensor the destination has no place for (num_batches_tracked)
    "flatten"  rename a linear weight fed by a Flatten and decide its input-row order (`permute`:
               a rules-file flatten op, hubfmt.io.flatten.rule_op); its layer's attributes record it
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hubfmt.format.checkpoint import Checkpoint, LayerInfo, TensorInfo
from hubfmt.format.tensor import LazyTensor, part_of, span_tensor
from hubfmt.errors import ConversionError
from hubfmt.io import flatten
from hubfmt.io.norm_attrs import equivalent, norm_attr_mismatches
from hubfmt.report import Report

OPS = ("", "conv1x1", "conv_fc", "split", "merge", "create", "drop", "flatten")
RESHAPES = ("conv1x1", "conv_fc")


@dataclass(frozen=True)
class Move:
    """One row of the table: `sources` become `targets` by `op` (see the module docstring)."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    op: str = ""
    axis: int = 0
    sizes: tuple[int, ...] = ()
    shape: tuple[int, ...] = ()       # conv_fc: the target's shape
    confidence: float | None = None   # alignment's confidence; None for rules
    note: str = ""                    # the rule or the evidence that produced the row
    permute: str = ""                 # op "flatten": the rules file's flatten op ("flatten:HWC->CHW:7x7")

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown mapping op {self.op!r}")


@dataclass
class Mapping:
    """An ordered list of Moves (destination order). Every source name appears at most once."""

    moves: list[Move] = field(default_factory=list)

    def to_rows(self) -> list[dict]:
        rows = []
        for m in self.moves:
            row: dict[str, object] = {"source": list(m.sources), "target": list(m.targets), "op": m.op or "rename"}
            if m.op in ("split", "merge"):
                row["axis"] = m.axis
            if m.confidence is not None:
                row["confidence"] = round(m.confidence, 2)
            if m.note:
                row["note"] = m.note
            rows.append(row)
        return rows

    def to_text(self, source_names: dict[str, str] | None = None) -> str:
        """The table a dry run prints: source -> target, operation, confidence, evidence. With
        `source_names` (canonical -> name in the source file) the source column shows the file's names."""
        names = source_names or {}
        rows = [("source" + (" (name in the file)" if names else ""), "target", "op", "conf", "evidence")]
        for m in self.moves:
            conf = "" if m.confidence is None else f"{m.confidence:.2f}"
            sources = ", ".join(names.get(s, s) for s in m.sources)
            rows.append((sources or "-", ", ".join(m.targets) or "-", m.op or "rename", conf, m.note))
        widths = [min(60, max(len(r[i]) for r in rows)) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows).rstrip()


def conv1x1_shape(shape: tuple) -> tuple | None:
    """[out,in] -> [out,in,1,1] and back; None when `shape` is neither."""
    shape = tuple(shape)
    if len(shape) == 2:
        return shape + (1, 1)
    if len(shape) == 4 and shape[2:] == (1, 1):
        return shape[:2]
    return None


def conv_fc_fits(a: tuple, b: tuple) -> bool:
    """Whether [out, c*kh*kw] and [out, c, kh, kw] (either way round) hold one kh x kw conv's
    weights, kh*kw > 1 (1x1 is conv1x1)."""
    a, b = tuple(a), tuple(b)
    if len(a) == 4 and len(b) == 2:
        a, b = b, a
    return (len(a) == 2 and len(b) == 4 and a[0] == b[0] and b[2] * b[3] > 1
            and a[1] == b[1] * b[2] * b[3])


def split_sizes(length: int, parts: int, sizes: tuple[int, ...] = ()) -> tuple[int, ...] | None:
    """Sizes of the pieces of an axis of `length` cut into `parts` (equal unless `sizes`); None if impossible."""
    if sizes:
        return tuple(sizes) if len(sizes) == parts and sum(sizes) == length else None
    return (length // parts,) * parts if parts and length % parts == 0 else None


def _reshaped(t: LazyTensor, shape: tuple) -> LazyTensor:
    # Same bytes, new shape: keep the file span so writers can still copy file-to-file.
    return LazyTensor(shape, t.dtype, lambda: t.load().reshape(shape), t.span)


def _piece(t: LazyTensor, axis: int, start: int, size: int) -> LazyTensor:
    dims = list(t.shape)
    dims[axis] = size
    shape = tuple(dims)
    if axis == 0 and t.span is not None:
        # Rows of a C-ordered tensor are contiguous: the piece is a byte range of the same file.
        row = t.nbytes // t.shape[0] if t.shape[0] else 0
        # The piece keeps the duty to verify the whole tensor's checksum (a fused qkv from TF).
        return span_tensor(part_of(t.span, start * row, size * row), t.dtype, shape)
    index = tuple(slice(start, start + size) if i == axis else slice(None) for i in range(len(shape)))
    return LazyTensor(shape, t.dtype, lambda: t.load()[index])


def _merged(parts: list[LazyTensor], axis: int) -> LazyTensor:
    shape = list(parts[0].shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    return LazyTensor(tuple(shape), parts[0].dtype, lambda: np.concatenate([p.load() for p in parts], axis=axis))


def _zero_tracked() -> LazyTensor:
    # A 0-d int64 counter, as torch and OneFlow keep it (from_array would make it 1-d).
    return LazyTensor((), "int64", lambda: np.zeros((), dtype=np.int64))


def _tensors(src: Checkpoint, m: Move) -> list[LazyTensor]:
    if m.op == "create":
        return [_zero_tracked() for _ in m.targets]
    ts = [src[n].tensor for n in m.sources]
    if m.op == "":
        return ts
    if m.op == "flatten":
        return [flatten.decide_by_rule(ts[0], {}, flatten.rule_op(m.permute), m.sources[0])[0]]
    if m.op == "conv1x1":
        shape = conv1x1_shape(ts[0].shape)
        if shape is None:
            raise ConversionError(f"{m.sources[0]}: shape {list(ts[0].shape)} is neither [out,in] nor [out,in,1,1]")
        return [_reshaped(ts[0], shape)]
    if m.op == "conv_fc":
        if not conv_fc_fits(ts[0].shape, m.shape):
            raise ConversionError(f"{m.sources[0]}: shape {list(ts[0].shape)} is not a Linear of the conv {list(m.shape)}")
        layer = src.layers.get(src[m.sources[0]].info.layer)
        flat = layer.attrs.get("flatten") if layer is not None else None
        if flat is not None and len(ts[0].shape) == 2 and list(flat) != list(m.shape[1:]):
            # The source says which map its rows flatten: another one is another network.
            raise ConversionError(f"{m.sources[0]}: a Linear over a {'x'.join(map(str, flat))} map is not the "
                                  f"{m.shape[2]}x{m.shape[3]} conv {list(m.shape)} of the template")
        return [_reshaped(ts[0], tuple(m.shape))]
    if m.op == "split":
        t = ts[0]
        if not 0 <= m.axis < len(t.shape):
            raise ConversionError(f"{m.sources[0]}: cannot split axis {m.axis} of shape {list(t.shape)}")
        sizes = split_sizes(t.shape[m.axis], len(m.targets), m.sizes)
        if sizes is None:
            raise ConversionError(f"{m.sources[0]}: axis {m.axis} of shape {list(t.shape)} does not split into "
                                  f"{len(m.targets)} parts{' of ' + str(list(m.sizes)) if m.sizes else ''}")
        starts = np.cumsum((0,) + sizes[:-1])
        return [_piece(t, m.axis, int(a), n) for a, n in zip(starts, sizes, strict=True)]
    # merge
    ref = ts[0]
    for n, t in zip(m.sources, ts, strict=True):
        other = [d for i, d in enumerate(t.shape) if i != m.axis]
        if t.dtype != ref.dtype or len(t.shape) != len(ref.shape) or other != [d for i, d in enumerate(ref.shape) if i != m.axis]:
            raise ConversionError(f"cannot merge {', '.join(m.sources)} along axis {m.axis}: "
                                  f"{n} is {t.dtype}{list(t.shape)}, {m.sources[0]} is {ref.dtype}{list(ref.shape)}")
    return [_merged(ts, m.axis)]


def _info(src: Checkpoint, m: Move, name: str, tensor: LazyTensor, template: Checkpoint | None) -> TensorInfo:
    first = src[m.sources[0]].info if m.sources else None
    if template is not None and name in template:
        # The destination's view of the tensor (kind, role, native name), with the source's dtype.
        base = template[name].info
        kind = base.kind
        if kind in ("", "tensor") and first is not None:
            # A names+shapes listing knows no kinds; the source does (adjusted for a reshape).
            kind = {2: "linear", 4: "conv2d"}.get(len(tensor.shape), first.kind) if m.op in RESHAPES else first.kind
        return dataclasses.replace(base, kind=kind, original_dtype=(first.original_dtype if first else "") or tensor.dtype,
                                   tied_to=None)
    layer, _, role = name.rpartition(".")
    if first is None:
        return TensorInfo(kind="batch_norm", role=role, layer=layer, original_dtype=tensor.dtype)
    kind = first.kind
    if m.op in RESHAPES:
        kind = "conv2d" if len(tensor.shape) == 4 else "linear"
    return dataclasses.replace(first, layer=layer, role=role, kind=kind, tied_to=first.tied_to if m.op == "" else None,
                               original_shape=first.original_shape if m.op == "" else None)


def _flatten_from_template(src: Checkpoint, m: Move, tensors: list[LazyTensor], template: Checkpoint,
                           decided: dict, report: Report) -> list[LazyTensor]:
    """A linear weight whose reader could not tell its row order (a channels-last source without
    the map's shape, flatten.mark_undecided) gets it from the template's record of that layer's
    map (an MXNet symbol, a torch pickled module, a .keras config: layer attribute `flatten`)."""
    e = src[m.sources[0]]
    li = src.layers.get(e.info.layer)
    if li is None or li.attrs.get(flatten.ATTR_SOURCE) != flatten.UNDECIDED or e.info.role != "weight":
        return tensors
    target = m.targets[0]
    layer = template[target].info.layer if target in template else ""
    tl = template.layers.get(layer)
    rec = tl.attrs.get(flatten.ATTR) if tl is not None else None
    if not (isinstance(rec, list) and len(rec) == 3 and len(tensors[0].shape) == 2):
        return tensors
    c, h, w = (int(x) for x in rec)
    permuted = flatten.hwc_to_chw(tensors[0], (h, w, c), target)
    attrs = {k: v for k, v in li.attrs.items() if k not in (flatten.ATTR, flatten.ATTR_SOURCE, "flatten_undecided")}
    decided[layer] = LayerInfo(li.kind, {**attrs, flatten.ATTR: [c, h, w], flatten.ATTR_SOURCE: "HWC"})
    report.add("permuted", target, f"input rows HWC->CHW ({h}x{w}x{c} map, as the template records this layer's input)")
    return [permuted]


def _event(report: Report, m: Move, tensors: list[LazyTensor], src: Checkpoint) -> None:
    if m.op == "create":
        for t in m.targets:
            report.add("created", t, m.note or "expected by the destination, absent from the source")
        return
    if m.op == "drop":
        report.add("dropped", m.sources[0], m.note or "no place in the destination")
        return
    if m.op == "split":
        for t, lt in zip(m.targets, tensors, strict=True):
            report.renamed(m.sources[0], t, f"split along axis {m.axis} {list(lt.shape)}")
        return
    if m.op == "merge":
        # One event per part, so that each source tensor is accounted for (renamed, not kept).
        for i, name in enumerate(m.sources):
            report.renamed(name, m.targets[0], f"merged along axis {m.axis} (part {i + 1} of {len(m.sources)})")
        return
    s, t = m.sources[0], m.targets[0]
    why = ", ".join(x for x in (f"confidence {m.confidence:.2f}" if m.confidence is not None else "", m.note) if x)
    if s == t:
        report.add("matched", s, why, confidence=m.confidence)
    else:
        report.renamed(s, t, why, confidence=m.confidence)
    if m.op in RESHAPES:
        report.add("reshaped", t, f"{list(src[s].tensor.shape)} -> {list(tensors[0].shape)}")


def apply_mapping(src: Checkpoint, mapping: Mapping, *, template: Checkpoint | None = None,
                  report: Report | None = None, keep_unmapped: bool = True) -> Checkpoint:
    """A new lazy Checkpoint holding `src`'s tensors renamed/reshaped/split/merged by `mapping`.

    No tensor data is read. Tensor infos come from `template` where it names the tensor (so the
    destination writer sees the destination's kinds and native names), else from the source.
    Source tensors the mapping does not mention are kept unchanged when `keep_unmapped`. Ties
    (`info.tied_to`) follow renames; split/merged tensors and tensors described by a template are
    stored untied (the template's ties say nothing about the source's data).

    >>> out = apply_mapping(ckpt, Mapping([Move(("fc.weight",), ("classifier.weight",))]))  # doctest: +SKIP
    """
    out = Checkpoint(source=src.source, extra=src.extra)
    report = report if report is not None else out.report
    mentioned = {s for m in mapping.moves for s in m.sources}
    missing = sorted(mentioned - set(src.entries))
    if missing:
        raise ConversionError(f"the table names tensors the source does not have: {', '.join(missing[:5])}")
    renamed: dict[str, str] = {}
    layer_of: dict[str, str] = {}
    decided: dict[str, LayerInfo] = {}     # layers whose flatten order a rules-file op decided
    for m in mapping.moves:
        if m.op == "drop":
            _event(report, m, [], src)
            continue
        tensors = _tensors(src, m)
        if template is not None and m.op == "" and len(m.sources) == 1:
            tensors = _flatten_from_template(src, m, tensors, template, decided, report)
        for name, t in zip(m.targets, tensors, strict=True):
            if name in out:
                raise ConversionError(f"two source tensors map to {name}")
            out.add(name, t, _info(src, m, name, t, template))
        if len(m.sources) == 1 and len(m.targets) == 1:
            renamed[m.sources[0]] = m.targets[0]
        for s in m.sources:
            layer_of.setdefault(src[s].info.layer, out[m.targets[0]].info.layer)
        _event(report, m, tensors, src)
        if m.op == "flatten":
            li = src.layers.get(src[m.sources[0]].info.layer)
            if li is not None and li.attrs.get(flatten.ATTR_SOURCE) == "HWC" and "HWC->CHW" in m.permute.upper():
                raise ConversionError(f"{m.sources[0]}: its reader already permuted the rows HWC->CHW (it knew the "
                                      f"map, {li.attrs.get(flatten.ATTR)}); the rule would permute them twice")
            _, attrs, what = flatten.decide_by_rule(src[m.sources[0]].tensor, li.attrs if li else {},
                                                    flatten.rule_op(m.permute), m.sources[0])
            decided[out[m.targets[0]].info.layer] = LayerInfo(li.kind if li else "linear", attrs)
            report.add("permuted" if "HWC->CHW" in what else "warning", m.targets[0], what)
    if keep_unmapped:
        for name, e in src.entries.items():
            if name not in mentioned:
                if name in out:
                    raise ConversionError(f"{name} is both kept and the target of a rename")
                out.add(name, e.tensor, dataclasses.replace(e.info))
    for e in out.entries.values():
        if e.info.tied_to is None:
            continue
        # A tie survives only if the tensor it points to was carried over under a known name.
        e.info.tied_to = renamed.get(e.info.tied_to, e.info.tied_to if e.info.tied_to in out else None)
    for path, li in src.layers.items():
        out.layers.setdefault(layer_of.get(path, path), li)
    out.layers.update(decided)
    if template is not None:
        _compare_attrs(out, template, report)
    return out


def _compare_attrs(out: Checkpoint, template: Checkpoint, report: Report) -> None:
    """Warn where a layer's recorded attributes differ from the template's (eps: other outputs
    from the same weights); refuse where a conv's stride or dilation differ: the same weights in
    another network (a ResNet with the stride on the 1x1 conv instead of the 3x3), never a
    conversion the user wants."""
    wrong = []
    for path, li in template.layers.items():
        if path not in out.layers:
            continue
        mine = out.layers[path].attrs
        kind = out.layers[path].kind
        norm = norm_attr_mismatches(kind, mine, li.attrs)
        for text in norm:
            report.add("warning", path, f"{kind} {text.replace('in the destination', 'in the template')}")
        for k, v in li.attrs.items():
            if k in (flatten.ATTR, flatten.ATTR_SOURCE) and not (isinstance(v, list) and isinstance(mine.get(k), list)):
                continue    # MXNet's FullyConnected `flatten` flag, or orders that say nothing of the map
            if k not in mine or equivalent(k, mine[k], v) or (norm and k in ("eps", "momentum")):
                continue
            if "conv" in kind and k in ("stride", "dilation"):
                wrong.append(f"{path}: {k} {mine[k]!r} in the source, {v!r} in the template")
            else:
                report.add("warning", path, f"{k}: source {mine[k]!r}, template {v!r} (the source's value is kept)")
    if wrong:
        raise ConversionError(f"the template is another architecture: {len(wrong)} conv layer(s) with other strides "
                              f"or dilations than the source's ({'; '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}); "
                              "the same weights would compute something else")
