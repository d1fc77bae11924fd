"""Legacy Keras HDF5 weights (Keras 2 `save_weights("x.h5")` / `model.save("x.h5")`, and Keras 3's
legacy `.h5` saving), read without Keras.

Unlike Keras 3's positional `vars/N`, these files name their variables: the weights group (the
root, or `model_weights` in a full-model file) lists `layer_names`; each layer's group lists
`weight_names` ("conv/kernel:0", "lstm/lstm_cell/recurrent_kernel:0", "head/d1/bias:0") and holds a
dataset at each of those paths. The class of each layer comes from the `model_config` attribute
when the file has one, else from the leaf names and shapes. Each scope becomes a VarGroup in the
class's Keras 3 variable order, so the Keras 3 rules (keras_classes, keras_import) apply unchanged.
"""
from __future__ import annotations

import json

from hubfmt.sdk import FormatError

from .store import VarGroup, dataset_var

_RNN_CELL_SUFFIX = "_cell"
# Keras 3 variable order of each class, by leaf (the subset present is stored in this order).
_ORDER = ("kernel", "depthwise_kernel", "pointwise_kernel", "recurrent_kernel", "embeddings", "bias",
          "gamma", "beta", "moving_mean", "moving_variance")


def is_legacy(h5) -> bool:
    root = h5["model_weights"] if "model_weights" in h5 else h5
    return "layer_names" in root.attrs


def _strings(value) -> list[str]:
    out = []
    for v in list(value) if value is not None else []:
        out.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
    return out


def _configs(h5, path: str) -> dict[str, dict]:
    """Layer name path ('head/d1') -> {'class_name', 'config'} from the model_config attribute."""
    raw = h5.attrs.get("model_config")
    if raw is None:
        return {}
    try:
        doc = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"model_config attribute is not valid JSON: {e}", path) from None
    out: dict[str, dict] = {}

    def visit(entry, prefix):
        if not isinstance(entry, dict):
            return
        cfg = entry.get("config")
        layers = cfg.get("layers") if isinstance(cfg, dict) else None
        if not isinstance(layers, list):
            return
        for e in layers:
            if isinstance(e, dict) and isinstance(e.get("config"), dict) and isinstance(e["config"].get("name"), str):
                p = f"{prefix}{e['config']['name']}"
                out[p] = e
                visit(e, p + "/")
    visit(doc, "")
    return out


def _class_from_leaves(leaves: dict[str, tuple]) -> tuple[str, str]:
    """(Keras class, warning) for a scope's leaves {leaf: shape}; ('', '') when unknown."""
    have = set(leaves)
    if {"depthwise_kernel", "pointwise_kernel"} <= have:
        return "SeparableConv2D", ""
    if "depthwise_kernel" in have:
        return "DepthwiseConv2D", ""
    if {"kernel", "recurrent_kernel"} <= have:
        h, gh = leaves["recurrent_kernel"] if len(leaves["recurrent_kernel"]) == 2 else (0, -1)
        return {4 * h: "LSTM", 3 * h: "GRU", h: "SimpleRNN"}.get(gh, ""), ""
    if have == {"embeddings"}:
        return "Embedding", ""
    if {"moving_mean", "moving_variance"} <= have:
        return "BatchNormalization", ""
    if have and have <= {"gamma", "beta"}:
        return "LayerNormalization", "gamma/beta without model_config: taken as LayerNormalization"
    if "kernel" in have and have <= {"kernel", "bias"}:
        k = leaves["kernel"]
        if len(k) == 2:
            return "Dense", ""
        if len(k) in (3, 4, 5):
            d = len(k) - 2
            b = leaves.get("bias")
            if b and b[0] == k[-2] and b[0] != k[-1]:
                return f"Conv{d}DTranspose", ""
            warn = "" if b and b[0] == k[-1] and b[0] != k[-2] else \
                f"kernel {list(k)} could be a Conv{d}D or a Conv{d}DTranspose: taken as Conv{d}D (no model_config)"
            return f"Conv{d}D", warn
    return "", ""


def scan_legacy(h5, path: str, start: int | None, limit: int) -> tuple[list[VarGroup], list[str]]:
    """(VarGroups in file order, warnings) of a legacy Keras HDF5 weights file."""
    root = h5["model_weights"] if "model_weights" in h5 else h5
    root_path = "model_weights/" if "model_weights" in h5 else ""
    configs = _configs(h5, path)
    groups: list[VarGroup] = []
    warnings: list[str] = []
    for lname in _strings(root.attrs.get("layer_names")):
        if lname not in root:
            raise FormatError(f"layer_names lists {lname!r}, which the file has no group for", path)
        g = root[lname]
        scopes: dict[str, dict[str, object]] = {}
        for wname in _strings(g.attrs.get("weight_names")):
            ds = g.get(wname)
            where = f"{root_path}{lname}/{wname}"
            if ds is None or not hasattr(ds, "shape"):
                raise FormatError(f"weight_names lists {wname!r}, which is not a dataset at {where}", path)
            name = wname[:-2] if wname.endswith(":0") else wname
            scope, _, leaf = name.rpartition("/")
            scopes.setdefault(scope, {})[leaf] = dataset_var(ds, where, path, start, limit)
        for scope, variables in scopes.items():
            segs = scope.split("/") if scope else [lname]
            entry = configs.get("/".join(segs)) or configs.get("/".join(segs[:-1]))
            cls = entry.get("class_name", "") if isinstance(entry, dict) else ""
            cfg = dict(entry.get("config") or {}) if isinstance(entry, dict) else {}
            if segs[-1].endswith(_RNN_CELL_SUFFIX) and len(segs) > 1:
                segs = segs[:-1]        # an RNN's cell: its variables are the layer's
            leaves = {leaf: v.shape for leaf, v in variables.items()}
            if not cls:
                cls, warn = _class_from_leaves(leaves)
                if warn:
                    warnings.append(f"{'.'.join(segs)}: {warn}")
            # The Keras 3 order of the leaves present; flags from which leaves are stored.
            order = [leaf for leaf in _ORDER if leaf in variables]
            extra = [leaf for leaf in variables if leaf not in _ORDER]
            if extra:
                cls = ""    # not a layout this adapter knows: keep its variables by position
            cfg.update({"use_bias": "bias" in variables, "scale": "gamma" in variables,
                        "center": "beta" in variables})
            vg = VarGroup(f"{root_path}{lname}", f"{root_path}{lname}/{scope}", ".".join(segs), segs[-1], cls, cfg)
            vg.vars = [variables[leaf] for leaf in order + extra]
            groups.append(vg)
    return groups, warnings
