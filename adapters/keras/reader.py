"""Keras 3 weights: `.weights.h5` files and `.keras` archives, read and written without Keras
(h5py and numpy only), and a live Keras model's weights from and into the model.

The TensorFlow adapter (adapters/tensorflow/__init__.py) dispatches here for these formats.

    >>> ckpt = read("model.weights.h5")                   # doctest: +SKIP
    >>> ckpt["conv.weight"].tensor.shape                  # canonical OIHW
    (16, 3, 3, 3)
    >>> write(ckpt, "out.weights.h5", template="target.keras")   # doctest: +SKIP

Canonical names: list items of Functional/Sequential models (and nested models) are named by
their layer names (`head.d1.weight`), attributes of subclassed models by attribute (`conv1.weight`);
an RNN's cell belongs to its layer (`lstm.weight_ih_l0`). `original_name` keeps the h5 path of
each variable (`layers/conv2d/vars/0`), which the writer follows when it can.
"""
from __future__ import annotations

import os

from hubfmt.sdk import Checkpoint, SourceInfo
from hubfmt.sdk import ConversionError
from hubfmt.sdk import Report

from . import keras_config, keras_files, keras_store
from .keras_import import Owner, add_owner
from .keras_classes import infer_class

from .formats import KERAS_FORMATS as FORMATS  # noqa: E402


def sniff(path: str) -> str | None:
    """'keras-weights-h5' or 'keras-archive' when `path` is (or claims to be) one; None otherwise.

    Cheap: the HDF5 signature (no other framework here writes HDF5), a zip's member names, or the
    Keras suffixes. Claiming a damaged `x.weights.h5` lets read() say what is wrong with it.

    >>> sniff("model.keras")          # doctest: +SKIP
    'keras-archive'
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    if keras_files.is_hdf5(path):
        return "keras-weights-h5"
    if keras_files.is_keras_archive(path):
        return "keras-archive"
    if path.endswith(".weights.h5"):
        return "keras-weights-h5"
    if path.endswith(".keras"):
        return "keras-archive"
    return None


def read(path: str | os.PathLike, *, strict: bool = True, template=None, **options) -> Checkpoint:
    """A .weights.h5 file or .keras archive as a lazy canonical Checkpoint.

    Layer classes come from config.json (a .keras archive) or `template` (the model's .keras
    archive or the live Keras model, for a bare .weights.h5), else from the names Keras gives list
    items (`conv2d_1` -> Conv2D), else from the variables' shapes; layers of unknown classes keep
    their variables by position (`<layer>.vars.<i>`, kind tensor) with a warning. Optimizer
    variables are dropped and reported. strict=False also keeps layers without a canonical form
    (GRU reset_after=False) by position instead of failing.

    >>> read("model.weights.h5", template="model.keras")["conv.weight"].info.original_layout   # doctest: +SKIP
    'HWIO'
    """
    if options:
        raise ConversionError(f"unknown read option(s) for Keras files: {', '.join(sorted(options))}")
    path = os.fspath(path)
    store = keras_store.scan(path)
    known = {}
    if template is not None:
        from .keras_plan import template_targets
        known = {t.vars_path: t for t in template_targets(template)[0]}
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    version = (store.metadata or {}).get("keras_version", "")
    ckpt.source = SourceInfo("tensorflow", f"keras {version}" if version else "", os.path.basename(path), store.format)
    for w in store.warnings:
        ckpt.report.add("warning", os.path.basename(path), w)
    for g in store.groups:
        t = known.get(g.vars_path)
        if t is not None and not g.class_name:
            g.class_name, g.config, g.module = t.class_name, t.config, t.module
        elif template is not None and t is None:
            ckpt.report.add("warning", g.module, f"{g.vars_path} is not in the template")
        owner = Owner(g.module, g.class_name or infer_class(g), g.config, [v.path for v in g.vars],
                      [keras_store.lazy(store, v) for v in g.vars], g.vars_path, g.suffix)
        add_owner(ckpt, owner, strict=strict, path=path)
    for name in keras_config.dense_after_flatten(store.config):
        ckpt.report.add("warning", name, "Dense after Flatten: Keras flattens NHWC (channels last); a "
                                         "channels-first model needs this weight's input rows permuted")
    if store.optimizer:
        ckpt.report.add("dropped", "optimizer", f"{len(store.optimizer)} optimizer variables "
                                                "(optimizer state is not carried by the hub)")
    if store.config is not None:
        ckpt.extra["keras_config"] = store.config
    if store.metadata is not None:
        ckpt.extra["keras_metadata"] = store.metadata
    if not len(ckpt) and not store.optimizer:
        ckpt.report.add("warning", os.path.basename(path), "the file holds no layer variables")
    ckpt.report.tensors_in = len(ckpt)
    return ckpt


def write(ckpt: Checkpoint, path: str | os.PathLike, *, overwrite: bool = False, progress=None,
          restore_dtype: bool = True, template=None, **options) -> Report:
    """Write `ckpt` as a Keras 3 `.weights.h5` (or, with a config, a `.keras` archive); see keras_write."""
    from .keras_write import write as _write
    return _write(ckpt, path, overwrite=overwrite, progress=progress, restore_dtype=restore_dtype,
                  template=template, **options)


def from_model(model, **options) -> Checkpoint:
    """A live Keras model's weights as a canonical Checkpoint (same names as read() of its files).

    >>> from_model(keras_model)["conv.weight"].info.original_name      # doctest: +SKIP
    'conv/kernel'
    """
    from .keras_model import from_model as _from_model
    return _from_model(model, **options)


def to_model(ckpt: Checkpoint, model, *, strict: bool = True) -> Report:
    """Assign `ckpt` to a live Keras model, layer by layer (strict: all or a ConversionError).

    >>> to_model(hubfmt.read("twin.pth"), keras_model).tensors_out      # doctest: +SKIP
    12
    """
    from .keras_model import to_model as _to_model
    return _to_model(ckpt, model, strict=strict)


__all__ = ["FORMATS", "sniff", "read", "write", "from_model", "to_model"]
