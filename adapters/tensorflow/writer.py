"""A canonical Checkpoint -> a TF checkpoint bundle: `write` names the variables (below) and
streams them into `prefix.data-00000-of-00001` (several shards with max_shard_size), then
`prefix.index` (bundle_write.py), and points the directory's `checkpoint` file at it.

Two ways to choose names:
- by rule (`export_by_rule`): each canonical layer `a.b` becomes the scope `a/b` (or the scope of
  the tensor's original TF name when it came from TF), its tensors the leaves names.export_layer
  gives (kernel, bias, gamma, ...; TF1 slim leaves `weights`/`biases` are kept when the source
  used them). A `<x>.depthwise` + `<x>.pointwise` pair is written as one separable conv `x`.
  LSTMs become one fused TF1 cell (`kernel` [in+h,4h] + `bias`, forget_bias subtracted) when they
  came from one, Keras-style `kernel`/`recurrent_kernel`/`bias` when they came from Keras, else
  as `rnn_style` says ("tf1" by default); a stacked LSTM (weight_ih_l1 ...) as TF1 cells becomes
  a MultiRNNCell: `<layer>/cell_<k>/basic_lstm_cell/{kernel,bias}`.
- after a template (`export_by_template`): a TF1 or TF2 checkpoint of the destination model. Its
  variables are read with the same rules, so its canonical names say which tensor fills which key;
  its kinds and shapes settle what a canonical tensor cannot say (depth multiplier, cell type).
  Entries derived from a filled weight follow it: ExponentialMovingAverage shadows get the new
  weights, optimizer slots (TF1 `w/Adam`, TF2 `.OPTIMIZER_SLOT`) zeros. Everything else that is not
  a weight (the TF2 object graph, save_counter, global_step, Keras 3 `optimizer/_variables/N`) is
  copied from the template unchanged. All of it is reported, and TensorFlow's loaders accept the
  result as they accept the template.

>>> outs, report = export_by_rule(ckpt)             # doctest: +SKIP
>>> [o.name for o in outs][:2]                       # doctest: +SKIP
['conv1/kernel', 'conv1/bias']
"""
from __future__ import annotations

import os
import re

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import Checkpoint, LazyTensor
from hubfmt.sdk import ConversionError, FormatError, OutputError
from hubfmt.sdk import Report
from hubfmt.sdk import flatten as flatten_order

from . import names
from .bundle import DT_STRING, TF_DTYPE_CODES, Bundle
from .bundle_write import OutTensor
from .objgraph import VALUE_SUFFIX
from .reader import EMA, SLOT_RE, NativeLayer, import_variables


def _is_state_file(path: str) -> bool:
    from .bundle import latest_from_state

    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if b"\x00" in head:
            return False
        return latest_from_state(path) is not None
    except (OSError, ValueError, FormatError):
        return False


def output_prefix(path: str) -> str:
    """The bundle prefix a destination path designates (`x.index` or `x.data-00000-of-00001` -> `x`;
    a directory -> `dir/model.ckpt`)."""
    path = os.fspath(path)
    if path.endswith(".index"):
        return path[:-6]
    shard = re.match(r"^(.*)\.data-\d{5}-of-\d{5}$", path)
    if shard:
        return shard.group(1)
    if os.path.isdir(path):
        return os.path.join(path, "model.ckpt")
    return path


