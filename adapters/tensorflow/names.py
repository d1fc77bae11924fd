"""TensorFlow checkpoint names and layouts, to and from the canonical (hub) convention.

One layer at a time: the reader groups a checkpoint's variables by layer (TF1 scope, TF2 object
path) and calls `import_layer(kind, {native leaf: LazyTensor})`; the writer calls
`export_layer(kind, {canonical role: LazyTensor})`. Both read one declarative table, `RULES`
(hubfmt.sdk's layer rules: each rule knows both directions), and return `Mapped` records (lazy
tensors plus the report events the change implies). The Keras-layer rows are the keras adapter's
table too (adapters/keras/names.py keeps the same rows; tests/test_tf_bundle_format.py checks they
agree): TF2 checkpoints and tf.compat.v1.layers save Keras layers. Framework-free: numpy only.

Native leaves (the last component of a variable name / Keras variable path) by kind:

    kind               native leaves (TF)                          canonical roles
    linear             kernel [in,out] (TF1 slim: weights), bias    weight [out,in], bias
    conv1d/2d/3d       kernel [k..,in,out] ("LIO","HWIO","DHWIO")   weight [out,in,k..], bias
    conv_transpose*d   kernel [k..,out,in] ("LOI","HWOI","DHWOI")   weight [in,out,k..], bias
    depthwise_conv2d   depthwise_kernel [kh,kw,C,m] ("HWCM")        weight [C*m,1,kh,kw], bias
                       (Keras 3 DepthwiseConv2D calls it `kernel`)
    separable_conv2d   depthwise_kernel [kh,kw,C,m],                depthwise.weight [C*m,1,kh,kw],
                       pointwise_kernel [1,1,C*m,out], bias         pointwise.weight [out,C*m,1,1],
                                                                    pointwise.bias
    batch_norm         gamma, beta, moving_mean, moving_variance    weight, bias, running_mean, running_var
    layer_norm/group_norm  gamma, beta                              weight, bias
    rms_norm           scale (Keras 3 RMSNormalization)             weight
    embedding          embeddings [num,dim]                         weight [num,dim]
    lstm (Keras)       kernel [in,4h], recurrent_kernel [h,4h],     weight_ih_l0 [4h,in], weight_hh_l0 [4h,h],
                       bias [4h]; gates i,f,c,o                     bias_ih_l0, bias_hh_l0 (zeros, created)
    gru (Keras, reset_after=True)  kernel [in,3h],                  weight_ih_l0 [3h,in], weight_hh_l0,
                       recurrent_kernel [h,3h], bias [2,3h]; z,r,h  bias_ih_l0, bias_hh_l0; gates r,z,n
    rnn (SimpleRNN)    kernel [in,h], recurrent_kernel [h,h], bias  weight_ih_l0, weight_hh_l0, bias_ih_l0,
                                                                    bias_hh_l0 (zeros, created)
    tf1_lstm           kernel [in+h,4h] gates i,j,f,o, bias [4h]    as lstm; forget_bias folded into bias_ih
                       (BasicLSTMCell / LSTMCell / LSTMBlockCell)

Separable convolution is canonically two layers, `<layer>.depthwise` (kind depthwise_conv2d, no
bias) and `<layer>.pointwise` (kind conv2d, 1x1, carrying the bias), the way a torch twin is built
(nn.Conv2d(C, C*m, k, groups=C, bias=False) then nn.Conv2d(C*m, out, 1)).

BatchNormalization attributes are recorded canonically: eps as is (Keras and tf.compat.v1.layers
default 1e-3), momentum in torch's convention (new = (1-m)*old + m*batch): TF 0.99 -> 0.01.

"""
from __future__ import annotations

import numpy as np

from hubfmt.sdk import ConversionError, LayerRules, Leaf, LazyTensor, Mapped, Stacked, Summed, dtypes
from hubfmt.sdk import layer_rules, permute, reorder_gates

# Keras 3 and tf.compat.v1.layers defaults (TF momentum convention: new = m*old + (1-m)*batch).
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.99
# BasicLSTMCell / LSTMCell add this to the forget gate at run time (not stored in the checkpoint).
TF1_FORGET_BIAS = 1.0

