"""The Keras vocabulary: which variable is which in a Keras 3 layer (positions -> native leaves,
by layer class), and how a layer's leaves map to canonical tensors (RULES, both directions).

Keras 3 saves a layer's variables by position (`vars/0..N`: trainable ones in creation order,
then non-trainable ones), so the class and its configuration decide what each position holds:

    Dense, Conv*, Conv*Transpose       kernel, bias (use_bias)
    DepthwiseConv2D                    depthwise_kernel, bias
    SeparableConv2D                    depthwise_kernel, pointwise_kernel, bias
    BatchNormalization                 gamma (scale), beta (center), moving_mean, moving_variance
    LayerNormalization, GroupNorm.     gamma (scale), beta (center)
    Embedding                          embeddings
    LSTM, GRU, SimpleRNN (their cell)  kernel, recurrent_kernel, bias (use_bias)

Without config.json (a bare .weights.h5) the class comes from the item name Keras gave the layer
(`conv2d_3` -> Conv2D) or, for attributes of subclassed models, from the variables' shapes when
they fit exactly one class.

Native leaves -> canonical roles (RULES; hubfmt.sdk's layer rules read it both ways):

    kind               native leaves                               canonical roles
    linear             kernel [in,out], bias                        weight [out,in], bias
    conv1d/2d/3d       kernel [k..,in,out] ("LIO","HWIO","DHWIO")   weight [out,in,k..], bias
    conv_transpose*d   kernel [k..,out,in] ("LOI","HWOI","DHWOI")   weight [in,out,k..], bias
    depthwise_conv2d   depthwise_kernel [kh,kw,C,m] ("HWCM")        weight [C*m,1,kh,kw], bias
    separable_conv2d   depthwise_kernel, pointwise_kernel           depthwise.weight, pointwise.weight,
                       [1,1,C*m,out], bias                          pointwise.bias (two sublayers)
    batch_norm         gamma, beta, moving_mean, moving_variance    weight, bias, running_mean, running_var
    layer_norm/group_norm  gamma, beta                              weight, bias
    rms_norm           scale (RMSNormalization)                     weight
    embedding          embeddings [num,dim]                         weight [num,dim]
    lstm               kernel [in,4h], recurrent_kernel [h,4h],     weight_ih_l0 [4h,in], weight_hh_l0 [4h,h],
                       bias [4h]; gates i,f,c,o                     bias_ih_l0, bias_hh_l0 (zeros, created)
    gru (reset_after=True)  kernel [in,3h], recurrent_kernel,       weight_ih_l0 [3h,in], weight_hh_l0,
                       bias [2,3h]; gates z,r,h                     bias_ih_l0, bias_hh_l0; gates r,z,n
    rnn (SimpleRNN)    kernel [in,h], recurrent_kernel [h,h], bias  weight_ih_l0, weight_hh_l0, bias_ih_l0,
                                                                    bias_hh_l0 (zeros, created)
    linear (a MultiHeadAttention's query_dense/key_dense/value_dense)
                       kernel [d,H,hd] ("IHD"), bias [H,hd]         weight [H*hd,d], bias [H*hd]
    linear (its output_dense)  kernel [H,hd,d] ("HDO"), bias [d]    weight [d,H*hd], bias [d]

These rows are also the tensorflow adapter's (TF2 checkpoints and tf.compat.v1.layers save Keras
layers; adapters/tensorflow/names.py adds TF1's fused LSTM cell and slim leaf names). An adapter
imports no other adapter, so the rows are kept in both: tests/test_keras_format.py checks they agree.

BatchNormalization attributes are recorded canonically: eps as is (Keras default 1e-3), momentum
in torch's convention (new = (1-m)*old + m*batch): Keras 0.99 -> 0.01.
"""
from __future__ import annotations

import re

from hubfmt.sdk import Heads, LayerRules, LazyTensor, Leaf, Mapped, Stacked, Summed, attention, layer_rules

from .config import snake_case
from .store import VarGroup

