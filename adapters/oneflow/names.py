"""What a OneFlow state-dict name means. OneFlow follows torch: `<module path>.<role>` with roles
weight, bias, running_mean, running_var, num_batches_tracked and recurrent weight_ih_l0 ...;
kernels are OIHW, linear [out, in], transposed conv [in, out/groups, k...] (checked against OneFlow
0.9's Conv1d/2d/3d, ConvTranspose2d, Linear, BatchNorm2d, LSTM, GRU, Embedding, LayerNorm,
GroupNorm, PReLU; LSTM/GRU gate order i,f,g,o / r,z,n checked by running torch's weights in OneFlow).
So canonical names and layouts ARE OneFlow's: no renaming, no transposing.

A file alone does not say which module a tensor belongs to; `kind_from_names` infers what the names
and ranks imply (a [out, in] weight is taken for a linear layer, a 4-d weight for a conv2d).
from_model knows the modules and uses `kind_of_module` instead.
"""
from __future__ import annotations

from hubfmt.sdk import layouts

_CONV_BY_RANK = {3: "conv1d", 4: "conv2d", 5: "conv3d"}
BUFFER_ROLES = frozenset({"running_mean", "running_var", "num_batches_tracked"})


def kind_from_names(names_shapes: dict[str, tuple]) -> dict[str, str]:
    """layer kind for every tensor name, from the names and weight ranks of a state dict.

    >>> kind_from_names({"c.weight": (8, 3, 3, 3), "bn.running_var": (8,), "bn.weight": (8,)})
    {'c.weight': 'conv2d', 'bn.running_var': 'batch_norm', 'bn.weight': 'batch_norm'}
    """
    roles_of: dict[str, dict[str, tuple]] = {}
    for name, shape in names_shapes.items():
        layer, _, role = name.rpartition(".")
        roles_of.setdefault(layer, {})[role] = shape
    kind_of_layer = {}
    for layer, roles in roles_of.items():
        w = roles.get("weight")
        if "running_mean" in roles or "running_var" in roles:
            kind = "batch_norm"
        elif any(r.startswith(layouts.RNN_ROLE_PREFIXES) for r in roles):
            kind = _recurrent_kind(roles)
        elif w is not None and len(w) in _CONV_BY_RANK:
            kind = _CONV_BY_RANK[len(w)]
        elif w is not None and len(w) == 2:
            kind = "linear"
        else:
            kind = "tensor"
        kind_of_layer[layer] = kind
    return {n: kind_of_layer[n.rpartition(".")[0]] for n in names_shapes}


def _recurrent_kind(roles: dict[str, tuple]) -> str:
    # Gate blocks stacked on dim 0: 4 for LSTM, 3 for GRU, 1 for a plain RNN.
    for r, shape in roles.items():
        if r.startswith("weight_hh") and len(shape) == 2 and shape[1]:
            gates = shape[0] // shape[1]
            return {4: "lstm", 3: "gru", 1: "rnn"}.get(gates, "tensor")
    return "tensor"


_MODULE_KINDS = {
    "Linear": "linear", "Conv1d": "conv1d", "Conv2d": "conv2d", "Conv3d": "conv3d",
    "ConvTranspose1d": "conv_transpose1d", "ConvTranspose2d": "conv_transpose2d",
    "ConvTranspose3d": "conv_transpose3d", "Embedding": "embedding",
    "BatchNorm1d": "batch_norm", "BatchNorm2d": "batch_norm", "BatchNorm3d": "batch_norm",
    "SyncBatchNorm": "batch_norm", "LayerNorm": "layer_norm", "GroupNorm": "group_norm",
    "InstanceNorm1d": "instance_norm", "InstanceNorm2d": "instance_norm", "InstanceNorm3d": "instance_norm",
    "LSTM": "lstm", "GRU": "gru", "RNN": "rnn", "PReLU": "prelu",
}


def kind_of_module(module) -> str:
    """Canonical kind of a OneFlow module instance ("tensor" when hubfmt has no kind for it)."""
    kind = _MODULE_KINDS.get(type(module).__name__, "tensor")
    if kind == "conv2d" and module.groups > 1 and module.groups == module.in_channels:
        return "depthwise_conv2d"
    return kind


def layer_attrs(module, kind: str) -> dict:
    """Attributes that change outputs (spec: Layer attributes), read off the module. OneFlow's
    BatchNorm momentum uses torch's convention (new = (1-m)*old + m*batch: measured), so it is
    recorded as is."""
    if kind in ("batch_norm", "instance_norm"):
        m = module.momentum
        return {"eps": float(module.eps), "momentum": None if m is None else float(m)}
    if kind in ("layer_norm", "group_norm"):
        return {"eps": float(module.eps)}
    if kind.startswith("conv") or kind == "depthwise_conv2d":
        attrs = {a: _plain(getattr(module, a)) for a in ("stride", "padding", "dilation", "groups")}
        if kind.startswith("conv_transpose"):
            attrs["output_padding"] = _plain(module.output_padding)
        return attrs
    return {}


def _plain(v):
    return list(v) if isinstance(v, (tuple, list)) else v

