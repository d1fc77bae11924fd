"""TensorFlow adapter: TF1 name-based and TF2 object-based checkpoint bundles (this package, no
TensorFlow needed), Keras 3 `.weights.h5` / `.keras` files and Keras models (keras_h5).

Checkpoint bundles are named by their prefix: `read` accepts the prefix, `prefix.index`,
`prefix.meta` (ignored: weights come from the bundle) or a directory with a `checkpoint` state
file. `write` takes a prefix or `prefix.index` (or a directory: `<dir>/model.ckpt`), writes
`prefix.data-00000-of-00001` (several shards with max_shard_size) then `prefix.index`, and points
the directory's `checkpoint` file at it.

>>> from hubfmt.adapters import tensorflow as tfa
>>> ckpt = tfa.read("train/model.ckpt-1000", prefer_ema=True)         # doctest: +SKIP
>>> tfa.write(ckpt, "export/model.ckpt", template="target/ckpt-1")   # doctest: +SKIP
"""
from __future__ import annotations

import os

from hubfmt.sdk import Checkpoint, SourceInfo
from hubfmt.sdk import ConversionError, FormatError, MissingFrameworkError, OutputError
from hubfmt.sdk import Report

from .formats import BUNDLE, FORMATS  # noqa: F401  (re-exported)

NAME = "tensorflow"
FRAMEWORK = "tensorflow"
FRAMEWORK_MODULE = "tensorflow"
PIP_NAME = "tensorflow-cpu"

BUNDLE_FORMAT = BUNDLE
_KERAS_SUFFIXES = (".weights.h5", ".keras", ".h5")


def _keras():
    from . import keras_h5
    return keras_h5


def sniff(path) -> str | None:
    """'tf-checkpoint' when `path` designates a checkpoint bundle, a Keras format name for Keras
    files, else None. Cheap: reads the index's last 8 bytes / the file's magic."""
    from .bundle import is_bundle

    path = os.fspath(path)
    if is_bundle(path):
        return BUNDLE_FORMAT.name
    if os.path.isfile(path):
        try:
            return _keras().sniff(path)
        except ImportError:
            return None
    return None


def read(path, **options) -> Checkpoint:
    """A TF checkpoint bundle (or Keras file) as a canonical, lazy Checkpoint.

    Bundle options: prefer_ema (take ExponentialMovingAverage shadows), kinds ({layer: kind}
    overrides of the inferred kinds), forget_bias (of TF1 LSTM cells, default 1.0), strict
    (default True: unmappable layers raise), verify_data (check each tensor's CRC on load).

    >>> ckpt = read("model.ckpt")          # doctest: +SKIP
    """
    from .bundle import is_bundle

    path = os.fspath(path)
    # By content, not suffix: Keras files are also saved as *.hdf5 or with no suffix at all.
    if os.path.isfile(path) and not is_bundle(path) and _keras().sniff(path):
        return _keras().read(path, **options)
    from hubfmt.sdk import protowire

    from .bundle import open_bundle
    from .objgraph import OBJECT_GRAPH_KEY, variable_full_names, variable_paths
    from .tfimport import import_variables

    bundle = open_bundle(path, verify_data=options.get("verify_checksums", True))
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
    opts = {k: v for k, v in options.items() if k in ("prefer_ema", "kinds", "forget_bias", "strict")}
    return import_variables(variables, paths=paths, full_names=full_names, ckpt=ckpt, **opts)