# Native layout of each kind's kernel (TF stores spatial axes first, then in/out).
NATIVE_LAYOUTS = {
    "linear": "IO",
    "conv1d": "LIO", "conv2d": "HWIO", "conv3d": "DHWIO",
    "conv_transpose1d": "LOI", "conv_transpose2d": "HWOI", "conv_transpose3d": "DHWOI",
    "depthwise_conv2d": "HWCM",
}
# Kinds import_layer/export_layer know beyond hubfmt.layouts.KINDS (they map onto canonical kinds).
PSEUDO_KINDS = frozenset({"separable_conv2d", "tf1_lstm"})
# Native leaf aliases (TF1 slim / contrib names) -> the Keras-style leaf this module speaks.
# Keras 3 tracks Dense/Conv kernels as the attribute `_kernel` (TF2 object paths show it).
LEAF_ALIASES = {"weights": "kernel", "biases": "bias", "depthwise_weights": "depthwise_kernel",
                "pointwise_weights": "pointwise_kernel", "_kernel": "kernel",
                "_depthwise_kernel": "depthwise_kernel", "_pointwise_kernel": "pointwise_kernel",
                "_embeddings": "embeddings"}


class FusedLSTMCell:
    """TF1 BasicLSTMCell / LSTMCell / LSTMBlockCell: one `kernel` [in+h, 4h] (input rows, then
    recurrent rows; gates i,j,f,o) and one `bias` [4h] to which the cell adds `forget_bias` at run
    time <-> canonical weight_ih_l0, weight_hh_l0, bias_ih_l0 (forget_bias folded in), bias_hh_l0
    (zeros). `forget_bias` comes from the context's attrs (default TF1_FORGET_BIAS)."""

    natives = ("kernel", "bias")
    roles = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    gates = "igfo"          # i, j (canonical g), f, o

    def to_canonical(self, nat: dict, kind: str, ctx) -> list[Mapped]:
        forget_bias = float(ctx.attrs.get("forget_bias", TF1_FORGET_BIAS))
        k = layer_rules.need(nat, "kernel", "tf1_lstm")
        layer_rules.check_rank(k, 2, "LSTM cell kernel")
        rows, four_h = k.shape
        if four_h % 4 or rows <= four_h // 4:
            raise ConversionError(f"LSTM cell kernel of shape {list(k.shape)} is not [in+h, 4h]")
        h = four_h // 4
        n_in = rows - h
        det = "fused [in+h,4h] split, IO->OI, gates ijfo->ifgo"

        def part(lo, hi):
            return lambda a: reorder_gates(permute(a[lo:hi], (1, 0)), self.gates, "ifgo", 0)
        out = [Mapped("weight_ih_l0", k.map(part(0, n_in), (four_h, n_in)), "lstm", "kernel", "IO", [("transposed", det)]),
               Mapped("weight_hh_l0", k.map(part(n_in, rows), (four_h, h)), "lstm", "kernel", "IO", [("transposed", det)])]
        b = nat.get("bias")
        bias_ev = [("reshaped", "gates ijfo->ifgo")]
        if b is None:   # a cell without bias still adds forget_bias at run time
            b = layer_rules.zeros((four_h,), k.dtype)
            bias_ev = [("created", "cell without bias")]
        else:
            layer_rules.check_rank(b, 1, "LSTM cell bias")
        dtype = b.dtype

        def fold(a):
            a = layer_rules.numeric(reorder_gates(a, self.gates, "ifgo", 0), dtype).copy()
            a[h:2 * h] += np.asarray(forget_bias, dtype=a.dtype)
            return layer_rules.stored(a, dtype)
        if forget_bias:
            bias_ev.append(("warning", f"forget_bias {forget_bias:g} (added at run time by the TF1 cell) folded into "
                                       "the f gate of bias_ih"))
        out.append(Mapped("bias_ih_l0", b.map(fold, b.shape), "lstm", "bias" if "bias" in nat else "", "", bias_ev))
        out.append(Mapped("bias_hh_l0", layer_rules.zeros(b.shape, b.dtype), "lstm", "", "",
                          [("created", "TF1 cells keep one bias: bias_hh is zero")]))
        return out

    def to_native(self, canon: dict, kind: str, ctx) -> list[Mapped]:
        forget_bias = float(ctx.attrs.get("forget_bias", TF1_FORGET_BIAS))
        wi = layer_rules.need(canon, "weight_ih_l0", "lstm")
        wh = layer_rules.need(canon, "weight_hh_l0", "lstm")
        four_h, n_in = wi.shape
        h = four_h // 4
        if wh.shape != (four_h, h):
            raise ConversionError(f"LSTM weight_hh {list(wh.shape)} does not match weight_ih {list(wi.shape)}")

        def kernel():
            both = np.concatenate([wi.load(), wh.load()], axis=1)          # [4h, in+h]
            return permute(reorder_gates(both, "ifgo", self.gates, 0), (1, 0))
        out = [Mapped("kernel", LazyTensor((n_in + h, four_h), wi.dtype, kernel), "tf1_lstm",
                      "weight_ih_l0+weight_hh_l0", "IO",
                      [("transposed", "weight_ih, weight_hh -> fused [in+h,4h], gates ifgo->ijfo")])]
        bi, bh = canon.get("bias_ih_l0"), canon.get("bias_hh_l0")
        ref = bi if bi is not None else bh
        dtype = ref.dtype if ref is not None else wi.dtype

        def bias():
            a = layer_rules.numeric(np.zeros(four_h, dtype=dtypes.storage_dtype(dtype)), dtype)
            for t in (bi, bh):
                if t is not None:
                    a = a + layer_rules.numeric(t.load(), dtype)
            a[h:2 * h] -= np.asarray(forget_bias, dtype=a.dtype)
            return layer_rules.stored(reorder_gates(a, "ifgo", self.gates, 0), dtype)
        ev = [("reshaped", "bias_ih + bias_hh -> one bias, gates ifgo->ijfo")]
        if forget_bias:
            ev.append(("warning", f"forget_bias {forget_bias:g} subtracted from the f gate (the TF1 cell adds it at "
                                  "run time)"))
        out.append(Mapped("bias", LazyTensor((four_h,), dtype, bias), "tf1_lstm", "bias_ih_l0+bias_hh_l0", "", ev))
        return out


