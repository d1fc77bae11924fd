"""TensorFlow / Keras naming and layout rules, to and from the canonical (hub) convention.

One layer at a time: a reader groups a checkpoint's variables by layer (TF1 scope, TF2 object
path, Keras layer) and calls `import_layer(kind, {native leaf: LazyTensor})`; a writer calls
`export_layer(kind, {canonical role: LazyTensor})`. Both return `Mapped` records (lazy tensors
plus the report events the change implies), so TF1 bundles, TF2 object checkpoints and Keras
files share one set of rules. Framework-free: numpy only.

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

>>> from hubfmt.sdk import LazyTensor
>>> k = LazyTensor.from_array(np.zeros((3, 3, 8, 16), np.float32))
>>> [(m.name, m.tensor.shape, m.layout) for m in import_layer("conv2d", {"kernel": k})]
[('weight', (16, 8, 3, 3), 'HWIO')]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hubfmt.sdk import dtypes, layouts
from hubfmt.sdk import LazyTensor
from hubfmt.sdk import ConversionError
from hubfmt.sdk import convert_layout, depthwise_to_hwcm, permute, reorder_gates

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
# Keras layer class -> kind (keras_h5 and TF2 readers use it with the class names they find).
KERAS_CLASS_KINDS = {
    "Dense": "linear", "EinsumDense": "tensor",
    "Conv1D": "conv1d", "Conv2D": "conv2d", "Conv3D": "conv3d",
    "Conv1DTranspose": "conv_transpose1d", "Conv2DTranspose": "conv_transpose2d",
    "Conv3DTranspose": "conv_transpose3d",
    "DepthwiseConv2D": "depthwise_conv2d", "SeparableConv2D": "separable_conv2d",
    "BatchNormalization": "batch_norm", "LayerNormalization": "layer_norm",
    "GroupNormalization": "group_norm", "Embedding": "embedding",
    "LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn",
    "LSTMCell": "lstm", "GRUCell": "gru", "SimpleRNNCell": "rnn",
}
# Kinds import_layer/export_layer know beyond hubfmt.layouts.KINDS (they map onto canonical kinds).
PSEUDO_KINDS = frozenset({"separable_conv2d", "tf1_lstm"})
# Native leaf aliases (TF1 slim / contrib names) -> the Keras-style leaf this module speaks.
# Keras 3 tracks Dense/Conv kernels as the attribute `_kernel` (TF2 object paths show it).
LEAF_ALIASES = {"weights": "kernel", "biases": "bias", "depthwise_weights": "depthwise_kernel",
                "pointwise_weights": "pointwise_kernel", "_kernel": "kernel",
                "_depthwise_kernel": "depthwise_kernel", "_pointwise_kernel": "pointwise_kernel",
                "_embeddings": "embeddings"}
_NORM_LEAVES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                "moving_variance": "running_var"}
_RNN_GATES = {"lstm": ("ifgo", "ifgo"), "gru": ("zrn", "rzn"), "rnn": ("", ""), "tf1_lstm": ("igfo", "ifgo")}


@dataclass
class Mapped:
    """One tensor after a mapping step.

    import_layer: `name` is the canonical role relative to the layer ("weight", "weight_ih_l0",
    "depthwise.weight"), `source` the native leaf it came from ("" when created), `layout` the
    native layout when it differed from canonical ("HWIO"), `kind` the (sub)layer's canonical kind.
    export_layer: `name` is the native leaf ("kernel"), `source` the canonical role(s) used.
    `events` are (report action, detail) pairs the caller adds to its Report under its full name.
    """

    name: str
    tensor: LazyTensor
    kind: str
    source: str = ""
    layout: str = ""
    events: list[tuple[str, str]] = field(default_factory=list)


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


def _transpose(t: LazyTensor, src: str, dst: str) -> LazyTensor:
    shape = layouts.layout_shape(t.shape, src, dst)
    return t.map(lambda a: convert_layout(a, src, dst), shape)


def _need(natives: dict, leaf: str, kind: str) -> LazyTensor:
    if leaf not in natives:
        raise ConversionError(f"{kind} layer without '{leaf}' (has: {', '.join(sorted(natives)) or 'nothing'})")
    return natives[leaf]


def _check_rank(t: LazyTensor, rank: int, what: str) -> None:
    if len(t.shape) != rank:
        raise ConversionError(f"{what} must have rank {rank}, found shape {list(t.shape)}")


def _kernel_in(kind: str, t: LazyTensor, leaf: str) -> Mapped:
    src = NATIVE_LAYOUTS[kind]
    _check_rank(t, len(src), f"{kind} {leaf}")
    dst = layouts.canonical_layout(kind, len(src))
    return Mapped("weight", _transpose(t, src, dst), kind, leaf, src, [("transposed", f"{src}->{dst}")])


def _num(a: np.ndarray, dtype: str) -> np.ndarray:
    """Data fit for arithmetic (bfloat16 bits -> float32)."""
    return dtypes.convert(a, "bfloat16", "float32") if dtype == "bfloat16" else a


def _back(a: np.ndarray, dtype: str) -> np.ndarray:
    return dtypes.convert(a, "float32", "bfloat16") if dtype == "bfloat16" else a.astype(dtypes.storage_dtype(dtype))


def _plain(name: str, t: LazyTensor, kind: str, leaf: str) -> Mapped:
    return Mapped(name, t, kind, leaf)


def _zeros_like(t: LazyTensor, why: str, name: str, kind: str) -> Mapped:
    z = LazyTensor(t.shape, t.dtype, lambda: np.zeros(t.shape, dtype=dtypes.storage_dtype(t.dtype)))
    return Mapped(name, z, kind, "", "", [("created", why)])


def _const(shape, dtype: str, value: float, name: str, kind: str, why: str) -> Mapped:
    def load():
        return dtypes.convert(np.full(shape, value, np.float32), "float32", dtype)
    return Mapped(name, LazyTensor(shape, dtype, load), kind, "", "", [("created", why)])


def import_layer(kind: str, natives: dict[str, LazyTensor], *, attrs: dict | None = None) -> list[Mapped]:
    """Native variables of one layer -> canonical tensors (lazy).

    `natives` maps native leaves (aliases such as 'weights'/'biases' accepted) to tensors.
    `kind` is a canonical kind or a PSEUDO_KINDS entry. attrs: tf1_lstm {'forget_bias': 1.0}.
    Raises ConversionError for a layer that cannot be represented (e.g. GRU reset_after=False).

    >>> b = LazyTensor.from_array(np.zeros(8, np.float32))
    >>> [m.name for m in import_layer("batch_norm", {"beta": b, "moving_mean": b, "moving_variance": b})]
    ['bias', 'running_mean', 'running_var', 'weight']
    """
    attrs = attrs or {}
    nat = {normalize_leaf(k): v for k, v in natives.items()}
    out: list[Mapped] = []
    if kind in NATIVE_LAYOUTS and kind != "depthwise_conv2d":
        out.append(_kernel_in(kind, _need(nat, "kernel", kind), "kernel"))
        if "bias" in nat:
            out.append(_plain("bias", nat["bias"], kind, "bias"))
        _no_extra(nat, {"kernel", "bias"}, kind)
    elif kind == "depthwise_conv2d":
        leaf = "depthwise_kernel" if "depthwise_kernel" in nat else "kernel"
        out.append(_kernel_in(kind, _need(nat, leaf, kind), leaf))
        if "bias" in nat:
            out.append(_plain("bias", nat["bias"], kind, "bias"))
        _no_extra(nat, {leaf, "bias"}, kind)
    elif kind == "separable_conv2d":
        dw = _kernel_in("depthwise_conv2d", _need(nat, "depthwise_kernel", kind), "depthwise_kernel")
        dw.name = "depthwise.weight"
        pw = _kernel_in("conv2d", _need(nat, "pointwise_kernel", kind), "pointwise_kernel")
        pw.name = "pointwise.weight"
        out += [dw, pw]
        if "bias" in nat:
            out.append(Mapped("pointwise.bias", nat["bias"], "conv2d", "bias"))
        _no_extra(nat, {"depthwise_kernel", "pointwise_kernel", "bias"}, kind)
    elif kind in layouts.NORM_KINDS:
        leaves = _NORM_LEAVES if kind == "batch_norm" else {"gamma": "weight", "beta": "bias"}
        for leaf, role in leaves.items():
            if leaf in nat:
                out.append(_plain(role, nat[leaf], kind, leaf))
        _no_extra(nat, set(leaves), kind)
        ref = next((nat[k] for k in leaves if k in nat), None)
        if ref is None:
            raise ConversionError(f"{kind} layer without variables")
        if "gamma" not in nat:   # scale=False: gamma is 1 at run time
            out.append(_const(ref.shape, ref.dtype, 1.0, "weight", kind, "scale=False: gamma is 1"))
        if "beta" not in nat:    # center=False: beta is 0 at run time
            out.append(_const(ref.shape, ref.dtype, 0.0, "bias", kind, "center=False: beta is 0"))
        if kind == "batch_norm" and not {"moving_mean", "moving_variance"} <= set(nat):
            raise ConversionError("batch_norm layer without moving_mean/moving_variance")
    elif kind == "embedding":
        out.append(_plain("weight", _need(nat, "embeddings", kind), kind, "embeddings"))
        _no_extra(nat, {"embeddings"}, kind)
    elif kind in ("lstm", "gru", "rnn"):
        out += _keras_rnn_in(kind, nat)
    elif kind == "tf1_lstm":
        out += _tf1_lstm_in(nat, float(attrs.get("forget_bias", TF1_FORGET_BIAS)))
    else:
        raise ConversionError(f"no TensorFlow mapping for layer kind {kind!r}")
    return out


def _no_extra(nat: dict, known: set, kind: str) -> None:
    extra = set(nat) - known
    if extra:
        raise ConversionError(f"{kind} layer has unexpected variables: {', '.join(sorted(extra))}")


def _keras_rnn_in(kind: str, nat: dict) -> list[Mapped]:
    src_gates, dst_gates = _RNN_GATES[kind]
    k = _need(nat, "kernel", kind)
    r = _need(nat, "recurrent_kernel", kind)
    _check_rank(k, 2, f"{kind} kernel")
    _check_rank(r, 2, f"{kind} recurrent_kernel")
    _no_extra(nat, {"kernel", "recurrent_kernel", "bias"}, kind)
    detail = f"IO->OI, gates {src_gates}->{dst_gates}" if src_gates != dst_gates else "IO->OI"

    def gates_t(a):
        return reorder_gates(permute(a, (1, 0)), src_gates, dst_gates, 0) if src_gates else permute(a, (1, 0))

    def gates(a):
        return reorder_gates(a, src_gates, dst_gates, 0) if src_gates else a

    out = [Mapped("weight_ih_l0", k.map(gates_t, k.shape[::-1]), kind, "kernel", "IO", [("transposed", detail)]),
           Mapped("weight_hh_l0", r.map(gates_t, r.shape[::-1]), kind, "recurrent_kernel", "IO", [("transposed", detail)])]
    b = nat.get("bias")
    if b is None:
        return out
    if kind == "gru":
        if len(b.shape) != 2 or b.shape[0] != 2:
            raise ConversionError(f"GRU bias of shape {list(b.shape)}: only reset_after=True GRUs (bias [2,3h]) "
                                  "have a canonical (torch) equivalent")
        n = b.shape[1]
        ev = [("reshaped", f"bias [2,{n}] row {{}}, gates {src_gates}->{dst_gates}")]
        out.append(Mapped("bias_ih_l0", b.map(lambda a: gates(a[0]), (n,)), kind, "bias", "",
                          [(a, d.format(0)) for a, d in ev]))
        out.append(Mapped("bias_hh_l0", b.map(lambda a: gates(a[1]), (n,)), kind, "bias", "",
                          [(a, d.format(1)) for a, d in ev]))
        return out
    _check_rank(b, 1, f"{kind} bias")
    out.append(Mapped("bias_ih_l0", b.map(gates, b.shape), kind, "bias"))
    out.append(_zeros_like(b, "Keras keeps one bias: bias_hh is zero", "bias_hh_l0", kind))
    return out


def _tf1_lstm_in(nat: dict, forget_bias: float) -> list[Mapped]:
    k = _need(nat, "kernel", "tf1_lstm")
    _check_rank(k, 2, "LSTM cell kernel")
    _no_extra(nat, {"kernel", "bias"}, "tf1_lstm")
    rows, four_h = k.shape
    if four_h % 4 or rows <= four_h // 4:
        raise ConversionError(f"LSTM cell kernel of shape {list(k.shape)} is not [in+h, 4h]")
    h = four_h // 4
    n_in = rows - h
    det = "fused [in+h,4h] split, IO->OI, gates ijfo->ifgo"

    def part(lo, hi):
        return lambda a: reorder_gates(permute(a[lo:hi], (1, 0)), "igfo", "ifgo", 0)
    out = [Mapped("weight_ih_l0", k.map(part(0, n_in), (four_h, n_in)), "lstm", "kernel", "IO", [("transposed", det)]),
           Mapped("weight_hh_l0", k.map(part(n_in, rows), (four_h, h)), "lstm", "kernel", "IO", [("transposed", det)])]
    b = nat.get("bias")
    bias_ev = [("reshaped", "gates ijfo->ifgo")]
    if b is None:   # a cell without bias still adds forget_bias at run time
        b = LazyTensor((four_h,), k.dtype, lambda: np.zeros(four_h, dtype=dtypes.storage_dtype(k.dtype)))
        bias_ev = [("created", "cell without bias")]
    else:
        _check_rank(b, 1, "LSTM cell bias")
    fb = forget_bias

    def fold(a):
        a = _num(reorder_gates(a, "igfo", "ifgo", 0), b.dtype).copy()
        a[h:2 * h] += np.asarray(fb, dtype=a.dtype)
        return _back(a, b.dtype)
    if fb:
        bias_ev.append(("warning", f"forget_bias {fb:g} (added at run time by the TF1 cell) folded into the f gate of bias_ih"))
    out.append(Mapped("bias_ih_l0", b.map(fold, b.shape), "lstm", "bias" if "bias" in nat else "", "", bias_ev))
    out.append(_zeros_like(b, "TF1 cells keep one bias: bias_hh is zero", "bias_hh_l0", "lstm"))
    return out


# ---------------------------------------------------------------------------------------- export

def export_layer(kind: str, canon: dict[str, LazyTensor], *, attrs: dict | None = None,
                 native_shapes: dict[str, tuple] | None = None) -> list[Mapped]:
    """Canonical tensors of one layer -> native TF/Keras variables (lazy); inverse of import_layer.

    `canon` maps canonical roles ("weight", "depthwise.weight", "weight_ih_l0", ...) to tensors.
    Depthwise kernels need the channel count: from `native_shapes` (a template's shapes by native
    leaf), else attrs 'depth_multiplier' or 'groups' (channels C), else multiplier 1 with a warning.
    attrs: tf1_lstm {'forget_bias': destination cell's value, default 1.0}.

    >>> w = LazyTensor.from_array(np.zeros((16, 8, 3, 3), np.float32))
    >>> [(m.name, m.tensor.shape) for m in export_layer("conv2d", {"weight": w})]
    [('kernel', (3, 3, 8, 16))]
    """
    attrs = attrs or {}
    shapes = {normalize_leaf(k): tuple(v) for k, v in (native_shapes or {}).items()}
    out: list[Mapped] = []
    if kind in NATIVE_LAYOUTS and kind != "depthwise_conv2d":
        out.append(_kernel_out(kind, _need(canon, "weight", kind), "kernel"))
        _opt(out, canon, "bias", "bias", kind)
        _no_extra(canon, {"weight", "bias"}, kind)
    elif kind == "depthwise_conv2d":
        # Keras 3 DepthwiseConv2D names its kernel `kernel`
        native = shapes.get("depthwise_kernel", shapes.get("kernel"))
        out.append(_depthwise_out(_need(canon, "weight", kind), attrs, native, "depthwise_kernel"))
        _opt(out, canon, "bias", "bias", kind)
        _no_extra(canon, {"weight", "bias"}, kind)
    elif kind == "separable_conv2d":
        dw = _depthwise_out(_need(canon, "depthwise.weight", kind), attrs, shapes.get("depthwise_kernel"),
                            "depthwise_kernel")
        dw.source = "depthwise.weight"
        out.append(dw)
        pw = _kernel_out("conv2d", _need(canon, "pointwise.weight", kind), "pointwise_kernel")
        pw.source = "pointwise.weight"
        out.append(pw)
        _opt(out, canon, "pointwise.bias", "bias", kind)
        _no_extra(canon, {"depthwise.weight", "pointwise.weight", "pointwise.bias"}, kind)
    elif kind in layouts.NORM_KINDS:
        leaves = _NORM_LEAVES if kind == "batch_norm" else {"gamma": "weight", "beta": "bias"}
        for leaf, role in leaves.items():
            if role in canon:
                out.append(Mapped(leaf, canon[role], kind, role))
        for role in set(canon) - set(leaves.values()):
            if role != "num_batches_tracked":
                raise ConversionError(f"{kind} layer has unexpected tensor {role!r}")
    elif kind == "embedding":
        out.append(Mapped("embeddings", _need(canon, "weight", kind), kind, "weight"))
        _no_extra(canon, {"weight"}, kind)
    elif kind in ("lstm", "gru", "rnn"):
        out += _keras_rnn_out(kind, canon)
    elif kind == "tf1_lstm":
        out += _tf1_lstm_out(canon, float(attrs.get("forget_bias", TF1_FORGET_BIAS)))
    else:
        raise ConversionError(f"no TensorFlow mapping for layer kind {kind!r}")
    return out


def _opt(out: list, canon: dict, role: str, leaf: str, kind: str) -> None:
    if role in canon:
        out.append(Mapped(leaf, canon[role], kind, role))


def _kernel_out(kind: str, t: LazyTensor, leaf: str) -> Mapped:
    dst = NATIVE_LAYOUTS[kind]
    src = layouts.canonical_layout(kind, len(dst))
    _check_rank(t, len(dst), f"{kind} weight")
    return Mapped(leaf, _transpose(t, src, dst), kind, "weight", dst, [("transposed", f"{src}->{dst}")])


def _depthwise_out(t: LazyTensor, attrs: dict, native_shape, leaf: str) -> Mapped:
    _check_rank(t, 4, "depthwise weight")
    cm, one, kh, kw = t.shape
    if one != 1:
        raise ConversionError(f"depthwise weight must be [C*m,1,kh,kw], found {list(t.shape)}")
    events = [("transposed", "OIHW->HWCM")]
    if native_shape is not None and len(native_shape) == 4:
        channels = native_shape[2]
    elif attrs.get("depth_multiplier"):
        channels = cm // int(attrs["depth_multiplier"])
    elif attrs.get("groups"):
        channels = int(attrs["groups"])
    else:
        channels = cm
        events.append(("warning", "depth multiplier unknown: assumed 1 (pass a template for m > 1)"))
    if channels <= 0 or cm % channels:
        raise ConversionError(f"depthwise weight {list(t.shape)} does not fit {channels} channels")
    shape = (kh, kw, channels, cm // channels)
    return Mapped(leaf, t.map(lambda a: depthwise_to_hwcm(a, channels), shape),
                  "depthwise_conv2d", "weight", "HWCM", events)


def _keras_rnn_out(kind: str, canon: dict) -> list[Mapped]:
    native_gates, canon_gates = _RNN_GATES[kind]
    wi = _need(canon, "weight_ih_l0", kind)
    wh = _need(canon, "weight_hh_l0", kind)
    _no_extra(canon, {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}, kind)

    def gates(a):
        return reorder_gates(a, canon_gates, native_gates, 0) if native_gates else a

    def t_gates(a):
        return permute(gates(a), (1, 0))
    detail = f"OI->IO, gates {canon_gates}->{native_gates}" if native_gates != canon_gates else "OI->IO"
    out = [Mapped("kernel", wi.map(t_gates, wi.shape[::-1]), kind, "weight_ih_l0", "IO", [("transposed", detail)]),
           Mapped("recurrent_kernel", wh.map(t_gates, wh.shape[::-1]), kind, "weight_hh_l0", "IO", [("transposed", detail)])]
    bi, bh = canon.get("bias_ih_l0"), canon.get("bias_hh_l0")
    if bi is None and bh is None:
        return out
    ref = bi if bi is not None else bh

    def get(t):
        return (lambda: t.load()) if t is not None else (lambda: np.zeros(ref.shape, dtypes.storage_dtype(ref.dtype)))
    li, lh = get(bi), get(bh)
    if kind == "gru":
        n = ref.shape[0]
        out.append(Mapped("bias", LazyTensor((2, n), ref.dtype, lambda: np.stack([gates(li()), gates(lh())])),
                          kind, "bias_ih_l0+bias_hh_l0", "", [("reshaped", "bias_ih, bias_hh -> bias [2,3h] (reset_after=True)")]))
    else:
        out.append(Mapped("bias", LazyTensor(ref.shape, ref.dtype, lambda: gates(_back(_num(li(), ref.dtype) + _num(lh(), ref.dtype), ref.dtype))), kind,
                          "bias_ih_l0+bias_hh_l0", "", [("reshaped", "bias_ih + bias_hh -> one bias")]))
    return out


def _tf1_lstm_out(canon: dict, forget_bias: float) -> list[Mapped]:
    wi = _need(canon, "weight_ih_l0", "lstm")
    wh = _need(canon, "weight_hh_l0", "lstm")
    _no_extra(canon, {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}, "lstm")
    four_h, n_in = wi.shape
    h = four_h // 4
    if wh.shape != (four_h, h):
        raise ConversionError(f"LSTM weight_hh {list(wh.shape)} does not match weight_ih {list(wi.shape)}")

    def kernel():
        both = np.concatenate([wi.load(), wh.load()], axis=1)          # [4h, in+h]
        return permute(reorder_gates(both, "ifgo", "igfo", 0), (1, 0))
    out = [Mapped("kernel", LazyTensor((n_in + h, four_h), wi.dtype, kernel), "tf1_lstm", "weight_ih_l0+weight_hh_l0",
                  "IO", [("transposed", "weight_ih, weight_hh -> fused [in+h,4h], gates ifgo->ijfo")])]
    bi, bh = canon.get("bias_ih_l0"), canon.get("bias_hh_l0")
    ref = bi if bi is not None else bh
    if ref is None:
        ref = LazyTensor((four_h,), wi.dtype, lambda: np.zeros(four_h, dtypes.storage_dtype(wi.dtype)))

    def bias():
        a = _num(np.zeros(four_h, dtype=dtypes.storage_dtype(ref.dtype)), ref.dtype)
        for t in (bi, bh):
            if t is not None:
                a = a + _num(t.load(), ref.dtype)
        a[h:2 * h] -= np.asarray(forget_bias, dtype=a.dtype)
        return _back(reorder_gates(a, "ifgo", "igfo", 0), ref.dtype)
    ev = [("reshaped", "bias_ih + bias_hh -> one bias, gates ifgo->ijfo")]
    if forget_bias:
        ev.append(("warning", f"forget_bias {forget_bias:g} subtracted from the f gate (the TF1 cell adds it at run time)"))
    out.append(Mapped("bias", LazyTensor((four_h,), ref.dtype, bias), "tf1_lstm", "bias_ih_l0+bias_hh_l0", "", ev))
    return out


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
