"""A live Keras 3 model's weights, from and into the model (needs Keras; imported here only).

Layers are named as the file reader names them: Functional/Sequential list items (and nested
models) by layer name, a subclassed model's layers by attribute name (`blocks.<layer name>` for
a list attribute). Each weight-owning layer's variables, in Keras's saving order, are one `Owner`
(from_model) or one `Target` (to_model), so both directions share the file code's rules.
"""
from __future__ import annotations

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import Checkpoint, LazyTensor, SourceInfo
from hubfmt.sdk import flatten as flatten_order
from hubfmt.sdk import ConversionError, MissingFrameworkError
from hubfmt.sdk import Report

from . import plan
from .config import flatten_inputs
from .reader import canonical_flatten_order
from .formats import FRAMEWORK, PIP_NAME
from .names import KNOWN, MHA_SUBLAYERS
from .owners import Owner, add_owner


def _keras():
    try:
        import keras
    except ImportError:
        raise MissingFrameworkError("keras", PIP_NAME, "a Keras model's weights") from None
    return keras


def _class_of(layer) -> str:
    """The first class in the layer's MRO this adapter knows the variable order of ('' if none)."""
    for c in type(layer).__mro__:
        if c.__name__ in KNOWN:
            return c.__name__
    return ""


def _config(layer) -> dict:
    try:
        cfg = layer.get_config()
    except Exception:   # noqa: BLE001 - custom layers may not implement get_config
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _own(layer) -> list:
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def walk(model) -> list[tuple[str, object, str, list, str]]:
    """(module path, layer, class name, variables in saving order, suffix) of every layer owning
    weights; suffix "_reverse" marks a Bidirectional's backward layer (one canonical layer)."""
    keras = _keras()
    out: list = []
    seen: set[int] = set()

    def attr_names(obj) -> dict[int, str]:
        names = {}
        for k, v in vars(obj).items():
            if k.startswith("_"):
                continue
            if isinstance(v, keras.layers.Layer):
                names.setdefault(id(v), k)
            elif isinstance(v, (list, tuple)):
                for item in v:
                    if isinstance(item, keras.layers.Layer):
                        names.setdefault(id(item), f"{k}.{item.name}")
        return names

    def visit(layer, module, suffix=""):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        cls = _class_of(layer)
        if cls:
            if layer.weights:
                out.append((module, layer, cls, list(layer.weights), suffix))
            return
        if any(c.__name__ == "MultiHeadAttention" for c in type(layer).__mro__):
            # Its projections by the names Keras saves them under (`_query_dense` -> query_dense),
            # as the file reader names them; anything else it owns (a gate) is walked as usual.
            for item, cls_name in MHA_SUBLAYERS.items():
                sub = getattr(layer, "_" + item, None)
                if sub is not None and sub.weights:
                    seen.add(id(sub))
                    out.append((_join(module, item), sub, cls_name, list(sub.weights), ""))
        elif any(c.__name__ == "Bidirectional" for c in type(layer).__mro__):
            visit(layer.forward_layer, module)
            visit(layer.backward_layer, module, "_reverse")
            return
        own = _own(layer)
        if own:
            out.append((module, layer, "", own, ""))
        # As Keras's saving walk: Functional/Sequential save their `layers` list, others attributes.
        if _obj_type(layer) in ("Functional", "Sequential"):
            for sub in layer.layers:
                visit(sub, _join(module, sub.name))
            return
        names = attr_names(layer)
        for sub in getattr(layer, "_layers", []):
            visit(sub, _join(module, names.get(id(sub), sub.name)))

    visit(model, "")
    return out


def _obj_type(layer) -> str:
    try:
        return layer._obj_type()
    except Exception:   # noqa: BLE001 - not a KerasSaveable
        return ""


def _join(prefix: str, seg: str) -> str:
    return f"{prefix}.{seg}" if prefix else seg


def _as_lazy(v) -> LazyTensor:
    a = np.asarray(v.numpy())
    if str(a.dtype) == "bfloat16":
        return LazyTensor.from_array(np.ascontiguousarray(a).view(np.uint16), "bfloat16")
    return LazyTensor.from_array(a)


