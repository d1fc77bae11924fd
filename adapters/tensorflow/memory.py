"""In-memory TensorFlow variables, from and into the model (needs TensorFlow; imported here only):
a {name: tf.Variable} dict (TF1 names such as 'conv1/kernel'), a list of variables or a tf.Module.
Keras models are the keras adapter's (hubfmt.adapters.keras.from_model / to_model)."""
from __future__ import annotations

from hubfmt.sdk import Checkpoint, ConversionError, LazyTensor, MissingFrameworkError, Report, SourceInfo, dtypes
from hubfmt.sdk import flatten as flatten_order

from .formats import FRAMEWORK, PIP_NAME
from .reader import decide_flatten_rows, import_variables
from .writer import export_by_rule, flatten_rows


def _refuse_keras(model) -> None:
    try:
        import keras
    except ImportError:
        return
    if isinstance(model, keras.layers.Layer):
        raise ConversionError("a Keras model: use the keras adapter (hubfmt.adapters.keras.from_model / to_model), "
                              "which names its weights as Keras files do")


def _variables(model) -> dict:
    """name -> tf.Variable for a {name: variable} dict, a list of variables or a tf.Module."""
    if isinstance(model, dict):
        return {(k[:-2] if k.endswith(":0") else k): v for k, v in model.items()}
    if hasattr(model, "variables") and not isinstance(model, (list, tuple)):
        model = list(model.variables)
    out = {}
    for v in model:
        name = v.name[:-2] if v.name.endswith(":0") else v.name
        if name in out:
            raise ConversionError(f"two variables are named {name!r}: pass a {{name: variable}} dict")
        out[name] = v
    return out


def _require_tf():
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingFrameworkError("tensorflow", PIP_NAME, "an in-memory TensorFlow model") from None
    return tf


def from_model(model, **options) -> Checkpoint:
    """Canonical Checkpoint of in-memory TF variables (options: those of read_variables:
    prefer_ema, kinds, forget_bias, strict; and flatten, as `read` takes it).

    >>> ckpt = from_model({"dense/kernel": tf.Variable(np.ones((3, 4)))})   # doctest: +SKIP
    """
    tf = _require_tf()
    _refuse_keras(model)
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    ckpt.source = SourceInfo(FRAMEWORK, tf.__version__, "", "tf-variables")
    variables = []
    for name, v in _variables(model).items():
        arr = v.numpy()
        variables.append((name, LazyTensor.from_array(arr) if arr.dtype.kind in "fiucb" else None))
    flatten = options.pop("flatten", None)
    import_variables(variables, ckpt=ckpt, **options)
    decide_flatten_rows(ckpt, flatten, "TF variables")
    return ckpt


def to_model(ckpt: Checkpoint, model, *, strict: bool = True, flatten: str | None = None) -> Report:
    """Assign `ckpt` to in-memory TF variables (names by the export rules, dtypes of the variables).
    strict: every variable must be filled and every tensor used, else ConversionError. flatten:
    "HxW" or "as-is" for a linear layer that looks fed by flattened conv features (variables do
    not show the map's shape; writer.flatten_rows).

    >>> to_model(ckpt, {"dense/kernel": var_k, "dense/bias": var_b})    # doctest: +SKIP
    """
    tf = _require_tf()
    _refuse_keras(model)
    variables = _variables(model)
    flatten_order.check_decided(ckpt)     # a Dense's row order after a Flatten its reader could not tell
    rows = flatten_rows(ckpt, flatten, "TF variables")
    outs, rep = export_by_rule(ckpt, restore_dtype=False, strict=strict, rows=rows)
    rep.events[:0] = rows.report.events
    by_name = {o.name: o for o in outs}
    problems = []
    for name, v in variables.items():
        o = by_name.get(name)
        if o is None:
            rep.add("missing", name, "variable not in the checkpoint")
            problems.append(name)
            continue
        if tuple(o.tensor.shape) != tuple(v.shape):
            rep.add("mismatch", name, f"shape {list(o.tensor.shape)} vs variable {list(v.shape)}")
            problems.append(name)
            continue
        arr = o.tensor.load()
        if o.tensor.dtype == "bfloat16":
            arr = dtypes.convert(arr, "bfloat16", "float32")
        v.assign(tf.constant(arr, dtype=v.dtype))
        rep.add("matched", name)
    for name in by_name.keys() - variables.keys():
        rep.add("unexpected", name, "no such variable in the model")
        problems.append(name)
    if problems and strict:
        raise ConversionError(f"checkpoint does not fit the model ({len(problems)} problems): {', '.join(problems[:5])}")
    rep.tensors_out = len(variables) - len([p for p in problems if p in variables])
    return rep
