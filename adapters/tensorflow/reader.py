"""TF1 / TF2 checkpoint bundles -> a canonical Checkpoint: `read` opens the bundle (bundle.py),
`import_variables` names its variables.

Checkpoint bundles are named by their prefix: `read` accepts the prefix, `prefix.index`,
`prefix.meta` (ignored: weights come from the bundle) or a directory with a `checkpoint` state
file.

TF1 name-based checkpoints key variables by graph name (`conv1/kernel`, `rnn/basic_lstm_cell/bias`);
TF2 object-based ones by object path (`model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE`).
Either way a variable is `<layer path>/<leaf>`: variables are grouped by layer path, the layer's
kind is inferred from its leaves, ranks and scope names (override with `kinds={layer: kind}`),
and names.import_layer maps the group. Training state is dropped and reported: optimizer
slots (`.../Adam`, `.../Momentum`, `beta1_power`, TF2 `optimizer/...` and `.OPTIMIZER_SLOT`),
`global_step` and `save_counter` (their values kept in ckpt.extra), ExponentialMovingAverage
shadows (or used instead of the raw weights with prefer_ema=True). The cells of a TF1
MultiRNNCell (`rnn/multi_rnn_cell/cell_<k>/basic_lstm_cell`) are the layers of one canonical
LSTM (`rnn.multi_rnn_cell.weight_ih_l<k>`, torch's num_layers); a Keras RNN's cell belongs to
its layer (`lstm.weight_ih_l0`).

>>> ckpt = import_variables([("dense/kernel", k), ("dense/bias", b)])    # doctest: +SKIP
>>> list(ckpt)                                                             # doctest: +SKIP
['dense.weight', 'dense.bias']
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable

from hubfmt.sdk import layouts
from hubfmt.sdk import Checkpoint, LayerInfo, LazyTensor, TensorInfo
from hubfmt.sdk import ConversionError, FormatError, SourceInfo, protowire
from hubfmt.sdk import flatten as flatten_order

from . import names
from .formats import FRAMEWORK
from .objgraph import OBJECT_GRAPH_KEY, VALUE_SUFFIX


def read(path, *, prefer_ema: bool = False, kinds: dict | None = None,
         forget_bias: float = names.TF1_FORGET_BIAS, strict: bool = True,
         verify_checksums: bool = True, flatten: str | None = None) -> Checkpoint:
    """A TF checkpoint bundle as a canonical, lazy Checkpoint.

    prefer_ema: take ExponentialMovingAverage shadows; kinds: {layer: kind} overrides of the
    inferred kinds; forget_bias: of TF1 LSTM cells; strict: unmappable layers raise;
    verify_checksums: check each tensor's CRC-32C on load; flatten: a Dense after a Flatten of
    conv features, whose H,W,C rows a checkpoint cannot show: "HxW" permutes them to the
    canonical C,H,W order, "as-is" keeps them; without it such a layer makes every write refuse
    (hubfmt.sdk.flatten).

    >>> ckpt = read("train/model.ckpt-1000", prefer_ema=True)          # doctest: +SKIP
    """
    from .bundle import open_bundle
    from .objgraph import variable_full_names, variable_paths

    path = os.fspath(path)
    bundle = open_bundle(path, verify_data=verify_checksums)
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    tf2 = OBJECT_GRAPH_KEY in bundle.entries
    ckpt.source = SourceInfo(FRAMEWORK, "", bundle.prefix, "tf2-checkpoint" if tf2 else "tf1-checkpoint")
    for note in bundle.notes:
        ckpt.report.add("warning", path, note)
    for name, e in bundle.entries.items():
        if e.sliced:
            ckpt.report.add("warning", name, f"partitioned variable: {len(e.slices)} pieces joined into one tensor")
    paths = full_names = None
    if tf2:
        try:
            graph = bundle.strings(OBJECT_GRAPH_KEY)[0]
            paths, full_names = variable_paths(graph), variable_full_names(graph)
        except protowire.Malformed as e:
            raise FormatError(f"bad TF2 object graph: {e}", bundle.index_path) from None
    variables = [(n, bundle.tensor(n) if e.dtype is not None else e.dtype_name)
                 for n, e in bundle.entries.items()]
    import_variables(variables, paths=paths, full_names=full_names, ckpt=ckpt, prefer_ema=prefer_ema,
                     kinds=kinds, forget_bias=forget_bias, strict=strict)
    decide_flatten_rows(ckpt, flatten, f"{os.path.basename(bundle.prefix)} (a TF checkpoint)")
    return ckpt


def decide_flatten_rows(ckpt: Checkpoint, option, where: str) -> None:
    """A Dense after a Flatten of NHWC conv features takes its inputs in H,W,C order, a NCHW model
    in C,H,W; a checkpoint records neither the Flatten nor the map's shape, so `option` decides
    (hubfmt.sdk.flatten.decide_read), or every write refuses."""
    flatten_order.decide_read(ckpt, option, f"{where} records no Flatten or its shape", "-R")


SLOT_RE = re.compile(r"^(Adam|Adam_1|Momentum|RMSProp|RMSProp_1|Adagrad|AdagradDA|AdagradDA_1|Adadelta|Adadelta_1|"
                      r"Ftrl|Ftrl_1|LazyAdam|LazyAdam_1|Nadam|Nadam_1|AdamW|AdamW_1|ProximalAdagrad|"
                      r"GradientDescent|LARSOptimizer|LAMB|LAMB_1)$")
_POWER_RE = re.compile(r"^beta[12]_power(_\d+)?$")
_COUNTERS = {"global_step": "global_step", "save_counter": "save_counter"}
EMA = "ExponentialMovingAverage"
_TRANSPOSED_SCOPE = re.compile(r"(transpose|deconv|upconv)", re.I)
_DEPTHWISE_SCOPE = re.compile(r"(depthwise|dwconv|conv_?dw)", re.I)
_CONV_SCOPE = re.compile(r"conv", re.I)
_LSTM_SCOPE = re.compile(r"lstm", re.I)
_TF1_GRU_SCOPE = re.compile(r"gru_cell/(gates|candidate)$")
# A MultiRNNCell stack: rnn/multi_rnn_cell/cell_1/basic_lstm_cell -> layer rnn.multi_rnn_cell, suffix _l1
_STACK_CELL = re.compile(r"^(.*multi_rnn_cell)/cell_(\d+)/[^/]*lstm_cell$")
# Leaves each kind understands; other leaves of a layer pass through as plain tensors.
_KIND_LEAVES = {
    "separable_conv2d": {"depthwise_kernel", "pointwise_kernel", "bias"},
    "depthwise_conv2d": {"depthwise_kernel", "kernel", "bias"},
    "batch_norm": {"gamma", "beta", "moving_mean", "moving_variance"},
    "layer_norm": {"gamma", "beta"},
    "rms_norm": {"scale"},
    "embedding": {"embeddings"},
    "lstm": {"kernel", "recurrent_kernel", "bias"}, "gru": {"kernel", "recurrent_kernel", "bias"},
    "rnn": {"kernel", "recurrent_kernel", "bias"},
    "tf1_lstm": {"kernel", "bias"},
}


def natural_key(name: str):
    """Sort key putting conv2d_2 before conv2d_10 (TF numbers repeated layers)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _classify(name: str, weights: set[str]) -> str | None:
    """Why a TF1 variable is training state and not a weight (None: it is a weight)."""
    parts = name.split("/")
    leaf = parts[-1]
    if SLOT_RE.match(leaf) and "/".join(parts[:-1]) in weights:
        return f"optimizer slot ({leaf})"
    if _POWER_RE.match(leaf):
        return "optimizer state (Adam beta power)"
    if name in _COUNTERS:
        return f"a training counter, not a weight: its value moves to non-tensor content extra[{name!r}]"
    if "/" + EMA in "/" + name and (leaf == "biased" or leaf == "local_step"):
        return "EMA debiasing state"
    return None