def from_model(model, *, strict: bool = True, flatten: str | None = None) -> Checkpoint:
    """A built Keras model's weights as a canonical Checkpoint (data copied out of the model).

    >>> ckpt = from_model(keras.applications.MobileNetV2(weights=None))   # doctest: +SKIP
    >>> ckpt["Conv1.weight"].tensor.shape
    (32, 3, 3, 3)
    """
    keras = _keras()
    if not getattr(model, "built", True):
        raise ConversionError("the Keras model is not built: call it on data or model.build(shape) first")
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    ckpt.source = SourceInfo(FRAMEWORK, f"keras {keras.__version__}", "", "keras-model")
    dense_names = {}
    for module, layer, cls, variables, suffix in walk(model):
        config = _config(layer) if cls else {}
        names = [getattr(v, "path", None) or v.name for v in variables]
        add_owner(ckpt, Owner(module, cls, config, names, [_as_lazy(v) for v in variables],
                              f"layer {module or model.name}", suffix), strict=strict, path=None)
        dense_names[module] = layer.name
    config = _model_config(keras, model)
    canonical_flatten_order(ckpt, flatten_inputs(config) if config else None, dense_names, flatten,
                            f"model {model.name}")
    ckpt.report.tensors_in = len(ckpt)
    return ckpt


def to_model(ckpt: Checkpoint, model, *, strict: bool = True, flatten: str | None = None) -> Report:
    """Assign `ckpt` to a built Keras model, layer by layer (layers matched by module path, else by
    order and kind). strict: every model weight assigned and every checkpoint tensor used, else a
    ConversionError listing what is missing or left over; strict=False assigns what matches.

    >>> report = to_model(hubfmt.read("twin.safetensors"), keras_model)   # doctest: +SKIP
    """
    if not getattr(model, "built", True):
        raise ConversionError("the Keras model is not built: call it on data or model.build(shape) first")
    flatten_order.check_decided(ckpt)     # a Dense's row order after a Flatten its reader could not tell
    report = Report(stage="write")
    layers = walk(model)
    targets, variables = [], {}
    for module, layer, cls, vs, suffix in layers:
        config = _config(layer) if cls else {}
        t = plan.Target(f"model:{module}{suffix}", module, cls, config, [tuple(v.shape) for v in vs],
                              layer.name, suffix=suffix)
        targets.append(t)
        variables[id(t)] = vs
    canon = plan.canonical_layers(ckpt, report, strict=strict)
    canon = plan.merge_separable(canon, ckpt, {t.module for t in targets if t.class_name == "SeparableConv2D"})
    pairs = plan.match(canon, targets, report, strict=strict)
    plan.attr_warnings(ckpt, pairs, report)
    rows = plan.flatten_rows(ckpt, pairs, _model_config(_keras(), model) or None, flatten, report, f"model {model.name}")
    assigned = 0
    for target, i, src_name, tensor, events in plan.exports(ckpt, pairs, rows):
        var = variables[id(target)][i]
        value = tensor.load()
        if tensor.dtype == "bfloat16":
            value = dtypes.convert(value, "bfloat16", "float32")
        var.assign(value.astype(np.dtype(_np_dtype(var))))
        dest = getattr(var, "path", None) or var.name
        report.renamed(src_name, dest)
        for action, detail in events:
            report.add(action, dest, detail)
        assigned += 1
    report.tensors_in = len(ckpt)
    report.tensors_out = assigned
    return report


def _model_config(keras, model) -> dict:
    """The model's config as a .keras archive's config.json holds it (with each layer's
    build_config: a Flatten's input shape); {} when the model cannot serialize itself."""
    try:
        config = keras.saving.serialize_keras_object(model)
    except Exception:   # noqa: BLE001 - a custom object without get_config: no config, as a bare file
        return {}
    if not isinstance(config, dict) or not isinstance((config.get("config") or {}).get("layers"), list):
        return {}       # a subclassed model: no layer graph to say what feeds a Dense
    return config


def _np_dtype(var) -> str:
    dt = str(getattr(var, "dtype", "float32"))
    return "float32" if dt == "bfloat16" else dt
