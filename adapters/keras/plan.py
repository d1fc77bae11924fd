"""Where each canonical layer goes in a Keras 3 weights file: the plan the writer follows.

A `Target` is one Keras variable group (`layers/conv2d/vars`) with the class that reads it. Targets
come from a template (a .keras archive, a .weights.h5 of the destination, or a live model saved to
a temporary .keras), matched to the checkpoint's layers by name, else by order when the layer
kinds and counts agree; or, without a template, by rule: the h5 paths the checkpoint came from
(`original_name`, when it was read from a Keras file), else Keras's list-item names
(`layers/<snake class>[_n]`) in checkpoint order, the layer name being the canonical module path.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field

from hubfmt.sdk import Checkpoint, flatten, norm_attr_mismatches
from hubfmt.sdk import ConversionError, HubfmtError
from hubfmt.sdk import Report

from . import names
from .config import flatten_inputs, snake_case
from .names import (KERAS_BN_EPS, KERAS_BN_MOMENTUM, KERAS_CLASS_KINDS, bn_momentum_from_canonical,
                     bn_momentum_to_canonical, export_layer)
from .store import scan as scan_store

_VAR_PATH = re.compile(r"^(?:(.*)/)?vars/(\d+)$")
# Universal position order of Keras leaves: every known class stores a subset in this order.
LEAF_ORDER = ("kernel", "depthwise_kernel", "pointwise_kernel", "recurrent_kernel", "embeddings", "bias",
              "gamma", "beta", "moving_mean", "moving_variance", "scale")


@dataclass
class CanonLayer:
    """One destination Keras layer's canonical tensors: roles relative to `module` -> entry name."""

    module: str
    kind: str                     # canonical kind, 'separable_conv2d', or 'tensor' (kept by position)
    roles: dict[str, str] = field(default_factory=dict)
    suffix: str = ""              # "_reverse": the backward half of a bidirectional RNN

    def vars_hint(self, ckpt: Checkpoint) -> str | None:
        """The Keras vars group every tensor came from, when they agree (read from a Keras file)."""
        groups = set()
        for name in self.roles.values():
            m = _VAR_PATH.match(ckpt.entries[name].info.original_name or "")
            if not m:
                return None
            groups.add(m.group(1) or "")
        return groups.pop() if len(groups) == 1 else None


@dataclass
class Target:
    """One destination variable group and the Keras class that reads it."""

    vars_path: str                # "layers/lstm/cell/vars"
    module: str                   # canonical module path the template gives this layer
    class_name: str
    config: dict = field(default_factory=dict)
    shapes: list[tuple] = field(default_factory=list)   # template's variable shapes (None: by rule)
    layer_name: str = ""
    parents: dict[str, str] = field(default_factory=dict)   # object group -> name attribute to write
    suffix: str = ""              # "_reverse": a Bidirectional's backward_layer


def canonical_layers(ckpt: Checkpoint, report: Report, *, strict: bool) -> list[CanonLayer]:
    """Group the checkpoint's entries into destination layers, in checkpoint order."""
    layers: dict[str, CanonLayer] = {}
    for name, e in ckpt.entries.items():
        info = e.info
        if info.role == "num_batches_tracked":
            report.add("dropped", name, "Keras BatchNormalization has no num_batches_tracked")
            continue
        if info.kind == "tensor":
            m = re.match(r"^(?:(.*)\.)?vars\.(\d+)$", name)
            if not m and e.tensor.shape == () and e.tensor.dtype.startswith(("int", "uint")):
                # a training counter (epoch, step, global_step: MindSpore and TF checkpoints keep
                # them as variables), not a weight: dropped, as num_batches_tracked is
                report.add("dropped", name, "integer scalar outside any layer (a training counter): "
                                            "a Keras weights file holds layer variables only")
                continue
            if not m:
                if strict:
                    raise ConversionError(f"{name}: a tensor of unknown kind with no Keras layer to hold it "
                                          "(-W strict=false drops it)")
                report.add("dropped", name, "unknown kind: no Keras layer holds it")
                continue
            layer = layers.setdefault("tensor:" + (m.group(1) or ""), CanonLayer(m.group(1) or "", "tensor"))
            layer.roles[m.group(2)] = name
            continue
        module = info.layer
        role = name[len(module) + 1:] if module and name.startswith(module + ".") else info.role
        suffix = "_reverse" if info.kind in names.RNN_KINDS and role.endswith("_reverse") else ""
        role = role[: -len(suffix)] if suffix else role
        layer = layers.setdefault(module + suffix, CanonLayer(module, info.kind, suffix=suffix))
        if layer.kind != info.kind:
            raise ConversionError(f"layer {module} mixes kinds {layer.kind} and {info.kind}")
        layer.roles[role] = name
    return list(layers.values())