def write(ckpt: Checkpoint, path, *, overwrite: bool = False, progress=None, restore_dtype: bool = True,
          template=None, max_shard_size: int | None = None, kinds: dict | None = None, rnn_style: str = "tf1",
          forget_bias: float = names.TF1_FORGET_BIAS, strict: bool = True, update_state: bool = True,
          flatten: str | None = None) -> Report:
    """Write `ckpt` as a TF checkpoint bundle at `path` (a prefix, `prefix.index` or a directory:
    `<dir>/model.ckpt`).

    template: a TF1/TF2 checkpoint of the destination model whose keys (and TF2 object graph) to
    follow; without one, names follow export_by_rule. max_shard_size: bytes per data shard;
    kinds: {layer: kind} overrides; rnn_style: "tf1" fused cell or "keras"; forget_bias: of the
    destination TF1 cell; strict: a tensor without a place is an error; update_state: write the
    directory's `checkpoint` file; flatten: "HxW" or "as-is" for a linear layer that looks fed by
    flattened conv features when the checkpoint does not record its map (flatten_rows).

    >>> write(ckpt, "export/model.ckpt", template="target/ckpt-1")   # doctest: +SKIP
    """
    from .bundle import open_bundle
    from .bundle_write import update_state_file, write_bundle

    path = os.fspath(path)
    prefix = output_prefix(path)
    if not os.path.isdir(os.path.dirname(os.path.abspath(prefix))):
        raise OutputError("output directory does not exist", os.path.dirname(os.path.abspath(prefix)))
    rows = flatten_rows(ckpt, flatten, "a TF checkpoint")
    if template is not None:
        tb = open_bundle(os.fspath(template))
        outs, rep = export_by_template(ckpt, tb, restore_dtype=restore_dtype, kinds=kinds, forget_bias=forget_bias,
                                       strict=strict, rows=rows)
    else:
        outs, rep = export_by_rule(ckpt, restore_dtype=restore_dtype, rnn_style=rnn_style, kinds=kinds,
                                   forget_bias=forget_bias, strict=strict, rows=rows)
    rep.events[:0] = rows.report.events
    if update_state:
        # Checked before anything is written: the state file is the one file beside the output
        # that hubfmt rewrites, so it must be a TF state file (or absent), never something else.
        state = os.path.join(os.path.dirname(os.path.abspath(prefix)), "checkpoint")
        if os.path.lexists(state) and not os.path.isfile(state):
            raise OutputError("a 'checkpoint' beside the output is not a file (a TF writer keeps its state file "
                              "there): move it, or -W update_state=false", state)
        if os.path.isfile(state) and not overwrite and not _is_state_file(state):
            raise OutputError("a file named 'checkpoint' beside the output is not a TF checkpoint state file: "
                              "--overwrite replaces it, -W update_state=false leaves it alone", state)
    n = write_bundle(prefix, outs, overwrite=overwrite, progress=progress, max_shard_size=max_shard_size)
    if update_state:
        existed = os.path.isfile(state)
        update_state_file(prefix)
        rep.stage = "write"
        rep.add("stored", "checkpoint", f"{'updated' if existed else 'wrote'} the directory's checkpoint state file "
                                        f"to name {os.path.basename(prefix)} (-W update_state=false does not)")
    rep.destination = prefix
    rep.tensors_out = len(outs)
    rep.bytes_out = n
    return rep


# TF1 slim leaf names worth keeping on export (Keras 3's private `_kernel` is not a TF1 name).
_TF1_ALIASES = {k for k in names.LEAF_ALIASES if not k.startswith("_")}


def _target_dtype(dtype: str, original: str, restore: bool, name: str, rep: Report) -> str:
    want = original if restore and original in TF_DTYPE_CODES else dtype
    if want not in TF_DTYPE_CODES:
        raise ConversionError(f"tensor {name!r}: dtype {want} cannot be stored in a TensorFlow checkpoint")
    if want != dtype:
        rep.add("cast", name, f"{dtype}->{want}")
    return want


def _groups(ckpt: Checkpoint, rep: Report) -> dict[str, dict[str, str]]:
    """Canonical layer -> {role: canonical name}, in checkpoint order; separable pairs merged."""
    groups: dict[str, dict[str, str]] = {}
    for name, e in ckpt.entries.items():
        if e.info.tied_to:
            # A bundle has no ties: the data is stored once, under the first name only.
            rep.add("dropped", name, f"tied to {e.info.tied_to}, stored once under that name (a checkpoint bundle holds no ties)")
            continue
        layer = e.info.layer if name.startswith(e.info.layer + ".") and e.info.layer else name.rpartition(".")[0]
        groups.setdefault(layer, {})[name[len(layer) + 1:] if layer else name] = name
    for layer in [g for g in groups if g.endswith(".depthwise")]:
        parent = layer[: -len(".depthwise")]
        pw = parent + ".pointwise"
        dw_kind = ckpt.entries[groups[layer].get("weight", "")].info.kind if "weight" in groups[layer] else ""
        pw_w = groups.get(pw, {}).get("weight")
        if (dw_kind == "depthwise_conv2d" and pw_w and ckpt.entries[pw_w].tensor.shape[2:] == (1, 1)
                and "bias" not in groups[layer] and parent not in groups):
            merged = {f"depthwise.{r}": n for r, n in groups.pop(layer).items()}
            merged.update({f"pointwise.{r}": n for r, n in groups.pop(pw).items()})
            groups[parent] = merged
    return groups