def output_prefix(path: str) -> str:
    """The bundle prefix a destination path designates (`x.index` or `x.data-00000-of-00001` -> `x`;
    a directory -> `dir/model.ckpt`)."""
    import re

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
          template=None, **options) -> Report:
    """Write `ckpt` as a TF checkpoint bundle (or a Keras file, by suffix).

    template: a TF1/TF2 checkpoint of the destination model whose keys (and TF2 object graph) to
    follow; without one, names follow the rules of tfexport.export_by_rule. Options:
    max_shard_size (bytes per data shard), kinds, rnn_style ("tf1" fused cell or "keras"),
    forget_bias (of the destination TF1 cell, default 1.0), strict, update_state (default True:
    write the directory's `checkpoint` file).

    >>> write(ckpt, "out/model.ckpt")      # doctest: +SKIP
    """
    path = os.fspath(path)
    if path.endswith(_KERAS_SUFFIXES):
        return _keras().write(ckpt, path, overwrite=overwrite, progress=progress, restore_dtype=restore_dtype,
                              template=template, **options)
    from .bundle import open_bundle
    from .bundle_write import update_state_file, write_bundle
    from .tfexport import export_by_rule, export_by_template

    prefix = output_prefix(path)
    if not os.path.isdir(os.path.dirname(os.path.abspath(prefix))):
        raise OutputError("output directory does not exist", os.path.dirname(os.path.abspath(prefix)))
    common = {k: options[k] for k in ("kinds", "forget_bias", "strict") if k in options}
    if template is not None:
        tb = open_bundle(os.fspath(template))
        outs, rep = export_by_template(ckpt, tb, restore_dtype=restore_dtype, **common)
    else:
        outs, rep = export_by_rule(ckpt, restore_dtype=restore_dtype, rnn_style=options.get("rnn_style", "tf1"),
                                   **common)
    n = write_bundle(prefix, outs, overwrite=overwrite, progress=progress,
                     max_shard_size=options.get("max_shard_size"))
    if options.get("update_state", True):
        update_state_file(prefix)
    rep.destination = prefix
    rep.tensors_out = len(outs)
    rep.bytes_out = n
    return rep


# ------------------------------------------------------------------------------ in-memory models

def _is_keras(model) -> bool:
    try:
        import keras
    except ImportError:
        return False
    return isinstance(model, keras.layers.Layer)


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
    """Canonical Checkpoint of in-memory TF variables: a {name: tf.Variable} dict (TF1 names such
    as 'conv1/kernel'), a list of variables, or a tf.Module; Keras models go to keras_h5.

    >>> ckpt = from_model({"dense/kernel": tf.Variable(np.ones((3, 4)))})   # doctest: +SKIP
    """
    _require_tf()
    if _is_keras(model):
        return _keras().from_model(model, **options)
    from hubfmt.sdk import LazyTensor

    from .tfimport import import_variables

    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    ckpt.source = SourceInfo(FRAMEWORK, _tf_version(), "", "tf-variables")
    variables = []
    for name, v in _variables(model).items():
        arr = v.numpy()
        variables.append((name, LazyTensor.from_array(arr) if arr.dtype.kind in "fiucb" else None))
    return import_variables(variables, **options)


def _tf_version() -> str:
    import tensorflow as tf
    return tf.__version__


def to_model(ckpt: Checkpoint, model, *, strict: bool = True) -> Report:
    """Assign `ckpt` to in-memory TF variables (names by the export rules, dtypes of the variables).
    strict: every variable must be filled and every tensor used, else ConversionError.

    >>> to_model(ckpt, {"dense/kernel": var_k, "dense/bias": var_b})    # doctest: +SKIP
    """
    tf = _require_tf()
    if _is_keras(model):
        return _keras().to_model(ckpt, model, strict=strict)
    from .tfexport import export_by_rule

    variables = _variables(model)
    outs, rep = export_by_rule(ckpt, restore_dtype=False, strict=strict)
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
        from hubfmt.sdk import dtypes
        arr = dtypes.convert(o.tensor.load(), o.tensor.dtype, "float32") if o.tensor.dtype == "bfloat16" else o.tensor.load()
        v.assign(tf.constant(arr, dtype=v.dtype))
        rep.add("matched", name)
    for name in by_name.keys() - variables.keys():
        rep.add("unexpected", name, "no such variable in the model")
        problems.append(name)
    if problems and strict:
        raise ConversionError(f"checkpoint does not fit the model ({len(problems)} problems): {', '.join(problems[:5])}")
    rep.tensors_out = len(variables) - len([p for p in problems if p in variables])
    return rep
