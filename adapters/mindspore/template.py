"""Deciding which tensors an export writes, under which MindSpore names, shapes and dtypes.

Without a template the names come from the checkpoint (canonical roles mapped back to MindSpore's:
`bn1.running_var` -> `bn1.moving_variance`). With a template (a .ckpt or MindSpore safetensors file,
a Cell or anything with `parameters_dict()`, a hubfmt Checkpoint, or a names/shapes listing) the
output follows the TARGET: its names in its order, each matched exactly or by role mapping
(`0._bn1.gamma` takes canonical `0._bn1.weight`). Nothing is guessed here: module paths that differ
between implementations must be renamed first (hubfmt.align). Anything missing, unexpected or of
the wrong shape is a ConversionError listing it, unless strict=False (then it is only reported).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from hubfmt.sdk import Checkpoint, Entry, LazyTensor
from hubfmt.sdk import ConversionError
from hubfmt.sdk import layouts
from hubfmt.sdk import Report

from . import names


@dataclass
class Target:
    """One parameter the output must hold: MindSpore name, shape and dtype (None: take the source's)."""

    name: str
    shape: tuple | None = None
    dtype: str | None = None


@dataclass(slots=True)
class Item:
    """One tensor to write: MindSpore name, data (already reshaped if needed) and output dtype."""

    name: str
    tensor: LazyTensor
    dtype: str
    source: str           # canonical name it came from


def native_name(name: str, entry: Entry, layers: dict | None = None) -> str:
    """The MindSpore parameter name for canonical `name` (`layers`: the checkpoint's LayerInfo,
    consulted when the tensor itself does not say its kind)."""
    info = entry.info
    kind = info.kind
    if kind == "tensor" and layers and info.layer in layers:
        kind = layers[info.layer].kind
    if kind in layouts.NORM_KINDS or kind == "embedding":
        layer, dot, role = name.rpartition(".")
        return f"{layer}{dot}{names.native_role(kind, role)}"
    orig = info.original_name
    if orig and orig != name and names.canonical_name(orig, kind) == name:
        return orig         # read from MindSpore: its own name back (e.g. gamma of an unknown norm)
    return name


def _dtype_name(ms_dtype) -> str | None:
    return names.TENSOR_TYPES.get(str(ms_dtype))


def load_template(template) -> list[Target]:
    """A template in any accepted form -> [Target] in the target's order.

    >>> load_template([("0.gamma", (4,)), "0.beta"])
    [Target(name='0.gamma', shape=(4,), dtype=None), Target(name='0.beta', shape=None, dtype=None)]
    """
    if isinstance(template, (str, os.PathLike)):
        from .reader import read
        template = read(template)
    if isinstance(template, Checkpoint):
        return [Target(native_name(n, e, template.layers), e.tensor.shape, e.tensor.dtype) for n, e in template.entries.items()]
    if hasattr(template, "parameters_dict"):          # a mindspore.nn.Cell (duck-typed: no import)
        return [Target(n, tuple(p.shape), _dtype_name(p.dtype)) for n, p in template.parameters_dict().items()]
    if isinstance(template, dict):
        template = list(template.items())
    out = []
    for t in template:
        if isinstance(t, Target):
            out.append(t)
        elif isinstance(t, str):
            out.append(Target(t))
        else:
            name, shape = t[0], t[1]
            out.append(Target(name, None if shape is None else tuple(int(d) for d in shape),
                              t[2] if len(t) > 2 else None))
    return out


def _out_dtype(entry: Entry, restore_dtype: bool, wanted: str | None, name: str, path) -> str:
    dt = wanted or (entry.info.original_dtype if restore_dtype and entry.info.original_dtype else entry.tensor.dtype)
    if dt not in names.DTYPE_TO_TYPE:
        raise ConversionError(f"tensor {name!r}: MindSpore checkpoints cannot hold dtype {dt}", path)
    return dt


def _squeezed(shape) -> tuple:
    return tuple(d for d in shape if d != 1)


def _fit(tensor: LazyTensor, shape: tuple) -> LazyTensor | None:
    """`tensor` as `shape` when they differ only by size-1 axes (MindSpore's Conv1d keeps [O,I,1,K])."""
    if tensor.shape == shape:
        return tensor
    if _squeezed(tensor.shape) != _squeezed(shape) or int(np.prod(tensor.shape)) != int(np.prod(shape)):
        return None
    return tensor.map(lambda a: a.reshape(shape), shape)


def _source_of(target: str, ckpt: Checkpoint, by_native: dict) -> str | None:
    """The canonical entry for MindSpore name `target`: same name, same MindSpore name, or the
    same canonical name (`0._bn1.gamma` <- `0._bn1.weight`)."""
    if target in ckpt:
        return target
    if target in by_native:
        return by_native[target]
    for kind in (None, *names.KIND_ROLES):
        canon = names.canonical_name(target, kind)
        if canon in ckpt:
            return canon
    return None


def _listing(names_: list[str]) -> str:
    shown = ", ".join(names_[:10])
    return shown + (f" and {len(names_) - 10} more" if len(names_) > 10 else "")


def plan(ckpt: Checkpoint, template=None, *, strict: bool = True, restore_dtype: bool = True,
         path=None) -> tuple[list[Item], Report]:
    """The tensors to write, in output order, and a report of every decision.

    >>> items, report = plan(ckpt, [("bn.gamma", (4,)), ("bn.beta", (4,))])     # doctest: +SKIP
    """
    report = Report(stage="write")
    if template is None:
        items = _own_names(ckpt, report, restore_dtype, path)
    else:
        items = _follow(ckpt, load_template(template), report, strict, restore_dtype, path)
    seen: dict[str, str] = {}
    add = report.add
    for it in items:           # one pass: a duplicate raises, and the report is not returned then
        name, source = it.name, it.source
        if name in seen:
            raise ConversionError(f"{seen[name]} and {source} would both be written as {name!r}", path)
        seen[name] = source
        if name != source:
            report.renamed(source, name)
        if it.dtype != it.tensor.dtype:
            add("cast", name, f"{it.tensor.dtype}->{it.dtype}")
        elif name == source:
            add("matched", name)
    return items, report


def _own_names(ckpt: Checkpoint, report: Report, restore_dtype: bool, path) -> list[Item]:
    """Every tensor under its MindSpore name, in the checkpoint's order."""
    items = []
    from_mindspore = ckpt.source.framework == "mindspore"
    layers = ckpt.layers
    for name, e in ckpt.entries.items():
        info = e.info
        if info.tied_to:
            report.add("dropped", name, f"tied to {info.tied_to}: MindSpore stores a shared parameter once")
            continue
        if info.role == "num_batches_tracked":
            report.add("dropped", name, "MindSpore normalisation layers have no num_batches_tracked")
            continue
        tensor = e.tensor
        orig = info.original_shape
        if (from_mindspore and not info.original_layout and orig is not None
                and tuple(orig) != tensor.shape and _fit(tensor, tuple(orig)) is not None):
            tensor = _fit(tensor, tuple(orig))   # e.g. a MindSpore Conv1d weight back to [O,I,1,K]
            report.add("reshaped", name, f"{list(e.tensor.shape)}->{list(orig)} (its original shape)")
        items.append(Item(native_name(name, e, layers), tensor, _out_dtype(e, restore_dtype, None, name, path), name))
    return items


def _follow(ckpt: Checkpoint, targets: list[Target], report: Report, strict: bool, restore_dtype: bool,
            path) -> list[Item]:
    """The template's parameters in its order, each from its source tensor; problems collected."""
    by_native = {}
    for name, e in ckpt.entries.items():
        by_native.setdefault(native_name(name, e, ckpt.layers), name)
    items, used, missing, mismatch = [], set(), [], []
    for t in targets:
        src = _source_of(t.name, ckpt, by_native)
        if src is None or src in used:
            missing.append(t.name)
            report.add("missing", t.name, "not in the source checkpoint")
            continue
        e = ckpt.entries[src]
        tensor = e.tensor if t.shape is None else _fit(e.tensor, t.shape)
        if tensor is None:
            mismatch.append(t.name)
            report.add("mismatch", t.name, f"source {src} has shape {list(e.tensor.shape)}, target wants {list(t.shape)}")
            continue
        if tensor is not e.tensor:
            report.add("reshaped", t.name, f"{list(e.tensor.shape)}->{list(t.shape)}")
        used.add(src)
        items.append(Item(t.name, tensor, _out_dtype(e, restore_dtype, t.dtype, t.name, path), src))
    unexpected = []
    for name, e in ckpt.entries.items():
        if name in used:
            continue
        if e.info.role == "num_batches_tracked" or e.info.tied_to:
            tied = f" (tied to {e.info.tied_to})" if e.info.tied_to else ""
            report.add("dropped", name, "not a parameter of the target" + tied)
        else:
            unexpected.append(name)
            report.add("unexpected", name, "not a parameter of the target")
    if strict and (missing or mismatch or unexpected):
        parts = [f"{label} {len(v)}: {_listing(v)}" for label, v in
                 (("missing", missing), ("wrong shape", mismatch), ("unexpected", unexpected)) if v]
        raise ConversionError("checkpoint does not fit the template (strict): " + "; ".join(parts), path)
    return items