def _layer_kind(ckpt: Checkpoint, roles: dict[str, str], kinds: dict, layer: str, rnn_style: str) -> str:
    if layer in kinds:
        return kinds[layer]
    pseudo = names.kind_from_roles(roles)
    if pseudo:
        return pseudo
    infos = [ckpt.entries[n].info for n in roles.values()]
    kind = next((i.kind for i in infos if i.kind != "tensor"), "tensor")
    if kind == "lstm":
        wi, wh = roles.get("weight_ih_l0"), roles.get("weight_hh_l0")
        oi = ckpt.entries[wi].info.original_name if wi else ""
        oh = ckpt.entries[wh].info.original_name if wh else ""
        if oi and oi == oh:
            return "tf1_lstm"
        if "recurrent_kernel" in oh:        # a Keras LSTM (TF1 name or TF2 key)
            return "lstm"
        return "tf1_lstm" if rnn_style == "tf1" else "lstm"
    return kind


_TF_LEAVES = {"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance", "depthwise_kernel",
              "pointwise_kernel", "embeddings", "recurrent_kernel", *_TF1_ALIASES}


def _native_scope(ckpt: Checkpoint, layer: str, roles: dict[str, str]) -> str:
    """The TF scope of a canonical layer: from the source's names when they are TF1 variable names
    (`scope/kernel`; not TF2 object keys, not Keras h5 paths like `layers/dense/vars/0`)."""
    for name in roles.values():
        orig = ckpt.entries[name].info.original_name
        if orig.endswith("/" + EMA):
            orig = orig[: -len(EMA) - 1]
        scope, _, leaf = orig.rpartition("/")
        if scope and leaf in _TF_LEAVES and ".ATTRIBUTES" not in orig:
            return scope
    return layer.replace(".", "/")


def _leaf(ckpt: Checkpoint, m: names.Mapped, roles: dict[str, str]) -> str:
    """Keep the source's TF1 alias (weights/biases) of a leaf when it used one."""
    src = roles.get(m.source.split("+")[0])
    if src:
        orig_leaf = ckpt.entries[src].info.original_name.rpartition("/")[2]
        if orig_leaf in _TF1_ALIASES and names.LEAF_ALIASES[orig_leaf] == m.name:
            return orig_leaf
    return m.name


class FlattenRows(dict):
    """Linear layer -> (C, H, W) of the map whose C,H,W-ordered input rows are written in TF's
    H,W,C order; `report` says what was decided."""

    def __init__(self, rows: dict, report: Report):
        super().__init__(rows)
        self.report = report

    def apply(self, layer: str, canon: dict, rep: Report, name: str) -> None:
        if layer in self and "weight" in canon:
            c, h, w = self[layer]
            canon["weight"] = flatten_order.chw_to_hwc(canon["weight"], (c, h, w), name)
            rep.add("permuted", name, f"input rows CHW->HWC ({h}x{w}x{c} map, the order TF's Flatten of NHWC "
                                      "features gives)")


def flatten_rows(ckpt: Checkpoint, option, where: str) -> FlattenRows:
    """The linear layers whose rows go C,H,W -> H,W,C (a Dense after a Flatten in the channels-last
    destination): recorded by the checkpoint's reader (a .keras config, a permute rule), or
    decided by `option`; a layer that looks fed by flattened conv features and is neither is an
    error (hubfmt.sdk.flatten.channels_last_rows)."""
    rep = Report(stage="write")
    rows = flatten_order.channels_last_rows(ckpt, option, f"the destination ({where}) records no Flatten or its "
                                                          "shape", rep, "-W")
    return FlattenRows(rows, rep)