def _infer_kind(layer: str, leaves: dict[str, LazyTensor]) -> tuple[str, str]:
    """(kind, warning or '') of a layer from its leaves, ranks and scope name."""
    ls = set(leaves)
    last = layer.rsplit("/", 1)[-1]
    if {"depthwise_kernel", "pointwise_kernel"} <= ls:
        return "separable_conv2d", ""
    if "depthwise_kernel" in ls:
        return "depthwise_conv2d", ""
    if "embeddings" in ls:
        return "embedding", ""
    if ls & {"moving_mean", "moving_variance"}:
        return "batch_norm", ""
    if ls & {"gamma", "beta"}:
        return "layer_norm", ""
    if ls == {"scale"} and len(leaves["scale"].shape) == 1:     # Keras 3 RMSNormalization
        return "rms_norm", ""
    if "recurrent_kernel" in ls and "kernel" in ls:
        k, r = leaves["kernel"].shape, leaves["recurrent_kernel"].shape
        if len(k) == 2 and len(r) == 2 and r[0] and r[1] % r[0] == 0:
            return {4: "lstm", 3: "gru", 1: "rnn"}.get(r[1] // r[0], "tensor"), ""
        return "tensor", ""
    if "kernel" in ls:
        shape = leaves["kernel"].shape
        if len(shape) == 2:
            if _LSTM_SCOPE.search(last) and shape[1] % 4 == 0:
                return "tf1_lstm", ""
            return "linear", ""
        if len(shape) in (3, 4, 5):
            return _conv_kind(last, shape, leaves.get("bias"))
    return "tensor", ""


def _conv_kind(scope: str, kshape: tuple, bias: LazyTensor | None) -> tuple[str, str]:
    """Conv, transposed conv or depthwise for a `kernel` of rank 3-5. Keras 3 names all three
    `kernel` and TF2 object paths carry no layer class, so: the scope name when it says
    (conv2d_transpose, depthwise_conv2d, conv1), else the bias length (conv [..,I,O] has O,
    transposed [..,O,I] has O = shape[-2], depthwise [..,C,M] has C*M), else conv, with a warning."""
    d = len(kshape) - 2
    if d == 2 and _DEPTHWISE_SCOPE.search(scope):
        return "depthwise_conv2d", ""
    if _TRANSPOSED_SCOPE.search(scope):
        return f"conv_transpose{d}d", ""
    if _CONV_SCOPE.search(scope):
        return f"conv{d}d", ""
    if bias is None or len(bias.shape) != 1:
        return f"conv{d}d", (f"kernel {list(kshape)} read as conv{d}d: nothing tells a transposed or depthwise "
                             "conv apart here (pass kinds={layer: kind} if it is one)")
    n, a, b = bias.shape[0], kshape[-2], kshape[-1]
    fits = [k for k, ok in ((f"conv{d}d", n == b), ("depthwise_conv2d", d == 2 and n == a * b),
                            (f"conv_transpose{d}d", n == a)) if ok]
    if len(fits) == 1:
        return fits[0], ""
    if not fits:
        return f"conv{d}d", f"bias of {n} fits no conv layout of kernel {list(kshape)}"
    return fits[0], (f"kernel {list(kshape)} with bias {n} fits {' and '.join(fits)}: read as {fits[0]} "
                     "(pass kinds={layer: kind} if it is not)")


def import_variables(variables: Iterable[tuple[str, LazyTensor | None]], *, prefer_ema: bool = False,
                     kinds: dict[str, str] | None = None, forget_bias: float = names.TF1_FORGET_BIAS,
                     strict: bool = True, paths: dict[str, list[list[str]]] | None = None,
                     full_names: dict[str, str] | None = None, ckpt: Checkpoint | None = None,
                     layers_out: list | None = None) -> Checkpoint:
    """Build a canonical Checkpoint from (native name, tensor) pairs; a str (or None) instead of a
    tensor names the dtype of a non-numeric entry (string, resource, ...), which is dropped.

    `paths` (TF2: checkpoint key -> object paths from objgraph.variable_paths) names variables by
    their model path rather than the key the saver happened to use; `full_names` (TF2: key -> the
    variable's own name) name them by layer names instead when those are unique (Keras models:
    'sequential/conv2d/kernel' -> 'conv2d.weight', the names a Keras file gives). `kinds` overrides the inferred
    kind of a layer (canonical layer path or native scope -> kind, e.g. {'up1': 'conv_transpose2d'}).
    """
    ckpt = Checkpoint() if ckpt is None else ckpt
    rep = ckpt.report
    kinds = dict(kinds or {})
    items = list(variables)
    tf2 = any(n == OBJECT_GRAPH_KEY for n, _ in items)
    numeric: dict[str, tuple[str, LazyTensor]] = {}    # variable path -> (native key, tensor)
    for key, t in items:
        if key == OBJECT_GRAPH_KEY:
            rep.add("dropped", key, "TF2 object graph (structure, not weights)")
            continue
        if tf2:
            var = _tf2_variable_path(key, paths)
            why = _tf2_classify(key, var)
        else:
            var = key[:-2] if key.endswith(":0") else key
            why = None
        if why is None and not isinstance(t, LazyTensor):
            why = f"{t or 'non-numeric'} tensor: not weights (the hub carries numeric tensors)"
            t = None
        if why is not None:
            _keep_counter(ckpt, var, t)
            rep.add("dropped", key, why)
            continue
        numeric[var] = (key, t)
    if tf2:
        numeric = {v: numeric[v] for v in sorted(numeric, key=natural_key)}   # object paths: model order
        if full_names:
            numeric = _by_full_names(numeric, full_names)
    if not tf2:
        weights = set(numeric)
        for var in list(numeric):
            why = _classify(var, weights)
            if why:
                _keep_counter(ckpt, var, numeric[var][1])
                rep.add("dropped", numeric.pop(var)[0], why)
    _apply_ema(numeric, prefer_ema, rep)
    numeric = _tables_as_layers(numeric)

    groups: dict[str, dict[str, tuple[str, LazyTensor]]] = {}
    for var in (numeric if tf2 else sorted(numeric, key=natural_key)):
        layer, _, leaf = var.rpartition("/")
        groups.setdefault(layer, {})[leaf] = numeric[var]
    groups = _cells_into_layers(groups)
    saw_bn = False
    for layer, members in groups.items():
        m = _STACK_CELL.match(layer)
        stack = (m.group(1), int(m.group(2))) if m else None
        saw_bn |= _import_group(ckpt, layer, members, kinds, forget_bias, strict, layers_out, stack)
    if saw_bn:
        rep.add("warning", "*", "batch-norm eps/momentum are not stored in TF checkpoints: recorded the "
                "tf.compat.v1.layers/Keras defaults eps=1e-3, momentum=0.99 (canonical 0.01)")
    return ckpt


# A variable that is a whole embedding table, Google BERT style (`bert/embeddings/word_embeddings`).
_TABLE_LEAF = re.compile(r"^\w+_embeddings?$")


def _tables_as_layers(numeric: dict) -> dict:
    """Google's TF1 BERT (and ALBERT, ELECTRA, ...) creates each embedding table as a bare variable
    `<scope>/<name>_embeddings` [num, dim], not as a layer with an `embeddings` leaf (Keras). Such a
    variable is its own embedding layer: `<scope>/<name>_embeddings` + leaf `embeddings`, so it reads
    as kind embedding (`bert.embeddings.word_embeddings.weight`, torch's name) and keeps its key.
    A name that is also a scope of other variables is left alone."""
    scopes = {v.rpartition("/")[0] for v in numeric}
    out = {}
    for var, value in numeric.items():
        leaf = var.rpartition("/")[2]
        if (_TABLE_LEAF.match(leaf) and leaf != "embeddings" and var not in scopes
                and len(value[1].shape) == 2 and f"{var}/embeddings" not in numeric):
            var = f"{var}/embeddings"
        out[var] = value
    return out


def from_listing(variables: Iterable[tuple[str, LazyTensor]]) -> Checkpoint:
    """A names+shapes listing of TF variable names (tensors without data) named as `read` names a
    checkpoint of those variables: the alignment target of `--template LISTING --template-from
    tensorflow`. Training counters are left out (their values would be read); a layer that does
    not map stays plain tensors (reported)."""
    return import_variables([(n, t) for n, t in variables if n.removesuffix(":0") not in _COUNTERS], strict=False)


def _by_full_names(numeric: dict, full_names: dict[str, str]) -> dict:
    """Rename TF2 variables by their own names when they look like one Keras model's
    ('<model>/<layer...>/<var>', unique), minus the model's name ('sequential/c1/kernel' ->
    'c1/kernel'); else keep the object paths. The order stays the object graph's (model order)."""
    own = {var: full_names.get(key, "").removesuffix(":0") for var, (key, _) in numeric.items()}
    firsts = {n.split("/", 1)[0] for n in own.values()}
    if (not own or len(firsts) != 1 or len(set(own.values())) != len(own)
            or not all(n.count("/") >= 2 for n in own.values())):
        return numeric
    return {own[var].split("/", 1)[1]: value for var, value in numeric.items()}


def _cells_into_layers(groups: dict) -> dict:
    """A Keras RNN's variables live on its cell (`lstm/lstm_cell/kernel`, `layer_with_weights-0/cell/
    kernel`); canonically they belong to the layer (`lstm.weight_ih_l0`)."""
    out = {}
    for layer, members in groups.items():
        parent, _, last = layer.rpartition("/")
        if ("recurrent_kernel" in members and parent and (last == "cell" or last.endswith("_cell"))
                and parent not in groups):
            layer = parent
        out[layer] = members
    return out


def _tf2_variable_path(key: str, paths: dict | None) -> str:
    base = key[:-len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key
    if paths and key in paths:
        # Prefer a path through the model over the optimizer's alias of the same variable.
        for p in paths[key]:
            if p and p[0] not in ("optimizer", "save_counter"):
                return "/".join(p)
    return base


def _tf2_classify(key: str, var: str) -> str | None:
    if "/.OPTIMIZER_SLOT/" in key:
        return "optimizer slot"
    first = var.split("/", 1)[0]
    if first == "optimizer":
        return "optimizer state"
    if var == "save_counter":
        return "a training counter, not a weight: its value moves to non-tensor content extra['save_counter']"
    if not key.endswith(VALUE_SUFFIX):
        return "object attribute, not a variable"
    return None


def _keep_counter(ckpt: Checkpoint, var: str, t: LazyTensor | None) -> None:
    if var in _COUNTERS and t is not None and t.shape == () and t.dtype.startswith("int"):
        ckpt.extra[_COUNTERS[var]] = int(t.load().reshape(-1)[0])


def _apply_ema(numeric: dict, prefer_ema: bool, rep) -> None:
    shadows = [v for v in numeric if v.endswith("/" + EMA)]
    for s in shadows:
        raw = s[: -len(EMA) - 1]
        key, t = numeric.pop(s)
        if not prefer_ema:
            rep.add("dropped", key, "ExponentialMovingAverage shadow (--prefer-ema takes it)")
            continue
        if raw in numeric:
            rep.add("dropped", numeric[raw][0], "raw weights replaced by their EMA shadow (prefer_ema)")
        numeric[raw] = (key, t)


@dataclass
class NativeLayer:
    """One layer as a TF checkpoint holds it: its kind (names.py kinds, incl. pseudo kinds), native
    keys and shapes by leaf, and the canonical names it produced (by leaf for plain tensors)."""

    canon_layer: str
    kind: str
    keys: dict[str, str]              # leaf -> checkpoint key
    shapes: dict[str, tuple]          # leaf -> shape
    roles: list[str]                  # canonical roles produced by import_layer (layer 0 form: weight_ih_l0)
    plain: dict[str, str]             # leaf -> canonical name, for leaves kept as plain tensors
    layer_index: int = 0              # k of a MultiRNNCell's cell_k: its roles are weight_ih_l<k> ...


def _import_group(ckpt: Checkpoint, layer: str, members: dict, kinds: dict, forget_bias: float, strict: bool,
                  layers_out: list | None, stack: tuple[str, int] | None = None) -> bool:
    rep = ckpt.report
    canon_layer = layouts.module_path(layer) if layer else ""
    leaves = {names.normalize_leaf(leaf): t for leaf, (_, t) in members.items()}
    natives = {names.normalize_leaf(leaf): key for leaf, (key, _) in members.items()}
    if len(leaves) != len(members):       # e.g. both `weights` and `kernel`: keep them apart, as they are
        leaves = {leaf: t for leaf, (_, t) in members.items()}
        natives = {leaf: key for leaf, (key, _) in members.items()}
        kind = "tensor"
    else:
        kind = kinds.get(canon_layer) or kinds.get(layer)
        if not kind:
            kind, doubt = _infer_kind(layer, leaves)
            if doubt:
                rep.add("warning", canon_layer, doubt)
    if _TF1_GRU_SCOPE.search(layer) and kind == "linear":
        rep.add("warning", canon_layer, "TF1 GRUCell part, kept as a linear layer: the cell applies its reset "
                "gate before the recurrent matmul, torch's GRU after it, so there is no canonical GRU")
    known = _KIND_LEAVES.get(kind, {"kernel", "bias"}) if kind != "tensor" else set()
    mapped_leaves = {k: v for k, v in leaves.items() if k in known}
    rest = {k: v for k, v in leaves.items() if k not in known}
    mapped: list = []
    index = 0
    if mapped_leaves:
        try:
            mapped = names.import_layer(kind, mapped_leaves, attrs={"forget_bias": forget_bias})
        except ConversionError as e:
            if strict:
                raise ConversionError(f"layer {layer!r}: {e.message} (pass kinds={{{canon_layer!r}: KIND}} "
                                      "or -R strict=false)") from None
            rep.add("warning", canon_layer, f"kept as plain tensors: {e.message}")
            mapped, rest = [], leaves
    roles = [m.name for m in mapped]
    if stack and kind == "tf1_lstm" and mapped and not rest:
        # cell k of a stack is layer k of one canonical LSTM (torch's num_layers)
        canon_layer, index = layouts.module_path(stack[0]), stack[1]
        for m in mapped:
            m.name = m.name.replace("_l0", f"_l{index}")
    for m in mapped:
        _add(ckpt, canon_layer, m, natives, leaves)
    if mapped:
        _layer_info(ckpt, canon_layer, kind, mapped, leaves)
    if layers_out is not None:
        layers_out.append(NativeLayer(canon_layer, kind if mapped else "tensor",
                                      {k: natives[k] for k in (mapped_leaves if mapped else {})},
                                      {k: leaves[k].shape for k in leaves}, roles,
                                      {leaf: (f"{canon_layer}.{leaf}" if canon_layer else leaf) for leaf in rest},
                                      index))
        layers_out[-1].keys.update({k: natives[k] for k in rest})
    for leaf, t in rest.items():
        name = f"{canon_layer}.{leaf}" if canon_layer else leaf
        ckpt.add(name, t, TensorInfo(kind="tensor", role=leaf, layer=canon_layer, original_name=natives[leaf],
                                     original_dtype=t.dtype, original_shape=t.shape))
        if name != natives[leaf]:
            rep.renamed(natives[leaf], name)
    return kind == "batch_norm" and bool(mapped_leaves)


def _add(ckpt: Checkpoint, canon_layer: str, m: names.Mapped, natives: dict, leaves: dict) -> None:
    name = f"{canon_layer}.{m.name}" if canon_layer else m.name
    sub, _, role = name.rpartition(".")
    src = natives.get(m.source, "")
    native_t = leaves.get(m.source)
    info = TensorInfo(kind=m.kind, role=role, layer=sub, original_name=src or name,
                      original_dtype=native_t.dtype if native_t is not None else m.tensor.dtype,
                      original_layout=m.layout, original_shape=native_t.shape if native_t is not None else None)
    ckpt.add(name, m.tensor, info)
    for action, detail in m.events:
        ckpt.report.add(action, name, detail)
    if src:
        ckpt.report.renamed(src, name)


def _layer_info(ckpt: Checkpoint, layer: str, kind: str, mapped: list, leaves: dict) -> None:
    if kind == "separable_conv2d":
        dw = leaves["depthwise_kernel"].shape
        ckpt.layers[f"{layer}.depthwise"] = LayerInfo("depthwise_conv2d", {"groups": dw[2]})
        ckpt.layers[f"{layer}.pointwise"] = LayerInfo("conv2d", {})
    elif kind == "depthwise_conv2d":
        dw = leaves.get("depthwise_kernel", leaves.get("kernel")).shape
        ckpt.layers[layer] = LayerInfo("depthwise_conv2d", {"groups": dw[2]})
    elif kind == "batch_norm":
        ckpt.layers[layer] = LayerInfo("batch_norm", names.bn_attrs())
    else:
        ckpt.layers[layer] = LayerInfo(names.canonical_kind(kind), {})
