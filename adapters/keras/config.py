"""What a Keras model config (config.json, or a legacy file's model_config) tells the weights
reader: the h5 path Keras gives each layer of a Functional/Sequential model, and which Dense
layers follow a Flatten."""
from __future__ import annotations

import re

# Container-model classes: their `layers` list is saved as items named by class.
MODEL_CLASSES = ("Functional", "Sequential", "Model")


def snake_case(class_name: str) -> str:
    """The name Keras gives a list item of this class in a weights file: 'Conv2DTranspose' ->
    'conv2d_transpose', 'BatchNormalization' -> 'batch_normalization', 'SimpleRNN' -> 'simple_rnn'."""
    s = re.sub(r"\W+", "", class_name)
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", s)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def unique_names(class_names) -> list[str]:
    """Keras's item names for a list of objects of these classes, in order (dense, dense_1, ...)."""
    used: dict[str, int] = {}
    out = []
    for c in class_names:
        base = snake_case(c)
        if base in used:
            used[base] += 1
            out.append(f"{base}_{used[base]}")
        else:
            used[base] = 0
            out.append(base)
    return out


def config_by_path(config: dict | None) -> dict[str, dict]:
    """h5 object path -> layer config entry ({"class_name", "config", ...}), by replaying how Keras
    names the items of Functional/Sequential `layers` lists (Sequential leaves out its InputLayer)."""
    out: dict[str, dict] = {}

    def visit(entry, prefix):
        if not isinstance(entry, dict):
            return
        cls = entry.get("class_name")
        inner = entry.get("config")
        if cls not in MODEL_CLASSES or not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
            return
        items = [e for e in inner["layers"] if isinstance(e, dict) and isinstance(e.get("class_name"), str)]
        if cls == "Sequential":
            items = [e for e in items if e["class_name"] != "InputLayer"]
        for e, name in zip(items, unique_names(e["class_name"] for e in items), strict=True):
            p = f"{prefix}layers/{name}"
            out[p] = e
            visit(e, p + "/")

    if config:
        out[""] = config
        visit(config, "")
    return out


def _histories(node) -> list[str]:
    """Layer names a Functional layer's inbound_nodes refer to (their `keras_history` entries)."""
    out = []
    if isinstance(node, dict):
        h = node.get("keras_history")
        if isinstance(h, list) and h and isinstance(h[0], str):
            out.append(h[0])
        for v in node.values():
            out += _histories(v)
    elif isinstance(node, list):
        for v in node:
            out += _histories(v)
    return out


def dense_after_flatten(config: dict | None) -> list[str]:
    """Names of Dense layers fed by a Flatten: Keras flattens NHWC, a torch twin NCHW, so their
    weight rows are in another order (a layout no tensor transform can see)."""
    found = []

    def visit(entry):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            return
        items = [e for e in entry["config"].get("layers") or [] if isinstance(e, dict)]
        classes = {(e.get("config") or {}).get("name"): e.get("class_name") for e in items}
        for i, e in enumerate(items):
            if e.get("class_name") == "Dense":
                inputs = _histories(e.get("inbound_nodes")) if "inbound_nodes" in e else \
                    [(items[i - 1].get("config") or {}).get("name")] if i else []
                if any(classes.get(n) == "Flatten" for n in inputs):
                    found.append((e.get("config") or {}).get("name"))
            visit(e)
    visit(config)
    return [n for n in found if isinstance(n, str)]