def export_by_rule(ckpt: Checkpoint, *, restore_dtype: bool = True, kinds: dict | None = None,
                   rnn_style: str = "tf1", forget_bias: float = names.TF1_FORGET_BIAS,
                   strict: bool = True, rows: FlattenRows | None = None) -> tuple[list[OutTensor], Report]:
    """Canonical -> TF variable names and layouts by rule (see module docstring); `rows`: linear
    layers whose input rows are permuted C,H,W -> H,W,C (flatten_rows; default: none)."""
    rep = Report(stage="write")
    kinds = kinds or {}
    outs: list[OutTensor] = []
    for layer, roles in _groups(ckpt, rep).items():
        kind = _layer_kind(ckpt, roles, kinds, layer, rnn_style)
        for scope, part in _cells(ckpt, layer, roles, kind):
            outs += _export_group(ckpt, layer, scope, part, kind, rep, restore_dtype, forget_bias, strict, rows)
    return outs, rep


_RNN_ROLE = re.compile(r"^((?:weight|bias)_(?:ih|hh))_l(\d+)$")


def _cells(ckpt: Checkpoint, layer: str, roles: dict[str, str], kind: str):
    """(TF scope, roles) per TF variable group of a canonical layer: one, or for a stacked LSTM
    (weight_ih_l0, weight_ih_l1, ...) written as TF1 cells, one MultiRNNCell cell per layer."""
    by_index: dict[int, dict[str, str]] = {}
    for role, name in roles.items():
        m = _RNN_ROLE.match(role)
        by_index.setdefault(int(m.group(2)) if m else 0, {})[f"{m.group(1)}_l0" if m else role] = name
    if kind != "tf1_lstm" or len(by_index) == 1:
        return [(_native_scope(ckpt, layer, roles), roles)]
    base = layer.replace(".", "/")
    out = []
    for k in sorted(by_index):
        part = by_index[k]
        scope = _native_scope(ckpt, layer, part)
        out.append((scope if scope != base else f"{base}/cell_{k}/basic_lstm_cell", part))
    return out


def _export_group(ckpt: Checkpoint, layer: str, scope: str, roles: dict[str, str], kind: str, rep: Report,
                  restore_dtype: bool, forget_bias: float, strict: bool, rows: FlattenRows | None) -> list[OutTensor]:
    outs = []
    canon = {r: ckpt.entries[n].tensor for r, n in roles.items()}
    if rows:
        rows.apply(layer, canon, rep, roles.get("weight", layer))
    if "num_batches_tracked" in canon:
        rep.add("dropped", roles["num_batches_tracked"], "torch-only batch counter")
        canon.pop("num_batches_tracked")
    _bn_warning(ckpt, layer, kind, rep)
    try:
        mapped = names.export_layer(kind, canon, attrs=_attrs(ckpt, layer, forget_bias)) if kind != "tensor" else None
    except ConversionError as e:
        if strict:
            raise ConversionError(f"layer {layer!r} ({kind}): {e.message}") from None
        rep.add("warning", layer, f"written as plain tensors: {e.message}")
        mapped = None
    if mapped is None:
        for role, name in roles.items():
            if role == "num_batches_tracked":
                continue
            e = ckpt.entries[name]
            native = f"{scope}/{role}" if layer else role
            outs.append(OutTensor(native, e.tensor, _target_dtype(e.tensor.dtype, e.info.original_dtype,
                                                                  restore_dtype, native, rep)))
            rep.renamed(name, native)
        return outs
    for m in mapped:
        info = ckpt.entries[roles[m.source.split("+")[0]]].info
        native = f"{scope}/{_leaf(ckpt, m, roles)}" if scope else m.name
        if kind == "embedding" and scope and info.original_name.removesuffix(":0") == scope:
            native = scope      # a Google-style table: the variable is the layer (reader._tables_as_layers)
        outs.append(OutTensor(native, m.tensor, _target_dtype(m.tensor.dtype, info.original_dtype,
                                                              restore_dtype, native, rep)))
        rep.renamed("+".join(roles[s] for s in m.source.split("+")), native)
        for action, detail in m.events:
            rep.add(action, native, detail)
    return outs