# Keras 3 defaults (TF momentum convention: new = m*old + (1-m)*batch).
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.99
# Keras layer class -> kind.
KERAS_CLASS_KINDS = {
    "Dense": "linear", "EinsumDense": "tensor",
    "Conv1D": "conv1d", "Conv2D": "conv2d", "Conv3D": "conv3d",
    "Conv1DTranspose": "conv_transpose1d", "Conv2DTranspose": "conv_transpose2d",
    "Conv3DTranspose": "conv_transpose3d",
    "DepthwiseConv2D": "depthwise_conv2d", "SeparableConv2D": "separable_conv2d",
    "BatchNormalization": "batch_norm", "LayerNormalization": "layer_norm",
    "GroupNormalization": "group_norm", "RMSNormalization": "rms_norm", "Embedding": "embedding",
    "LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn",
    "LSTMCell": "lstm", "GRUCell": "gru", "SimpleRNNCell": "rnn",
}
# MultiHeadAttention's projections: EinsumDense sublayers whose kernels keep the heads as an axis
# (hubfmt.io.attention). Canonically linear layers under the attention layer's path, named as Keras
# saves them (`mha.query_dense`); the rules differ from a Dense's, so each has a pseudo class.
MHA_INPUT, MHA_OUTPUT = "MultiHeadAttention.projection", "MultiHeadAttention.output"
MHA_SUBLAYERS = {"query_dense": MHA_INPUT, "key_dense": MHA_INPUT, "value_dense": MHA_INPUT,
                 "output_dense": MHA_OUTPUT}
KERAS_CLASS_KINDS.update({MHA_INPUT: "linear", MHA_OUTPUT: "linear"})
_RULES_KEY = {MHA_INPUT: "heads_input", MHA_OUTPUT: "heads_output"}
# Native layout of each kind's kernel (spatial axes first, then in/out).
NATIVE_LAYOUTS = {
    "linear": "IO",
    "conv1d": "LIO", "conv2d": "HWIO", "conv3d": "DHWIO",
    "conv_transpose1d": "LOI", "conv_transpose2d": "HWOI", "conv_transpose3d": "DHWOI",
}


def _norm(kind: str) -> LayerRules:
    scale_shift = (Leaf("gamma", "weight", default=1.0, why="scale=False: gamma is 1"),
                   Leaf("beta", "bias", default=0.0, why="center=False: beta is 0"))
    if kind != "batch_norm":
        return LayerRules(scale_shift, ignore=("num_batches_tracked",))
    return LayerRules(scale_shift + (Leaf("moving_mean", "running_mean"), Leaf("moving_variance", "running_var")),
                      ignore=("num_batches_tracked",), needs=("moving_mean", "moving_variance"))


def _rnn(kind: str, gates: str) -> LayerRules:
    kernels = (Leaf("kernel", "weight_ih_l0", "IO", gates, required=True),
               Leaf("recurrent_kernel", "weight_hh_l0", "IO", gates, required=True))
    if kind == "gru":
        return LayerRules(kernels + (Stacked("bias", "bias_ih_l0", "bias_hh_l0", gates, shape_error=(
            "GRU bias of shape {shape}: only reset_after=True GRUs (bias [2,3h]) have a canonical (torch) "
            "equivalent"), note="[2,3h] (reset_after=True)"),))
    return LayerRules(kernels + (Summed("bias", "bias_ih_l0", "bias_hh_l0", gates,
                                        why="Keras keeps one bias: bias_hh is zero"),))


