"""MindSpore parameter names and tensor types <-> canonical names, roles, kinds and dtypes.

A MindSpore parameter is named `<cell path>.<attribute>` (`0._bn1.gamma`, `backbone.fc.weight`).
The cell path is kept as the canonical module path; only the role changes:
BatchNorm (and every MindSpore norm) gamma/beta -> weight/bias, moving_mean/moving_variance ->
running_mean/running_var; nn.Embedding's embedding_table -> weight.
"""
from __future__ import annotations

from hubfmt.sdk import layouts

# MindSpore tensor_type string (str(mindspore dtype)) <-> canonical dtype name.
TENSOR_TYPES = {
    "Float32": "float32", "Float16": "float16", "BFloat16": "bfloat16", "Float64": "float64",
    "Int8": "int8", "Int16": "int16", "Int32": "int32", "Int64": "int64",
    "UInt8": "uint8", "UInt16": "uint16", "UInt32": "uint32", "UInt64": "uint64",
    "Bool": "bool",
}
DTYPE_TO_TYPE = {v: k for k, v in TENSOR_TYPES.items()}
STRING_TYPE = "str"        # save_checkpoint(append_dict={"k": "text"}): UTF-32LE text, dims [0]

NORM_ROLES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_NORM_ROLES_BACK = {v: k for k, v in NORM_ROLES.items()}
EMBEDDING_ROLE = "embedding_table"
# Roles whose meaning depends on the layer: nn.PReLU keeps its slopes in attribute `w`.
KIND_ROLES = {"prelu": {"w": "weight"}}

# Written by mindspore.train.callback.ModelCheckpoint(append_info=[...]): training progress, not weights.
APPEND_INFO = ("epoch_num", "step_num")
# Optimizer and loss-scale state that mindspore.nn optimizers / TrainOneStep cells add to a checkpoint:
# single scalars by name, and per-parameter slots `<slot>.<parameter name>` (moments.conv1.weight).
OPTIMIZER_SCALARS = frozenset({
    "learning_rate", "global_step", "momentum", "beta1_power", "beta2_power", "scale_sense",
    "current_iterator_step", "last_overflow_iterator_step",
})
OPTIMIZER_SLOTS = frozenset({
    "moments", "moment", "moment1", "moment2", "adam_m", "adam_v", "lamb_m", "lamb_v", "accum",
    "accum_update", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_inf", "linear", "mean_grad",
    "mean_square", "vhat", "prev", "stat", "step_size", "ax",
})


def canonical_name(native: str, kind: str | None = None) -> str:
    """`0._bn1.moving_variance` -> `0._bn1.running_var`; names without a MindSpore role unchanged.
    `kind` (the layer's) settles roles that depend on it (`w` of a PReLU)."""
    layer, dot, role = native.rpartition(".")
    role = (KIND_ROLES.get(kind, {}).get(role) or NORM_ROLES.get(role)
            or ("weight" if role == EMBEDDING_ROLE else role))
    return f"{layer}{dot}{role}"


def native_role(kind: str, role: str) -> str:
    """The MindSpore attribute name of a canonical `role` in a layer of `kind`."""
    for native, canon in KIND_ROLES.get(kind, {}).items():
        if canon == role:
            return native
    if kind in layouts.NORM_KINDS:
        return _NORM_ROLES_BACK.get(role, role)
    if kind == "embedding" and role == "weight":
        return EMBEDDING_ROLE
    return role


def is_optimizer_state(name: str, all_names) -> bool:
    """True for optimizer/loss-scale state: `learning_rate`, `moments.fc.weight` (when `fc.weight`
    is in the same checkpoint), ..."""
    if name in OPTIMIZER_SCALARS:
        return True
    slot, _, rest = name.partition(".")
    return slot in OPTIMIZER_SLOTS and rest in all_names


def infer_kinds(roles_by_layer: dict[str, dict[str, tuple]]) -> dict[str, str]:
    """Layer kind from what a file shows: {layer: {native role: shape}} -> {layer: kind}.

    A file does not record layer types, so this reads the evidence: moving statistics mean BatchNorm
    (InstanceNorm2d's look the same); embedding_table an Embedding; a
    weight's rank a dense (2) or convolution (3, 4, 5) layer, a rank-4 [O,1,kh,kw] weight with O > 1 a
    depthwise convolution (group = channels, the common MBConv case).
    gamma/beta alone (LayerNorm, GroupNorm look alike) and PReLU's `w` stay kind "tensor": only a
    live Cell (from_model) tells them apart.
    """
    kinds = {}
    for layer, roles in roles_by_layer.items():
        weight = roles.get("weight")
        if "moving_mean" in roles or "moving_variance" in roles:
            kind = "batch_norm"
        elif EMBEDDING_ROLE in roles and len(roles[EMBEDDING_ROLE]) == 2:
            kind = "embedding"
        elif weight is not None and len(weight) == 2:
            kind = "linear"
        elif weight is not None and len(weight) == 4:
            kind = "depthwise_conv2d" if weight[1] == 1 and weight[0] > 1 else "conv2d"
        elif weight is not None and len(weight) in (3, 5):
            kind = "conv1d" if len(weight) == 3 else "conv3d"
        else:
            kind = "tensor"
        kinds[layer] = kind
    return kinds
