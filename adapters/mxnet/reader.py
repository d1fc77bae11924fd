"""`.params` (+ `-symbol.json`) -> canonical, lazy Checkpoint, without MXNet."""
from __future__ import annotations

import os

import numpy as np

from hubfmt.sdk import dtypes

from hubfmt.sdk import Checkpoint, LayerInfo, LazyTensor, SourceInfo, TensorInfo, region_tensor
from hubfmt.sdk import FormatError, check_input_file

from . import names, ndlist, symbol
from .formats import FORMAT

_NORM_KINDS = ("batch_norm", "layer_norm", "instance_norm", "group_norm")


_WEIGHT_KIND = {2: "linear", 3: "conv1d", 4: "conv2d", 5: "conv3d"}


def _guess_kind(mx_role: str, ndim: int, layer_roles: set[str]) -> str:
    """Layer kind from the role suffix and the rank alone (no symbol file): a guess, reported as
    one. A Deconvolution or an Embedding cannot be told from a Convolution or a Dense here; their
    canonical layouts are the same bytes, only the kind differs. '' for a bias: its weight decides."""
    if mx_role in ("gamma", "beta") or mx_role in names.AUX_ROLES:
        return "batch_norm" if layer_roles & names.AUX_ROLES else "tensor"
    if mx_role == "weight":
        return _WEIGHT_KIND.get(ndim, "tensor")
    return "" if mx_role == "bias" else "tensor"


def read(path, *, symbol_file: str | bool | None = None) -> Checkpoint:
    """Read an MXNet `.params` file lazily (tensors stay in the file until loaded).

    `symbol_file`: the graph to take layer kinds, attributes and order from; default
    `prefix-symbol.json` beside `prefix-NNNN.params` when it exists; False to ignore it.

    >>> ckpt = read("dpn68-0000.params")                           # doctest: +SKIP
    >>> ckpt.layers["conv2_1_c1x1_a__bn"].attrs["eps"]             # doctest: +SKIP
    0.001
    """
    path = os.fspath(path)
    check_input_file(path, "an MXNet .params file")
    records, stored = ndlist.scan(path)
    if not stored:
        stored = [str(i) for i in range(len(records))]        # mx.nd.save of a plain list
    by_bare: dict[str, int] = {}
    prefixes: dict[str, str] = {}
    for i, name in enumerate(stored):
        pre, bare = names.strip_prefix(name)
        if bare in by_bare:
            raise FormatError(f"parameter {bare!r} stored twice (as {stored[by_bare[bare]]!r} and {name!r})", path)
        by_bare[bare] = i
        prefixes[bare] = pre

    if symbol_file is None:
        cand = symbol.symbol_path_for(path)
        symbol_file = cand if os.path.isfile(cand) else False
    graph = symbol.load(os.fspath(symbol_file)) if symbol_file else None

    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    style = "module" if any(prefixes.values()) else ("gluon" if any("." in b for b in by_bare) else "flat")
    ckpt.source = SourceInfo("mxnet", graph.version if graph else "", os.path.basename(path), FORMAT)
    ckpt.extra = {"mxnet": {"style": style}}
    order = list(by_bare)
    if graph:
        missing = [n for n in graph.params if n not in by_bare]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            beside = os.path.dirname(os.path.abspath(symbol_file)) == os.path.dirname(os.path.abspath(path))
            shown_sym = os.path.basename(symbol_file) if beside else os.fspath(symbol_file)
            raise FormatError(f"{shown_sym} names {len(missing)} parameter(s) this file lacks: {shown}", path)
        order = list(graph.params) + [n for n in by_bare if n not in graph.params]
        ckpt.extra["mxnet"]["symbol"] = graph.text
    else:
        ckpt.report.add("warning", os.path.basename(path),
                        "no -symbol.json: layer kinds guessed from names and ranks; BatchNorm eps/momentum/fix_gamma "
                        "unknown (MXNet defaults: symbol eps 1e-3, fix_gamma True; Gluon eps 1e-5)")

    layer_roles: dict[str, set[str]] = {}
    for bare in by_bare:
        layer, mx_role = names.split(bare)
        layer_roles.setdefault(layer, set()).add(mx_role)

    for bare in order:
        rec = records[by_bare[bare]]
        original = stored[by_bare[bare]]
        if rec.offset is None:
            ckpt.report.add("dropped", original, "an empty (uninitialised) NDArray holds no data")
            continue
        canon, layer, role = names.canonical(bare)
        use = graph.params.get(bare) if graph else None
        mx_role = names.split(bare)[1]
        if use is not None:
            kind, role = use.kind, use.role
            if not layer:                        # a name MXNet's suffix rule does not cover
                layer = use.node
            canon = f"{layer}.{role}"
            if kind == "conv2d" and use.attrs.get("groups", 1) > 1 and len(rec.shape) == 4 and rec.shape[1] == 1:
                kind = "depthwise_conv2d"
            if kind != "tensor":
                ckpt.layers.setdefault(layer, LayerInfo(kind, dict(use.attrs)))
        else:
            kind = _guess_kind(mx_role, len(rec.shape), layer_roles.get(layer, set())) or \
                (ckpt.layers[layer].kind if layer in ckpt.layers else "tensor")
            if role == "weight" and kind != "tensor":
                ckpt.layers.setdefault(layer, LayerInfo(kind, {}))
            if not role:
                ckpt.report.add("warning", original, "no role suffix MXNet uses (weight, bias, gamma, ...): kept as is")
        if canon in ckpt:
            raise FormatError(f"{original!r} and {ckpt[canon].info.original_name!r} map to the same name {canon!r}", path)
        tensor = region_tensor(path, rec.offset, rec.dtype, rec.shape)
        layer_attrs = ckpt.layers[layer].attrs if layer in ckpt.layers else {}
        if kind == "batch_norm" and role == "weight" and layer_attrs.get("fix_gamma"):
            # MXNet multiplies by 1 whatever gamma holds when fix_gamma is set (the symbol default)
            tensor = LazyTensor(rec.shape, rec.dtype, lambda s=rec.shape, d=rec.dtype: _ones(s, d))
            ckpt.report.add("warning", original, "fix_gamma=True: MXNet ignores the stored gamma; imported as ones")
        info = TensorInfo(kind=kind, role=role, layer=layer, original_name=original,
                          original_dtype=rec.dtype)
        ckpt.add(canon, tensor, info)
        if canon != original:
            ckpt.report.renamed(original, canon)
    # a weight seen after its bias fixes the bias's kind (flat files list weight first anyway)
    for e in ckpt.entries.values():
        if e.info.kind in ("", "tensor") and e.info.layer in ckpt.layers:
            e.info.kind = ckpt.layers[e.info.layer].kind
    ckpt.report.tensors_in = len(ckpt)
    return ckpt


def _ones(shape, dtype) -> np.ndarray:
    return dtypes.convert(np.ones(shape, dtype=np.float32), "float32", dtype)