RULES: dict[str, LayerRules] = {
    **{kind: LayerRules((Leaf("kernel", "weight", layout, required=True), Leaf("bias", "bias")))
       for kind, layout in NATIVE_LAYOUTS.items()},
    # Keras 3 DepthwiseConv2D names its kernel `kernel`
    "depthwise_conv2d": LayerRules((Leaf("depthwise_kernel", "weight", "HWCM", required=True, aliases=("kernel",)),
                                    Leaf("bias", "bias"))),
    "separable_conv2d": LayerRules((
        Leaf("depthwise_kernel", "depthwise.weight", "HWCM", required=True, kind="depthwise_conv2d"),
        Leaf("pointwise_kernel", "pointwise.weight", "HWIO", required=True, kind="conv2d"),
        Leaf("bias", "pointwise.bias", kind="conv2d"))),
    **{kind: _norm(kind) for kind in ("batch_norm", "layer_norm", "group_norm", "instance_norm")},
    "rms_norm": LayerRules((Leaf("scale", "weight", required=True),)),
    "embedding": LayerRules((Leaf("embeddings", "weight", required=True),)),
    "lstm": _rnn("lstm", "ifgo"),
    "gru": _rnn("gru", "zrn"),
    "rnn": _rnn("rnn", ""),
}
# MultiHeadAttention's projections (hubfmt.io.attention): Keras files and models only; the
# tensorflow adapter, which shares RULES, does not read them from TF checkpoints.
_MHA_RULES: dict[str, LayerRules] = {
    "heads_input": LayerRules((Heads("kernel", "weight", "IHD", required=True), Heads("bias", "bias", "HD"))),
    "heads_output": LayerRules((Heads("kernel", "weight", "HDO", required=True), Leaf("bias", "bias", kind="linear"))),
}
_ALL_RULES = {**RULES, **_MHA_RULES}


def rules_key(class_name: str, kind: str) -> str:
    """The RULES entry for a layer of this class and canonical kind (a per-head projection's own)."""
    return _RULES_KEY.get(class_name, kind)


def heads_attrs(class_name: str, kernel_shape: tuple) -> dict:
    """The `heads` attribute of a MultiHeadAttention projection (from its kernel's shape)."""
    layout = "IHD" if class_name == MHA_INPUT else "HDO"
    return {attention.ATTR_HEADS: attention.heads_of(tuple(kernel_shape), layout)} if len(kernel_shape) == 3 else {}


def mha_class_of(vars_path: str) -> str:
    """The pseudo class of a MultiHeadAttention projection's vars group, from its h5 path
    (`layers/multi_head_attention/query_dense`), '' for any other."""
    return MHA_SUBLAYERS.get(vars_path.rstrip("/").removesuffix("/vars").rpartition("/")[2], "")


def import_layer(kind: str, natives: dict[str, LazyTensor], *, attrs: dict | None = None) -> list[Mapped]:
    """One Keras layer's variables by leaf -> canonical tensors (lazy), by RULES."""
    return layer_rules.import_layer(_ALL_RULES, kind, natives, attrs=attrs, owner="Keras")


def export_layer(kind: str, canon: dict[str, LazyTensor], *, attrs: dict | None = None,
                 native_shapes: dict[str, tuple] | None = None) -> list[Mapped]:
    """Canonical tensors of one layer -> Keras variables by leaf (lazy), by RULES; `native_shapes`:
    the destination layer's shapes by leaf (settles a depthwise kernel's channel count)."""
    return layer_rules.export_layer(_ALL_RULES, kind, canon, attrs=attrs, native_shapes=native_shapes, owner="Keras")


def bn_momentum_to_canonical(keras_momentum: float) -> float:
    """Keras momentum (0.99) -> torch convention (0.01)."""
    return round(1.0 - float(keras_momentum), 12)


def bn_momentum_from_canonical(momentum: float) -> float:
    """Torch-convention momentum (0.1) -> Keras convention (0.9)."""
    return round(1.0 - float(momentum), 12)


def bn_attrs(eps: float = KERAS_BN_EPS, keras_momentum: float = KERAS_BN_MOMENTUM) -> dict:
    """Canonical batch_norm LayerInfo attrs from Keras values: bn_attrs() == {'eps': 0.001, 'momentum': 0.01}."""
    return {"eps": float(eps), "momentum": bn_momentum_to_canonical(keras_momentum)}


# Classes this module knows the variable order of (a subset of KERAS_CLASS_KINDS).
_CONV = ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
_RNN = ("LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell")
_NAMED = (*_CONV, "Dense", "DepthwiseConv2D", "SeparableConv2D", "BatchNormalization",
          "LayerNormalization", "GroupNormalization", "RMSNormalization", "Embedding", *_RNN)
