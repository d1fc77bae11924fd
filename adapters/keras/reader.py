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

from hubfmt.sdk import Checkpoint, SourceInfo, flatten

from .config import flatten_inputs
from .formats import FRAMEWORK
from .store import lazy as lazy_var, scan as scan_store
from .owners import Owner, add_owner
from .names import infer_class


def read(path: str | os.PathLike, *, strict: bool = True, template=None, flatten: str | None = None) -> Checkpoint:
    """A .weights.h5 file or .keras archive as a lazy canonical Checkpoint.

    Layer classes come from config.json (a .keras archive) or `template` (the model's .keras
    archive or the live Keras model, for a bare .weights.h5), else from the names Keras gives list
    items (`conv2d_1` -> Conv2D), else from the variables' shapes; layers of unknown classes keep
    their variables by position (`<layer>.vars.<i>`, kind tensor) with a warning. Optimizer
    variables are dropped and reported. strict=False also keeps layers without a canonical form
    (GRU reset_after=False) by position instead of failing.

    A Dense after a Flatten gets its input rows permuted from Keras's H,W,C order to the canonical
    C,H,W when the config (the archive's or the template's) gives the map's shape; without a
    config, a Dense that looks fed by flattened conv features is an error unless `flatten` says
    "HxW" (permute) or "as-is" (keep).

    >>> read("model.weights.h5", template="model.keras")["conv.weight"].info.original_layout   # doctest: +SKIP
    'HWIO'
    """
    path = os.fspath(path)
    store = scan_store(path)
    known = {}
    config = store.config
    if template is not None:
        from .plan import template_targets
        targets, t_config, _, _ = template_targets(template)
        known = {t.vars_path: t for t in targets}
        config = config if config is not None else t_config
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
    dense_names = {g.module: (g.config or {}).get("name") or g.layer_name for g in store.groups}
    canonical_flatten_order(ckpt, flatten_inputs(config) if config is not None else None, dense_names,
                            flatten, os.path.basename(path))
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


def canonical_flatten_order(ckpt: Checkpoint, inputs: dict | None, dense_names: dict[str, str], option,
                            where: str) -> None:
    """Permute the input rows of each Dense fed by a channels-last Flatten to the canonical C,H,W
    order, recorded in its layer attributes and reported (`inputs`: Keras layer name -> (H, W, C),
    from a config; None without one: then the `flatten` option, or an error, decides)."""
    if inputs is not None:
        for module, name in dense_names.items():
            if name not in inputs or f"{module}.weight" not in ckpt.entries:
                continue
            hwc = inputs[name]
            if hwc is None:
                ckpt.report.add("warning", module, "Dense after Flatten, the config does not give the map's shape: "
                                                   "its input rows stay in Keras's H,W,C order")
                continue
            flatten.permute_to_canonical(ckpt, module, hwc, "the config's Flatten")
        return
    flatten.decide_read(ckpt, option, f"{where} has no config that shows a Flatten or its shape", "-R",
                        "or give the model's .keras archive (-R template=MODEL.keras, or convert the .keras file "
                        "itself)")