def merge_separable(layers: list[CanonLayer], ckpt: Checkpoint, want: set[str] | None) -> list[CanonLayer]:
    """`P.depthwise` + `P.pointwise` -> one SeparableConv2D `P` when the destination has one there
    (`want`: modules the template makes SeparableConv2D), or, by rule, when both came from one."""
    by_module = {layer.module: layer for layer in layers if not layer.suffix}
    out, skip = [], set()
    for layer in layers:
        if layer.module in skip:
            continue
        parent, _, leaf = layer.module.rpartition(".")
        other = by_module.get(f"{parent}.pointwise") if leaf == "depthwise" else None
        # A torch state dict cannot tell a depthwise conv from a plain one: kind conv2d is accepted
        # for the depthwise half when the destination has a SeparableConv2D here.
        dw_ok = layer.kind == "depthwise_conv2d" or (layer.kind == "conv2d" and want is not None and parent in want)
        if other and dw_ok and other.kind == "conv2d" and "bias" not in layer.roles:
            merged = CanonLayer(parent, "separable_conv2d",
                                {**{f"depthwise.{r}": n for r, n in layer.roles.items()},
                                 **{f"pointwise.{r}": n for r, n in other.roles.items()}})
            hint = merged.vars_hint(ckpt)
            if (want is not None and parent in want) or (want is None and hint is not None):
                out.append(merged)
                skip.add(other.module)
                continue
        out.append(layer)
    return out


# ---- targets from a template ----------------------------------------------------------------

def template_targets(template) -> tuple[list[Target], dict | None, dict | None, dict[str, str]]:
    """(targets in model order, config.json, metadata.json, name attribute of every vars group) of
    a template: a path to a .keras or .weights.h5 file, or a live Keras model (saved to a
    temporary .keras archive first)."""
    if isinstance(template, (str, os.PathLike)):
        store = scan_store(os.fspath(template))
    elif hasattr(template, "save") and hasattr(template, "layers"):
        with tempfile.TemporaryDirectory(prefix="hubfmt-keras-") as d:
            p = os.path.join(d, "template.keras")
            template.save(p)
            store = scan_store(p)
    else:
        raise HubfmtError(f"template must be a .keras/.weights.h5 path or a Keras model, not {type(template).__name__}")
    targets = []
    for g in store.groups:
        cls = g.class_name or names.infer_class(g)
        parents = {}
        if g.from_cell:
            parents[g.object_path] = g.layer_name
        targets.append(Target(g.vars_path, g.module, cls, g.config, [v.shape for v in g.vars], g.layer_name, parents,
                              g.suffix))
    return targets, store.config, store.metadata, store.names


def target_kind(t: Target) -> str:
    if t.class_name in names.KNOWN:
        return KERAS_CLASS_KINDS[t.class_name]
    return "tensor"


# Convolutions by spatial rank: a reader that sees only tensors (a torch state dict) calls a
# depthwise or transposed convolution conv2d; their canonical tensors are laid out as that layer
# already (depthwise [C*m,1,kh,kw], transposed [in,out,kh,kw]), so the destination's kind decides.
_CONV_RANK = {"conv1d": 1, "conv_transpose1d": 1, "conv2d": 2, "depthwise_conv2d": 2, "conv_transpose2d": 2,
              "conv3d": 3, "conv_transpose3d": 3}


def compatible(kind: str, dest: str) -> bool:
    """Can a layer of canonical `kind` fill a destination layer of kind `dest`?"""
    return kind == dest or (kind in _CONV_RANK and _CONV_RANK[kind] == _CONV_RANK.get(dest))


def _adopt(pairs, report: Report):
    """Take the destination's kind where the checkpoint's differs but is compatible (reported)."""
    for layer, t in pairs:
        dest = target_kind(t)
        if layer.kind != dest and layer.kind in _CONV_RANK:
            report.add("warning", layer.module, f"kind {layer.kind} taken as {dest}, the destination layer's "
                                                f"({t.class_name})")
            layer.kind = dest
    return pairs


