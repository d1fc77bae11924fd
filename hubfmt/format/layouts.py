"""Canonical layer kinds, roles and tensor layouts (the transforms between layouts are in
hubfmt.io.transforms).

Layouts are strings of axis letters. Canonical (spec: Canonical layouts): linear "OI", conv
"OI" + spatial ("OIL", "OIHW", "OIDHW"), transposed conv "IO" + spatial (torch's [in, out/groups,
k...]), depthwise conv "OIHW" with I = 1 and O = C*M. TensorFlow's are "IO" (Dense), "HWIO" (conv),
"HWOI" (Conv2DTranspose) and "HWCM" (DepthwiseConv2D, C channels times M multiplier).
"""
from __future__ import annotations

KINDS = frozenset({
    "linear", "conv1d", "conv2d", "conv3d", "depthwise_conv2d",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "embedding", "batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
    "lstm", "gru", "rnn", "prelu", "tensor",
})
NORM_KINDS = frozenset({"batch_norm", "layer_norm", "group_norm", "instance_norm"})
# Canonical roles. Recurrent layers use torch's names with a layer suffix: weight_ih_l0 ...
BN_ROLES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
RNN_ROLE_PREFIXES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# Canonical gate order of recurrent layers (torch / cuDNN / Keras): LSTM i,f,g,o; GRU r,z,n.
LSTM_GATES = "ifgo"
GRU_GATES = "rzn"

# Canonical layout of a kind's weight, by rank.
_CANONICAL = {
    ("linear", 2): "OI",
    ("conv1d", 3): "OIL", ("conv2d", 4): "OIHW", ("conv3d", 5): "OIDHW",
    ("depthwise_conv2d", 4): "OIHW",
    ("conv_transpose1d", 3): "IOL", ("conv_transpose2d", 4): "IOHW", ("conv_transpose3d", 5): "IODHW",
}


def canonical_layout(kind: str, rank: int) -> str:
    """The canonical layout of a `kind` layer's weight of that rank ('' when layout-free)."""
    return _CANONICAL.get((kind, rank), "")


def is_depthwise_pair(src: str, dst: str) -> bool:
    return {src, dst} == {"HWCM", "OIHW"}


def check_permutation(src: str, dst: str) -> None:
    if sorted(src) != sorted(dst) or len(set(src)) != len(src):
        raise ValueError(f"cannot convert layout {src} to {dst}")


def layout_shape(shape, src: str, dst: str) -> tuple:
    """Shape of a tensor of `shape` in layout `src` once converted to `dst`."""
    shape = tuple(shape)
    if src == dst:
        return shape
    if is_depthwise_pair(src, dst):
        if src == "HWCM":
            kh, kw, c, m = shape
            return (c * m, 1, kh, kw)
        raise ValueError("OIHW -> HWCM needs the multiplier: use depthwise_to_hwcm")
    check_permutation(src, dst)
    return tuple(shape[src.index(a)] for a in dst)


def module_path(native_name: str) -> str:
    """A native variable path as a canonical module path: TF scopes `a/b/c:0` -> `a.b.c`."""
    name = native_name
    if name.endswith(":0"):
        name = name[:-2]
    return name.replace("/", ".")
