"""What a torch state-dict name means: the layer kinds of a torch state dict, from the module
classes when the file (a pickled nn.Module) or the caller (from_model) tells them, otherwise from
names, shapes and sibling tensors. (Canonical names are torch's: no renaming.)

>>> infer_kinds({"bn.weight": (4,), "bn.running_mean": (4,), "fc.weight": (3, 4)})
{'bn': 'batch_norm', 'fc': 'linear'}
"""
from __future__ import annotations

import re
from typing import Any, Mapping

# torch.nn class name -> hubfmt kind (spec: Layer kinds).
MODULE_KINDS = {
    "Linear": "linear", "LazyLinear": "linear", "NonDynamicallyQuantizableLinear": "linear", "Bilinear": "tensor",
    "Conv1d": "conv1d", "Conv2d": "conv2d", "Conv3d": "conv3d",
    "LazyConv1d": "conv1d", "LazyConv2d": "conv2d", "LazyConv3d": "conv3d",
    "ConvTranspose1d": "conv_transpose1d", "ConvTranspose2d": "conv_transpose2d", "ConvTranspose3d": "conv_transpose3d",
    "BatchNorm1d": "batch_norm", "BatchNorm2d": "batch_norm", "BatchNorm3d": "batch_norm", "SyncBatchNorm": "batch_norm",
    "LayerNorm": "layer_norm", "GroupNorm": "group_norm",
    "InstanceNorm1d": "instance_norm", "InstanceNorm2d": "instance_norm", "InstanceNorm3d": "instance_norm",
    "Embedding": "embedding", "LSTM": "lstm", "GRU": "gru", "RNN": "rnn", "PReLU": "prelu",
}
_RECURRENT = re.compile(r"^(weight|bias)_(ih|hh)_l\d+(_reverse)?$")