KNOWN = (*_NAMED, MHA_INPUT, MHA_OUTPUT)
_BY_SNAKE = {snake_case(c): c for c in _NAMED}
# The Keras class that writes each canonical kind (exporting by rule, without a template).
CLASS_OF_KIND = {"linear": "Dense", "conv1d": "Conv1D", "conv2d": "Conv2D", "conv3d": "Conv3D",
                 "conv_transpose1d": "Conv1DTranspose", "conv_transpose2d": "Conv2DTranspose",
                 "conv_transpose3d": "Conv3DTranspose", "depthwise_conv2d": "DepthwiseConv2D",
                 "separable_conv2d": "SeparableConv2D", "batch_norm": "BatchNormalization",
                 "layer_norm": "LayerNormalization", "group_norm": "GroupNormalization",
                 "rms_norm": "RMSNormalization", "embedding": "Embedding", "lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}
RNN_KINDS = ("lstm", "gru", "rnn")


class LayoutError(Exception):
    """The variables do not fit the layer class (wrong count or rank): the caller names the file."""


def class_from_item_name(item: str) -> str:
    """'conv2d_transpose_2' -> 'Conv2DTranspose' ('' when the name is not a known class's)."""
    if item in _BY_SNAKE:
        return _BY_SNAKE[item]
    base = re.sub(r"_\d+$", "", item)
    return _BY_SNAKE.get(base, "")


def _flag(config: dict, key: str, default: bool = True) -> bool | None:
    """A boolean option from config.json, or None when there is no config (decide by count)."""
    if not config:
        return None
    v = config.get(key, default)
    return bool(v) if isinstance(v, (bool, int)) else default


def leaves(class_name: str, config: dict, shapes: list[tuple]) -> tuple[str, list[str]]:
    """(kind, native leaf of each position) for a known class; LayoutError when the count or the
    ranks do not fit.

    >>> leaves("BatchNormalization", {}, [(8,)] * 4)
    ('batch_norm', ['gamma', 'beta', 'moving_mean', 'moving_variance'])
    """
    kind = KERAS_CLASS_KINDS[class_name]
    n = len(shapes)
    if class_name in (MHA_INPUT, MHA_OUTPUT):
        # The sublayer's config (EinsumDense) does not say use_bias; the attention layer's does: by count.
        names = _by_count(class_name, n, ["kernel"], ["bias"], None)
        ranks = {"kernel": 3, "bias": 2 if class_name == MHA_INPUT else 1}
        for leaf, shape in zip(names, shapes, strict=True):
            if len(shape) != ranks[leaf]:
                raise LayoutError(f"{class_name} {leaf} must have rank {ranks[leaf]}, found shape {list(shape)}")
        return kind, names
    if class_name in ("Dense", *_CONV, "DepthwiseConv2D", "Embedding", "SeparableConv2D"):
        first = {"DepthwiseConv2D": ["depthwise_kernel"], "Embedding": ["embeddings"],
                 "SeparableConv2D": ["depthwise_kernel", "pointwise_kernel"]}.get(class_name, ["kernel"])
        use_bias = False if class_name == "Embedding" else _flag(config, "use_bias")
        names = _by_count(class_name, n, first, ["bias"], use_bias)
        rank = {"Dense": 2, "Embedding": 2, "DepthwiseConv2D": 4, "SeparableConv2D": 4}.get(class_name)
        if rank is None:
            rank = int(re.search(r"(\d)D", class_name).group(1)) + 2
        for leaf, shape in zip(names, shapes, strict=True):
            want = 1 if leaf == "bias" else rank
            if len(shape) != want:
                raise LayoutError(f"{class_name} {leaf} must have rank {want}, found shape {list(shape)}")
        return kind, names
    if class_name == "BatchNormalization":
        scale, center = _flag(config, "scale"), _flag(config, "center")
        if scale is None:
            if n != 4:
                raise LayoutError(f"BatchNormalization with {n} variables: scale or center is off and without "
                                  "config.json it is ambiguous which (read the .keras archive or pass a template)")
            scale = center = True
        names = (["gamma"] if scale else []) + (["beta"] if center else []) + ["moving_mean", "moving_variance"]
        _count(class_name, n, len(names))
        _ranks(class_name, names, shapes, 1)
        return kind, names
    if class_name in ("LayerNormalization", "GroupNormalization"):
        if config.get("rms_scaling"):
            raise LayoutError("LayerNormalization with rms_scaling=True has no canonical equivalent")
        scale, center = _flag(config, "scale"), _flag(config, "center")
        if scale is None:
            if n != 2:
                raise LayoutError(f"{class_name} with {n} variable(s): without config.json it is ambiguous "
                                  "whether gamma or beta is stored")
            scale = center = True
        names = (["gamma"] if scale else []) + (["beta"] if center else [])
        _count(class_name, n, len(names))
        _ranks(class_name, names, shapes, 1)
        return kind, names
    if class_name == "RMSNormalization":
        _count(class_name, n, 1)
        _ranks(class_name, ["scale"], shapes, 1)
        return kind, ["scale"]
    if class_name in _RNN:
        names = _by_count(class_name, n, ["kernel", "recurrent_kernel"], ["bias"], _flag(config, "use_bias"))
        for leaf, shape in zip(names, shapes, strict=True):
            ok = (1, 2) if leaf == "bias" and kind == "gru" else (1,) if leaf == "bias" else (2,)
            if len(shape) not in ok:   # GRU(reset_after=True) keeps two bias rows: [2, 3h]
                raise LayoutError(f"{class_name} {leaf} must have rank {' or '.join(map(str, ok))}, "
                                  f"found shape {list(shape)}")
        return kind, names
    raise LayoutError(f"no variable order known for {class_name}")


def _by_count(cls: str, n: int, first: list[str], optional: list[str], flag: bool | None) -> list[str]:
    if flag is None:
        if n not in (len(first), len(first) + len(optional)):
            raise LayoutError(f"{cls} has {n} variables, expected {len(first)} or {len(first) + len(optional)}")
        return (first + optional)[:n]
    names = first + (optional if flag else [])
    _count(cls, n, len(names))
    return names


def _count(cls: str, n: int, want: int) -> None:
    if n != want:
        raise LayoutError(f"{cls} has {n} variables, expected {want} for its configuration")


def _ranks(cls: str, names, shapes, rank: int) -> None:
    for leaf, shape in zip(names, shapes, strict=True):
        if len(shape) != rank:
            raise LayoutError(f"{cls} {leaf} must have rank {rank}, found shape {list(shape)}")


def infer_class(group: VarGroup) -> str:
    """The layer class of a group without config: from its list-item name, an RNN cell's parent,
    or shapes that fit exactly one class; '' when unknown or ambiguous."""
    item = group.object_path.rsplit("/", 1)[-1]
    ranks = [len(v.shape) for v in group.vars]
    if item in MHA_SUBLAYERS and ranks[:1] == [3]:
        # a MultiHeadAttention's attribute (Keras saves `_query_dense` as `query_dense`); its
        # output kernel [H, hd, d] is no Conv1D's
        return MHA_SUBLAYERS[item]
    by_name = class_from_item_name(item)
    if by_name:
        return by_name
    shapes = [v.shape for v in group.vars]
    ranks = [len(s) for s in shapes]
    if group.from_cell:
        if len(shapes) in (2, 3) and ranks[:2] == [2, 2] and shapes[0][1] == shapes[1][1]:
            h, gh = shapes[1][0], shapes[1][1]
            return {4 * h: "LSTM", 3 * h: "GRU", h: "SimpleRNN"}.get(gh, "")
        return ""
    fits = []
    if ranks == [2, 1] and shapes[1][0] == shapes[0][1]:
        fits.append("Dense")
    if len(ranks) == 2 and ranks[0] in (3, 4, 5) and ranks[1] == 1:
        k, b = shapes[0], shapes[1][0]
        d = ranks[0] - 2
        if b == k[-1]:
            fits.append(f"Conv{d}D")
        if b == k[-2]:
            fits.append(f"Conv{d}DTranspose")
        if d == 2 and b == k[2] * k[3]:
            fits.append("DepthwiseConv2D")
    if ranks == [4, 4, 1] and shapes[1][:2] == (1, 1) and shapes[1][2] == shapes[0][2] * shapes[0][3] \
            and shapes[2][0] == shapes[1][3]:
        fits.append("SeparableConv2D")
    if ranks == [1, 1, 1, 1] and len(set(shapes)) == 1:
        fits.append("BatchNormalization")
    return fits[0] if len(fits) == 1 else ""
