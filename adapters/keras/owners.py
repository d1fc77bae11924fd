"""Keras layers -> canonical tensors: shared by the file reader (.weights.h5/.keras) and
from_model (a live Keras model). One `Owner` is one layer's variables in Keras's order; its class
decides each position's leaf and names.RULES the layout and naming (names.py)."""
from __future__ import annotations

from dataclasses import dataclass

from hubfmt.sdk import Checkpoint, LayerInfo, LazyTensor, TensorInfo
from hubfmt.sdk import ConversionError, FormatError

from . import names


@dataclass
class Owner:
    """One layer's stored variables: `names` are their native names (h5 paths or variable paths),
    `where` names the layer in messages, `suffix` marks a Bidirectional RNN's backward half
    ("_reverse", appended to its roles as torch names them)."""

    module: str
    class_name: str
    config: dict
    names: list[str]
    tensors: list[LazyTensor]
    where: str
    suffix: str = ""


def _layer_attrs(kind: str, cls: str, config: dict, natives: dict) -> dict:
    """Attributes that change outputs, canonically (spec: Layer attributes), from config.json;
    a depthwise layer's groups (its input channels) come from the kernel shape even without it."""
    if cls in (names.MHA_INPUT, names.MHA_OUTPUT):
        return names.heads_attrs(cls, natives["kernel"].shape)
    if not config:
        return {"groups": int(natives["depthwise_kernel"].shape[2])} if kind == "depthwise_conv2d" else {}
    if kind.startswith("conv") or kind == "depthwise_conv2d":
        attrs = {}
        for key, src in (("stride", "strides"), ("padding", "padding"), ("dilation", "dilation_rate")):
            if src in config:
                v = config[src]
                attrs[key] = list(v) if isinstance(v, (list, tuple)) else v
        if kind == "depthwise_conv2d":
            attrs["groups"] = int(natives["depthwise_kernel"].shape[2])
        elif "groups" in config:
            attrs["groups"] = int(config["groups"])
        return attrs
    if kind == "batch_norm":
        return names.bn_attrs(float(config.get("epsilon", names.KERAS_BN_EPS)),
                                  float(config.get("momentum", names.KERAS_BN_MOMENTUM)))
    if kind in ("layer_norm", "group_norm") and "epsilon" in config:
        attrs = {"eps": float(config["epsilon"])}
        if kind == "group_norm" and "groups" in config:
            attrs["groups"] = int(config["groups"])
        return attrs
    return {}


def add_owner(ckpt: Checkpoint, owner: Owner, *, strict: bool, path: str | None) -> None:
    """Map one layer into `ckpt` (entries, layers, report); unknown classes keep their variables
    by position as `<module>.vars.<i>` (kind tensor) with a warning."""
    cls = owner.class_name
    shapes = [t.shape for t in owner.tensors]
    if cls not in names.KNOWN:
        _generic(ckpt, owner, f"layer class {cls or 'unknown'}: variables kept by position")
        return
    mode = _quantized(owner.config)
    if mode:
        _generic(ckpt, owner, f"{mode}-quantized {cls} (kernel, scales...): kept by position; "
                              "a canonical layer needs the float weights")
        return
    try:
        kind, leaves = names.leaves(cls, owner.config, shapes)
    except names.LayoutError as e:
        raise FormatError(f"{owner.where}: {e}", path) from None
    natives = dict(zip(leaves, owner.tensors, strict=True))
    native_names = dict(zip(leaves, owner.names, strict=True))
    attrs = {}
    if kind == "gru" and owner.config and not owner.config.get("reset_after", True):
        mapped = None
        problem = "GRU with reset_after=False has no canonical (torch) equivalent"
    else:
        try:
            mapped = names.import_layer(names.rules_key(cls, kind), natives, attrs=attrs)
            problem = ""
        except ConversionError as e:
            mapped, problem = None, e.message
    if mapped is None:
        if strict:
            raise ConversionError(f"{owner.where}: {problem} (-R strict=false keeps its variables by position)", path)
        _generic(ckpt, owner, problem)
        return
    report = ckpt.report
    if kind == "separable_conv2d":
        sub = {"depthwise": "depthwise_conv2d", "pointwise": "conv2d"}
        base = _layer_attrs("depthwise_conv2d", cls, owner.config, natives)
        ckpt.layers[_join(owner.module, "depthwise")] = LayerInfo("depthwise_conv2d", base)
        ckpt.layers[_join(owner.module, "pointwise")] = LayerInfo("conv2d", {"stride": [1, 1], "padding": "valid",
                                                                              "groups": 1} if owner.config else {})
    else:
        sub = {}
        ckpt.layers[owner.module] = LayerInfo(kind,
                                              _layer_attrs(kind, cls, owner.config, natives))
    if kind == "batch_norm" and not owner.config:
        report.add("warning", owner.module, "no config.json: epsilon and momentum unknown, not recorded "
                                            "(Keras's defaults are 1e-3 and 0.99)")
    for m in mapped:
        if owner.suffix:
            m.name += owner.suffix
        sublayer, _, role = m.name.rpartition(".")
        layer = _join(owner.module, sublayer) if sublayer else owner.module
        name = _join(owner.module, m.name)
        src = natives.get(m.source)
        info = TensorInfo(kind=sub.get(sublayer, m.kind), role=role, layer=layer,
                          original_name=native_names.get(m.source, ""),
                          original_dtype=(src.dtype if src is not None else m.tensor.dtype),
                          original_layout=m.layout,
                          original_shape=tuple(src.shape) if src is not None else None)
        if not info.original_name:
            info.original_name = f"{owner.where} ({m.name}, created)"
        ckpt.add(name, m.tensor, info)
        if m.source in native_names:
            report.renamed(native_names[m.source], name)
        for action, detail in m.events:
            report.add(action, name, detail)


def _quantized(config: dict) -> str:
    """The quantization mode of a layer whose dtype policy is Keras's QuantizedDTypePolicy ('' if none)."""
    policy = config.get("dtype") if config else None
    if isinstance(policy, dict) and "Quantized" in str(policy.get("class_name", "")):
        return str((policy.get("config") or {}).get("mode") or "quantized")
    return ""


def _generic(ckpt: Checkpoint, owner: Owner, why: str) -> None:
    for i, (native, t) in enumerate(zip(owner.names, owner.tensors, strict=True)):
        name = _join(owner.module, f"vars.{i}")
        ckpt.add(name, t, TensorInfo(kind="tensor", role=str(i), layer=_join(owner.module, "vars"),
                                     original_name=native, original_dtype=t.dtype, original_shape=tuple(t.shape)))
        ckpt.report.renamed(native, name)
    ckpt.report.add("warning", owner.module or owner.where, why)


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}.{rest}" if prefix else rest