def _norm(kind: str) -> LayerRules:
    scale_shift = (Leaf("gamma", "weight", default=1.0, why="scale=False: gamma is 1"),
                   Leaf("beta", "bias", default=0.0, why="center=False: beta is 0"))
    if kind != "batch_norm":
        return LayerRules(scale_shift, ignore=("num_batches_tracked",))
    return LayerRules(scale_shift + (Leaf("moving_mean", "running_mean"), Leaf("moving_variance", "running_var")),
                      ignore=("num_batches_tracked",), needs=("moving_mean", "moving_variance"))


def _keras_rnn(kind: str, gates: str) -> LayerRules:
    kernels = (Leaf("kernel", "weight_ih_l0", "IO", gates, required=True),
               Leaf("recurrent_kernel", "weight_hh_l0", "IO", gates, required=True))
    if kind == "gru":
        return LayerRules(kernels + (Stacked("bias", "bias_ih_l0", "bias_hh_l0", gates, shape_error=(
            "GRU bias of shape {shape}: only reset_after=True GRUs (bias [2,3h]) have a canonical (torch) "
            "equivalent"), note="[2,3h] (reset_after=True)"),))
    return LayerRules(kernels + (Summed("bias", "bias_ih_l0", "bias_hh_l0", gates,
                                        why="Keras keeps one bias: bias_hh is zero"),))


# The rules of every kind: Keras layers (as Keras 3, tf.keras and tf.compat.v1.layers save them),
# then TF1's fused LSTM cell.
RULES: dict[str, LayerRules] = {
    **{kind: LayerRules((Leaf("kernel", "weight", layout, required=True), Leaf("bias", "bias")))
       for kind, layout in NATIVE_LAYOUTS.items() if kind != "depthwise_conv2d"},
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
    "lstm": _keras_rnn("lstm", "ifgo"),
    "gru": _keras_rnn("gru", "zrn"),
    "rnn": _keras_rnn("rnn", ""),
    "tf1_lstm": LayerRules((FusedLSTMCell(),)),
}