def _plain(value: Any) -> bool:
    """A value the manifest (JSON) can hold; anything else a pickle put there is left out."""
    if isinstance(value, (list, tuple)):
        return len(value) <= 8 and all(_plain(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


def layer_attrs(kind: str, attrs: Mapping[str, Any], weight_shape: tuple | None) -> tuple[str, dict]:
    """(kind, output-changing attributes) of a module of that kind with instance attributes
    `attrs` (a pickled module's __dict__ or a live module's vars())."""
    attrs = {k: v for k, v in attrs.items() if _plain(v)}
    out: dict[str, Any] = {}
    if kind.startswith("conv"):
        for key in ("stride", "padding", "dilation", "groups", "padding_mode", "output_padding"):
            v = attrs.get(key)
            if v is not None and not (key == "output_padding" and not kind.startswith("conv_transpose")):
                out[key] = list(v) if isinstance(v, tuple) else v
        groups = attrs.get("groups", 1)
        if (kind == "conv2d" and isinstance(groups, int) and groups > 1 and weight_shape
                and weight_shape[1] == 1 and attrs.get("in_channels") == groups):
            kind = "depthwise_conv2d"
    elif kind in ("batch_norm", "instance_norm"):
        for key in ("eps", "momentum", "affine", "track_running_stats"):
            if key in attrs:
                out[key] = attrs[key]
    elif kind == "layer_norm":
        for key in ("eps", "elementwise_affine"):
            if key in attrs:
                out[key] = attrs[key]
        if "normalized_shape" in attrs:
            out["normalized_shape"] = list(attrs["normalized_shape"])
    elif kind == "group_norm":
        for key in ("num_groups", "eps", "affine"):
            if key in attrs:
                out[key] = attrs[key]
    elif kind in ("lstm", "gru", "rnn"):
        for key in ("num_layers", "bidirectional", "batch_first", "bias", "nonlinearity", "proj_size"):
            if key in attrs:
                out[key] = attrs[key]
    return kind, out


# The instance attributes every module of a kind has (torch's _ConvNd, _NormBase, LayerNorm).
_BASE_ATTRS = {"conv": ("in_channels", "out_channels", "kernel_size", "stride", "padding"),
               "batch_norm": ("num_features", "eps", "momentum"), "layer_norm": ("normalized_shape", "eps")}


def _subclass_of(kind: str, attrs: Mapping[str, Any]) -> bool:
    """Whether a module of an unknown class whose tensors say `kind` is a subclass of torch's
    layer of that kind: it has all the base class's instance attributes."""
    keys = _BASE_ATTRS.get("conv" if kind.startswith("conv") else kind)
    return keys is not None and all(k in attrs for k in keys)


def infer_kinds(shapes: Mapping[str, tuple]) -> dict[str, str]:
    """layer path -> kind for tensor names `<layer>.<role>` with the given shapes, where no
    module class is known. Layers that match nothing are left out (kind 'tensor')."""
    # A state dict lists a layer's tensors together: each layer is judged when the next one
    # starts, so a million one-tensor layers are never a million dicts at once (they raised the
    # read's peak by 75 MB, #13). A layer met again after another goes the general way.
    out: dict[str, str] = {}
    done: set[str] = set()
    current: str | None = None
    roles: dict[str, tuple] = {}
    for name, shape in shapes.items():
        layer, _, role = name.rpartition(".")
        if layer != current:
            if current is not None:
                _judge(current, roles, out)
                done.add(current)
            if layer in done:
                return _infer_kinds_in_any_order(shapes)
            current, roles = layer, {}
        roles[role] = shape if type(shape) is tuple else tuple(shape)
    if current is not None:
        _judge(current, roles, out)
    return out


def _judge(layer: str, roles: dict[str, tuple], out: dict[str, str]) -> None:
    kind = _kind(layer, roles)
    if kind != "tensor":
        out[layer] = kind


def _infer_kinds_in_any_order(shapes: Mapping[str, tuple]) -> dict[str, str]:
    layers: dict[str, dict[str, tuple]] = {}
    for name, shape in shapes.items():
        layer, _, role = name.rpartition(".")
        layers.setdefault(layer, {})[role] = tuple(shape)
    out: dict[str, str] = {}
    for layer, roles in layers.items():
        _judge(layer, roles, out)
    return out


def _kind(layer: str, roles: dict[str, tuple]) -> str:
    if "running_mean" in roles or "running_var" in roles or "num_batches_tracked" in roles:
        return "batch_norm"
    recurrent = [r for r in roles if _RECURRENT.match(r)]
    if recurrent and "weight_ih_l0" in roles and "weight_hh_l0" in roles:
        gates, hidden = roles["weight_ih_l0"][0], roles["weight_hh_l0"][-1]
        if len(roles["weight_ih_l0"]) == 2 and hidden:
            return {4: "lstm", 3: "gru", 1: "rnn"}.get(gates // hidden if gates % hidden == 0 else 0, "tensor")
        return "tensor"
    w = roles.get("weight")
    if w is None or set(roles) - {"weight", "bias"}:
        return "tensor"
    rank = len(w)
    last = layer.rpartition(".")[2].lower()
    if rank == 2:
        return "embedding" if "embed" in last and "bias" not in roles else "linear"
    if rank in (3, 4, 5):
        return {3: "conv1d", 4: "conv2d", 5: "conv3d"}[rank]
    if rank == 1:
        tokens = set(re.split(r"[_\d]+", last)) | {last}
        if tokens & {"bn", "batchnorm", "batch_norm"}:
            return "batch_norm"
        if tokens & {"gn", "groupnorm", "group_norm"}:
            return "group_norm"
        if tokens & {"ln", "layernorm", "layer_norm", "norm"} or last.startswith("norm") or last.endswith("norm"):
            return "layer_norm"
    return "tensor"


_ADAPTIVE_POOLS = ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d")


def flatten_maps(shapes: Mapping[str, tuple], classes: Mapping[str, tuple[str, Mapping[str, Any]]]) -> dict[str, list[int]]:
    """Linear layer -> [C, H, W] of the map it flattens, where the modules say so cheaply: the first
    Linear registered after an AdaptiveAvgPool2d/AdaptiveMaxPool2d((H, W)) that follows a conv of C
    channels, with in_features = C*H*W and H*W > 1 (torchvision's VGG and AlexNet: avgpool 7x7 /
    6x6, then classifier[0]). Module order is registration order, which torchvision follows in
    forward; an nn.Flatten alone tells no H, W (spec 3.5: then a channels-last writer refuses).

    >>> flatten_maps({"c.weight": (8, 3, 3, 3), "fc.weight": (10, 8 * 7 * 7)},
    ...              {"c": ("Conv2d", {}), "pool": ("AdaptiveAvgPool2d", {"output_size": (7, 7)}), "fc": ("Linear", {})})
    {'fc': [8, 7, 7]}
    """
    out: dict[str, list[int]] = {}
    channels = hw = None
    for path, (cls, attrs) in classes.items():
        kind = MODULE_KINDS.get(cls, "")
        if kind.startswith("conv"):
            w = shapes.get(f"{path}.weight")
            channels, hw = (int(w[0]) if w else None), None
        elif cls in _ADAPTIVE_POOLS and channels:
            size = attrs.get("output_size")
            size = (size, size) if isinstance(size, int) else size
            hw = tuple(size) if isinstance(size, (tuple, list)) and len(size) == 2 and all(
                isinstance(v, int) and v > 0 for v in size) else None
        elif kind == "linear":
            w = shapes.get(f"{path}.weight")
            if channels and hw and w and len(w) == 2 and w[1] == channels * hw[0] * hw[1] and hw[0] * hw[1] > 1:
                out[path] = [channels, hw[0], hw[1]]
            channels = hw = None
    return out


def classify(shapes: Mapping[str, tuple], classes: Mapping[str, tuple[str, Mapping[str, Any]]]) -> tuple[dict[str, str], dict]:
    """(layer -> kind, layer -> LayerInfo) for a state dict with tensor `shapes`, using module
    `classes` (layer path -> (class name, instance attributes)) where known, names/shapes elsewhere.
    A layer of kind "tensor" (nothing known) is not in the first."""
    from hubfmt.sdk import LayerInfo

    inferred = infer_kinds(shapes)
    layer_kinds: dict[str, str] = {}
    layers: dict = {}
    for layer in dict.fromkeys(n.rpartition(".")[0] for n in shapes):
        cls = classes.get(layer)
        kind = MODULE_KINDS.get(cls[0]) if cls else None
        attrs: dict = {}
        if kind is None:
            kind = inferred.get(layer, "tensor")
            if cls and _subclass_of(kind, cls[1]):
                # A zoo's subclass of a torch layer (timm's Conv2dSame, BatchNormAct2d): its
                # instance keeps the base class's attributes, and a mismatch in them (eps 1e-3,
                # padding) is what makes two zoos' models differ.
                kind, attrs = layer_attrs(kind, cls[1], shapes.get(f"{layer}.weight"))
        else:
            kind, attrs = layer_attrs(kind, cls[1], shapes.get(f"{layer}.weight"))
        if kind != "tensor":
            layers[layer] = LayerInfo(kind, attrs)
            layer_kinds[layer] = kind       # the others are "tensor": callers .get(layer, "tensor")
    for layer, chw in flatten_maps(shapes, classes).items():
        if layer in layers:    # canonical rows already (torch flattens C,H,W): recorded for channels-last writers
            layers[layer].attrs.update({"flatten": chw, "flatten_source": "CHW"})
    return layer_kinds, layers