def _attrs(ckpt: Checkpoint, layer: str, forget_bias: float) -> dict:
    attrs = {"forget_bias": forget_bias}
    for sub in (layer, layer + ".depthwise"):
        li = ckpt.layers.get(sub)
        if li and li.kind == "depthwise_conv2d" and li.attrs.get("groups"):
            attrs["groups"] = li.attrs["groups"]
    return attrs


def _bn_warning(ckpt: Checkpoint, layer: str, kind: str, rep: Report) -> None:
    li = ckpt.layers.get(layer)
    if kind != "batch_norm" or li is None:
        return
    eps = li.attrs.get("eps")
    if eps is not None and abs(float(eps) - names.KERAS_BN_EPS) > 1e-12:
        rep.add("warning", layer, f"batch-norm eps {eps:g} is not stored in TF checkpoints: build the TF layer "
                f"with epsilon={eps:g} (TF default 1e-3)")


def export_by_template(ckpt: Checkpoint, template: Bundle, *, restore_dtype: bool = True,
                       forget_bias: float = names.TF1_FORGET_BIAS, kinds: dict | None = None,
                       strict: bool = True, rows: FlattenRows | None = None) -> tuple[list[OutTensor], Report]:
    """Fill a template checkpoint's keys from `ckpt` by canonical name (see module docstring);
    `rows` as for export_by_rule."""
    from .objgraph import OBJECT_GRAPH_KEY, variable_full_names, variable_paths

    rep = Report(stage="write")
    numeric = [(k, template.tensor(k) if e.dtype is not None else e.dtype_name)
               for k, e in template.entries.items()]
    paths = full_names = None
    if OBJECT_GRAPH_KEY in template.entries:
        graph = template.strings(OBJECT_GRAPH_KEY)[0]
        paths, full_names = variable_paths(graph), variable_full_names(graph)
    layers: list[NativeLayer] = []
    # Reading the template with the reader's rules gives its layers, kinds, keys and shapes.
    import_variables(numeric, paths=paths, full_names=full_names, layers_out=layers, forget_bias=forget_bias,
                     kinds=kinds, strict=strict)
    used: set[str] = set()
    filled: dict[str, OutTensor] = {}
    problems = []
    for nl in layers:
        _fill_layer(ckpt, nl, template, filled, used, rep, problems, restore_dtype, forget_bias, rows)
    for key, e in template.entries.items():
        if key in filled:
            continue
        derived = _derived_from(key, filled)
        if derived and e.dtype is not None and tuple(filled[derived[0]].tensor.shape) == tuple(e.shape):
            base, how = derived
            if how == "ema":
                filled[key] = OutTensor(key, filled[base].tensor, e.dtype if restore_dtype else None)
                rep.add("created", key, f"EMA shadow of {base}: set to the new weights")
            else:
                z = LazyTensor(e.shape, e.dtype, lambda e=e: np.zeros(e.shape, dtypes.storage_dtype(e.dtype)))
                filled[key] = OutTensor(key, z)
                rep.add("created", key, f"optimizer slot of {base}: reset to zeros (the template's belongs to other weights)")
            continue
        if e.tf_dtype == DT_STRING:
            filled[key] = OutTensor(key, strings=template.strings(key), shape=e.shape)
        elif e.dtype is not None and not e.sliced:
            filled[key] = OutTensor(key, template.tensor(key))
        else:
            problems.append(f"{key}: {e.dtype_name} entry cannot be copied")
            continue
        rep.add("created", key, "copied from the template (not a weight)")
    for name in ckpt.entries:
        if name not in used and not ckpt.entries[name].info.tied_to:
            if ckpt.entries[name].info.role == "num_batches_tracked":
                rep.add("dropped", name, "torch-only batch counter")
            else:
                rep.add("unexpected", name, "not in the template")
                problems.append(f"{name}: not in the template")
    if problems and strict:
        raise ConversionError(f"checkpoint does not fit the template ({len(problems)} problems): "
                              + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
    return [filled[k] for k in template.entries if k in filled], rep


def _derived_from(key: str, filled: dict) -> tuple[str, str] | None:
    """(weight key, "ema" or "slot") when a template entry belongs to a weight just filled: its
    ExponentialMovingAverage shadow or an optimizer slot (TF1 `w/Adam`, TF2 `.OPTIMIZER_SLOT`)."""
    if key.endswith("/" + EMA) and key[: -len(EMA) - 1] in filled:
        return key[: -len(EMA) - 1], "ema"
    parent, _, leaf = key.rpartition("/")
    if SLOT_RE.match(leaf) and parent in filled:
        return parent, "slot"
    if "/.OPTIMIZER_SLOT/" in key:
        base = key.split("/.OPTIMIZER_SLOT/")[0] + VALUE_SUFFIX
        if base in filled:
            return base, "slot"
    return None


def _fill_layer(ckpt: Checkpoint, nl: NativeLayer, template: Bundle, filled: dict, used: set, rep: Report,
                problems: list, restore_dtype: bool, forget_bias: float, rows: FlattenRows | None = None) -> None:
    def full(role):
        if nl.layer_index:
            role = role.replace("_l0", f"_l{nl.layer_index}")
        return f"{nl.canon_layer}.{role}" if nl.canon_layer else role
    for leaf, name in nl.plain.items():
        key = nl.keys[leaf]
        _put(ckpt, name, key, ckpt.entries[name].tensor if name in ckpt.entries else None, template, filled,
             used, rep, problems, restore_dtype, [name])
    if not nl.roles:
        return
    canon = {r: ckpt.entries[full(r)].tensor for r in nl.roles if full(r) in ckpt.entries}
    missing = [full(r) for r in nl.roles if full(r) not in ckpt.entries and not _optional(nl.kind, r)]
    for m in missing:
        rep.add("missing", m, "the template expects it")
        problems.append(f"{m}: missing")
    if missing:
        return
    if rows:
        rows.apply(nl.canon_layer, canon, rep, full("weight"))
    try:
        mapped = names.export_layer(nl.kind, canon, attrs={"forget_bias": forget_bias}, native_shapes=nl.shapes)
    except ConversionError as e:
        problems.append(f"{nl.canon_layer}: {e.message}")
        rep.add("mismatch", nl.canon_layer, e.message)
        return
    for m in mapped:
        key = nl.keys.get(m.name)
        if key is None and m.name == "depthwise_kernel":      # Keras 3 calls it `kernel`
            key = nl.keys.get("kernel")
        if key is None:
            rep.add("dropped", full(m.source.split("+")[0]), f"the template has no {m.name} here")
            continue
        _put(ckpt, full(m.source.split("+")[0]), key, m.tensor, template, filled, used, rep, problems,
             restore_dtype, [full(s) for s in m.source.split("+")], m.events)


def _optional(kind: str, role: str) -> bool:
    # Canonical tensors the template's reader created (a single-bias source's bias_hh): a source
    # without them is complete.
    return role.startswith("bias_hh")


def _put(ckpt, name, key, tensor: LazyTensor | None, template: Bundle, filled, used, rep, problems,
         restore_dtype, sources, events=()) -> None:
    te = template.entries[key]
    if tensor is None:
        rep.add("missing", name, f"the template expects it (for {key})")
        problems.append(f"{name}: missing")
        return
    if tuple(tensor.shape) != tuple(te.shape):
        rep.add("mismatch", name, f"shape {list(tensor.shape)} vs template {key} {list(te.shape)}")
        problems.append(f"{name}: shape {list(tensor.shape)} vs {list(te.shape)}")
        return
    dtype = te.dtype if restore_dtype and te.dtype else tensor.dtype
    if dtype != tensor.dtype:
        rep.add("cast", key, f"{tensor.dtype}->{dtype} (template dtype)")
    filled[key] = OutTensor(key, tensor, dtype)
    used.update(s for s in sources if s in ckpt.entries)
    rep.renamed("+".join(sources), key)
    for action, detail in events:
        rep.add(action, key, detail)