def bn_momentum_to_canonical(tf_momentum: float) -> float:
    """TF/Keras momentum (0.99) -> torch convention (0.01)."""
    return round(1.0 - float(tf_momentum), 12)


def bn_momentum_from_canonical(momentum: float) -> float:
    """Torch-convention momentum (0.1) -> TF/Keras convention (0.9)."""
    return round(1.0 - float(momentum), 12)


def bn_attrs(eps: float = KERAS_BN_EPS, tf_momentum: float = KERAS_BN_MOMENTUM) -> dict:
    """Canonical batch_norm LayerInfo attrs from TF/Keras values: bn_attrs() == {'eps': 0.001, 'momentum': 0.01}."""
    return {"eps": float(eps), "momentum": bn_momentum_to_canonical(tf_momentum)}


def normalize_leaf(leaf: str) -> str:
    """A native leaf in this module's vocabulary: 'weights' -> 'kernel', 'biases' -> 'bias'."""
    return LEAF_ALIASES.get(leaf, leaf)


def import_layer(kind: str, natives: dict[str, LazyTensor], *, attrs: dict | None = None) -> list[Mapped]:
    """Native variables of one layer -> canonical tensors (lazy), by RULES.

    `natives` maps native leaves (aliases such as 'weights'/'biases' accepted) to tensors.
    `kind` is a canonical kind or a PSEUDO_KINDS entry. attrs: tf1_lstm {'forget_bias': 1.0}.
    Raises ConversionError for a layer that cannot be represented (e.g. GRU reset_after=False).

    >>> k = LazyTensor.from_array(np.zeros((3, 3, 8, 16), np.float32))
    >>> [(m.name, m.tensor.shape, m.layout) for m in import_layer("conv2d", {"kernel": k})]
    [('weight', (16, 8, 3, 3), 'HWIO')]
    >>> b = LazyTensor.from_array(np.zeros(8, np.float32))
    >>> [m.name for m in import_layer("batch_norm", {"beta": b, "moving_mean": b, "moving_variance": b})]
    ['bias', 'running_mean', 'running_var', 'weight']
    """
    nat = {normalize_leaf(k): v for k, v in natives.items()}
    return layer_rules.import_layer(RULES, kind, nat, attrs=attrs, owner="TensorFlow")


def export_layer(kind: str, canon: dict[str, LazyTensor], *, attrs: dict | None = None,
                 native_shapes: dict[str, tuple] | None = None) -> list[Mapped]:
    """Canonical tensors of one layer -> native TF variables (lazy), by RULES; inverse of import_layer.

    `canon` maps canonical roles ("weight", "depthwise.weight", "weight_ih_l0", ...) to tensors.
    Depthwise kernels need the channel count: from `native_shapes` (a template's shapes by native
    leaf), else attrs 'depth_multiplier' or 'groups' (channels C), else multiplier 1 with a warning.
    attrs: tf1_lstm {'forget_bias': destination cell's value, default 1.0}.

    >>> w = LazyTensor.from_array(np.zeros((16, 8, 3, 3), np.float32))
    >>> [(m.name, m.tensor.shape) for m in export_layer("conv2d", {"weight": w})]
    [('kernel', (3, 3, 8, 16))]
    """
    shapes = {normalize_leaf(k): tuple(v) for k, v in (native_shapes or {}).items()}
    return layer_rules.export_layer(RULES, kind, canon, attrs=attrs, native_shapes=shapes, owner="TensorFlow")


def canonical_kind(kind: str) -> str:
    """The hub kind recorded for a (pseudo) kind: tf1_lstm -> lstm; separable_conv2d has two
    sublayers (depthwise_conv2d, conv2d) and is recorded per sublayer."""
    return {"tf1_lstm": "lstm"}.get(kind, kind)


def kind_from_roles(roles) -> str | None:
    """The pseudo kind a set of canonical roles of one layer suggests, when the hub kind alone is
    ambiguous for TF: separable conv sub-roles -> 'separable_conv2d'. None otherwise."""
    roles = set(roles)
    if {"depthwise.weight", "pointwise.weight"} <= roles:
        return "separable_conv2d"
    return None
