"""Keras files -> a canonical Checkpoint: `.weights.h5`, `.keras` archives and legacy `.h5`
(store.py scans them, owners.py names each layer's variables).

    >>> ckpt = read("model.weights.h5")                   # doctest: +SKIP
    >>> ckpt["conv.weight"].tensor.shape                  # canonical OIHW
    (16, 3, 3, 3)

Canonical names: list items of Functional/Sequential models (and nested models) are named by
their layer names (`head.d1.weight`), attributes of subclassed models by attribute (`conv1.weight`);
an RNN's cell belongs to its layer (`lstm.weight_ih_l0`). `original_name` keeps the h5 path of
each variable (`layers/conv2d/vars/0`), which the writer follows when it can.
"""
from __future__ import annotations

import os

from hubfmt.sdk import Checkpoint, SourceInfo

from .config import dense_after_flatten
from .formats import FRAMEWORK
from .store import lazy as lazy_var, scan as scan_store
from .owners import Owner, add_owner
from .names import infer_class


def read(path: str | os.PathLike, *, strict: bool = True, template=None) -> Checkpoint:
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
    path = os.fspath(path)
    store = scan_store(path)
    known = {}
    if template is not None:
        from .plan import template_targets
        known = {t.vars_path: t for t in template_targets(template)[0]}
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    version = (store.metadata or {}).get("keras_version", "")
    ckpt.source = SourceInfo(FRAMEWORK, f"keras {version}" if version else "", os.path.basename(path), store.format)
    for w in store.warnings:
        ckpt.report.add("warning", os.path.basename(path), w)
    for g in store.groups:
        t = known.get(g.vars_path)
        if t is not None and not g.class_name:
            g.class_name, g.config, g.module = t.class_name, t.config, t.module
        elif template is not None and t is None:
            ckpt.report.add("warning", g.module, f"{g.vars_path} is not in the template")
        owner = Owner(g.module, g.class_name or infer_class(g), g.config, [v.path for v in g.vars],
                      [lazy_var(store, v) for v in g.vars], g.vars_path, g.suffix)
        add_owner(ckpt, owner, strict=strict, path=path)
    for name in dense_after_flatten(store.config):
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