def match(layers: list[CanonLayer], targets: list[Target], report: Report, *, strict: bool
          ) -> list[tuple[CanonLayer, Target]]:
    """Pair layers with template targets: by module path, else by order (same count and kinds)."""
    by_module = {(t.module, t.suffix): t for t in targets}
    named = [(layer, by_module.get((layer.module, layer.suffix))) for layer in layers]
    if all(t is not None for _, t in named) and len({id(t) for _, t in named}) == len(targets):
        return _adopt(named, report)
    # Names agree for most layers: pair the rest in order when their kinds agree (a subclassed
    # model's attribute can be saved under its layer name: Keras saves `layers/<class>` first).
    used = {id(t) for _, t in named if t is not None}
    rest_l = [layer for layer, t in named if t is None]
    rest_t = [t for t in targets if id(t) not in used]
    if len(rest_l) == len(rest_t) and len(rest_l) < len(layers) and all(
            compatible(layer.kind, target_kind(t)) for layer, t in zip(rest_l, rest_t, strict=True)):
        fill = dict(zip(map(id, rest_l), rest_t, strict=True))
        for layer, t in zip(rest_l, rest_t, strict=True):
            report.renamed(layer.module, t.module, "destination layer matched by order and kind")
        return _adopt([(layer, t if t is not None else fill[id(layer)]) for layer, t in named], report)
    kinds_agree = len(layers) == len(targets) and all(
        compatible(layer.kind, target_kind(t)) for layer, t in zip(layers, targets, strict=True))
    if kinds_agree:
        for layer, t in zip(layers, targets, strict=True):
            if layer.module != t.module:
                report.renamed(layer.module, t.module, "destination layer matched by order and kind")
        return _adopt(list(zip(layers, targets, strict=True)), report)
    pairs = _adopt([(layer, t) for layer, t in named if t is not None], report)
    used = {id(t) for _, t in pairs}
    unexpected = [layer.module for layer, t in named if t is None]
    missing = [t.module for t in targets if id(t) not in used]
    for m in unexpected:
        report.add("unexpected", m, "no layer of this name in the template")
    for m in missing:
        report.add("missing", m, "template layer with variables that the checkpoint does not fill")
    if strict and (unexpected or missing):
        detail = []
        if unexpected:
            detail.append(f"not in the template: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
        if missing:
            detail.append(f"not in the checkpoint: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
        raise ConversionError(f"checkpoint layers ({len(layers)}) do not match the template's ({len(targets)}) by "
                              f"name, nor by order and kind; {'; '.join(detail)}")
    return pairs


# ---- targets by rule ------------------------------------------------------------------------

def rule_targets(layers: list[CanonLayer], ckpt: Checkpoint) -> list[tuple[CanonLayer, Target]]:
    """Targets without a template: the Keras paths a layer was read from, else Keras's list-item
    names under `layers/` in checkpoint order (a flat Functional/Sequential model; an RNN with
    `_reverse` tensors is a Bidirectional)."""
    hints = {id(layer): layer.vars_hint(ckpt) for layer in layers}
    used = {h.rsplit("/vars", 1)[0] for h in hints.values() if h}
    counters: dict[str, int] = {}
    bidirectional = {layer.module for layer in layers if layer.suffix}
    owners: dict[str, str] = {}

    def allocate(base: str) -> str:
        while True:
            n = counters.get(base, -1) + 1
            counters[base] = n
            obj = f"layers/{base}" + (f"_{n}" if n else "")
            if obj not in used:
                used.add(obj)
                return obj

    out = []
    for layer in layers:
        hint = hints[id(layer)]
        if layer.kind == "tensor":
            if hint is None:
                raise ConversionError(f"{layer.module}: variables kept by position but their Keras path is unknown")
            out.append((layer, Target(f"{hint}/vars" if hint else "vars", layer.module, "", {},
                                      [], layer.module.rpartition(".")[2])))
            continue
        # A MultiHeadAttention projection read from a Keras file goes back as one.
        cls = (names.mha_class_of(hint) if hint and layer.kind == "linear" else "") or names.CLASS_OF_KIND.get(layer.kind)
        if cls is None:
            raise ConversionError(f"{layer.module}: no Keras layer class for kind {layer.kind}")
        rnn = layer.kind in names.RNN_KINDS
        half = "backward_layer" if layer.suffix else "forward_layer"
        if hint is not None:
            obj = hint[: -len("/cell")] if rnn and hint.endswith("/cell") else hint
            vars_path = f"{hint}/vars" if hint else "vars"
            owner = obj.rpartition("/")[0] if layer.module in bidirectional and obj.endswith("/" + half) else obj
            parents = _object_names(owner, layer.module)
        else:
            if layer.module in bidirectional:
                owner = owners.get(layer.module) or owners.setdefault(layer.module, allocate("bidirectional"))
                obj = f"{owner}/{half}"
            else:
                owner = obj = allocate(snake_case(cls))
            vars_path = f"{obj}/cell/vars" if rnn else f"{obj}/vars"
            parents = {owner: layer.module}
        name = parents.get(owner, layer.module)         # the Keras layer's name
        if obj != owner:                                # one half of a Bidirectional
            name = f"{half.split('_')[0]}_{name}"
        parents.pop(obj, None)
        if rnn:
            parents[obj] = name
            name = f"{name}_cell"
        out.append((layer, Target(vars_path, layer.module, cls, {}, [], name, parents, layer.suffix)))
    return out


def _object_names(obj: str, module: str) -> dict[str, str]:
    """Name attributes for the object groups along `obj` that the reader turns into module path
    segments: list items under `layers` (nested models) and the layer itself."""
    segs = obj.split("/") if obj else []
    mods = module.split(".") if module else []
    # A 'layers' segment is a model's list; every other segment is one module path segment.
    objects = [i for i, s in enumerate(segs) if s != "layers"]
    if len(objects) != len(mods):
        return {obj: module}
    out = {}
    for i, m in zip(objects, mods, strict=True):
        if i == len(segs) - 1 or segs[i + 1] == "layers":
            out["/".join(segs[: i + 1])] = m
    return out


def positions(t: Target, leaves_present: list[str]) -> list[str]:
    """Leaf at each position of the target's vars group."""
    if t.shapes and t.class_name in names.KNOWN:
        try:
            return names.leaves(t.class_name, t.config, t.shapes)[1]
        except names.LayoutError as e:
            raise ConversionError(f"template layer {t.module}: {e}") from None
    return [leaf for leaf in LEAF_ORDER if leaf in leaves_present]


def flatten_rows(ckpt: Checkpoint, pairs: list[tuple[CanonLayer, Target]], config: dict | None, option,
                 report: Report, where: str) -> dict[str, tuple[int, int, int]]:
    """Canonical linear layers whose input rows go from C,H,W to Keras's H,W,C order (a Dense after
    a channels-last Flatten) -> (C, H, W). The destination's config decides when there is one;
    else what the checkpoint recorded (read from a Keras config); else a linear layer that looks
    fed by flattened conv features needs the `flatten` option (HxW or as-is), or it is an error."""
    decided = flatten.parse(option)
    out: dict[str, tuple[int, int, int]] = {}
    inputs = flatten_inputs(config) if config is not None else None
    linear = {layer.module: t for layer, t in pairs if layer.kind == "linear"}
    kept = set()
    for module, t in linear.items():
        li = ckpt.layers.get(module)
        attrs = li.attrs if li is not None else {}
        if attrs.get(flatten.ATTR_SOURCE) == flatten.AS_IS:
            kept.add(module)
            report.add("warning", module, "input rows kept in their order (flatten=as-is when read)")
            continue
        if inputs is not None:
            name = (t.config or {}).get("name") or t.layer_name
            if name in inputs:
                hwc = inputs[name]
                if hwc is None:
                    report.add("warning", module, "Dense after Flatten, the destination's config does not give the "
                                                  "map's shape: input rows written in the canonical C,H,W order")
                    continue
                h, w, c = hwc
                out[module] = (c, h, w)
            continue
        rec = attrs.get(flatten.ATTR)
        if isinstance(rec, list) and len(rec) == 3:
            out[module] = (int(rec[0]), int(rec[1]), int(rec[2]))
    if inputs is None:
        suspects = [s for s in flatten.conv_fed_linears(ckpt) if s[0] in linear and s[0] not in out and s[0] not in kept]
        if suspects and decided is None:
            raise flatten.undecided(suspects, f"the destination {where} has no config (no .keras template) that shows a "
                                              "Flatten or its shape", "-W",
                                    "or give the destination model's .keras archive as --template")
        for module, c, n in suspects:
            if decided == flatten.AS_IS:
                report.add("warning", module, "input rows kept in their order (flatten=as-is)")
                continue
            assert isinstance(decided, tuple)
            c, _ = flatten.shape_from_option(decided, n, module, "flatten")
            out[module] = (c, decided[0], decided[1])
    return out


def exports(ckpt: Checkpoint, pairs: list[tuple[CanonLayer, Target]], rows: dict[str, tuple[int, int, int]] | None = None):
    """Each destination variable: (target, position, canonical source name, lazy native tensor,
    report events), shapes checked against the template's when it gave them. `rows`: linear
    layers whose input rows are permuted C,H,W -> H,W,C (flatten_rows)."""
    for layer, target in pairs:
        canon = {role: ckpt.entries[name].tensor for role, name in layer.roles.items()}
        permuted = ""
        if rows and layer.module in rows and "weight" in canon:
            c, h, w = rows[layer.module]
            canon["weight"] = flatten.chw_to_hwc(canon["weight"], (c, h, w), layer.roles["weight"])
            permuted = f"input rows CHW->HWC ({h}x{w}x{c} map, the Keras Flatten's order)"
        if layer.kind == "tensor":
            roles = sorted(canon, key=int)
            if target.shapes and len(target.shapes) != len(roles):
                raise ConversionError(f"{layer.module}: {len(roles)} variables, the template layer "
                                      f"{target.module} has {len(target.shapes)}")
            for i, role in enumerate(roles):
                _check_shape(layer.roles[role], canon[role], target, i, f"vars/{i}")
                yield target, i, layer.roles[role], canon[role], []
            continue
        attrs = dict(ckpt.layers[layer.module].attrs) if layer.module in ckpt.layers else {}
        if layer.kind == "separable_conv2d" and f"{layer.module}.depthwise" in ckpt.layers:
            attrs = dict(ckpt.layers[f"{layer.module}.depthwise"].attrs)
        native_shapes = dict(zip(positions(target, []), target.shapes, strict=True)) if target.shapes else None
        try:
            out = export_layer(names.rules_key(target.class_name, layer.kind), canon, attrs=attrs,
                               native_shapes=native_shapes)
        except ConversionError as e:
            raise ConversionError(f"{layer.module}: {e.message}") from None
        by_leaf = {m.name: m for m in out}
        order = positions(target, list(by_leaf))
        if set(order) != set(by_leaf):
            raise ConversionError(f"{layer.module}: the checkpoint gives {', '.join(sorted(by_leaf))}, the Keras "
                                  f"layer {target.module} ({target.class_name}) stores {', '.join(order)}")
        for i, leaf in enumerate(order):
            m = by_leaf[leaf]
            src_name = layer.roles.get(m.source.split("+")[0], layer.module)
            _check_shape(src_name, m.tensor, target, i, leaf)
            events = list(m.events)
            if permuted and m.source == "weight":
                events.append(("permuted", permuted))
            yield target, i, src_name, m.tensor, events


def _check_shape(src_name: str, tensor, target: Target, i: int, leaf: str) -> None:
    if target.shapes and tuple(tensor.shape) != tuple(target.shapes[i]):
        raise ConversionError(f"{src_name}: shape {list(tensor.shape)} as Keras {leaf}, the destination "
                              f"layer {target.module} has {list(target.shapes[i])}")


def attr_warnings(ckpt: Checkpoint, pairs, report: Report) -> None:
    """Say where the checkpoint's batch-norm eps/momentum differ from what the destination layer
    uses (its config, else Keras's defaults): a weights file cannot carry them, and they change
    outputs (eps) or training (momentum)."""
    for layer, t in pairs:
        li = ckpt.layers.get(layer.module)
        if layer.kind in ("layer_norm", "group_norm") and li is not None and t.config and "epsilon" in t.config:
            for text in norm_attr_mismatches(layer.kind, li.attrs, {"eps": float(t.config["epsilon"])}):
                report.add("warning", layer.module, f"{layer.kind} {text} (its config)")
            continue
        if layer.kind != "batch_norm" or li is None:
            continue
        cfg = t.config or {}
        known = "its config" if cfg else "Keras's default"
        dest = {"eps": float(cfg.get("epsilon", KERAS_BN_EPS)),
                "momentum": bn_momentum_to_canonical(cfg.get("momentum", KERAS_BN_MOMENTUM))}
        for key, keras_key in (("eps", "epsilon"), ("momentum", "momentum")):
            if key in li.attrs and abs(float(li.attrs[key]) - dest[key]) > 1e-12:
                want = li.attrs[key] if key == "eps" else bn_momentum_from_canonical(li.attrs[key])
                have = dest[key] if key == "eps" else bn_momentum_from_canonical(dest[key])
                report.add("warning", layer.module, f"batch norm {keras_key} {want:g} in the checkpoint, {have:g} in "
                                                    f"the destination ({known}): set {keras_key}={want:g} on the "
                                                    "Keras layer to reproduce the source")
