"""In-memory MindSpore models: a Cell's parameters_dict() to a canonical Checkpoint and back
(load_param_into_net, with no parameter left unloaded). MindSpore is imported here only.

The live Cell tells what a file cannot: each layer's type and attributes. BatchNorm records
eps and momentum in torch's convention: MindSpore's nn.BatchNorm2d(momentum=0.9) argument means
new = 0.9*old + 0.1*batch (measured on 2.10), i.e. the cell's `momentum` attribute, 1 - argument.
"""
from __future__ import annotations

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import Checkpoint, LazyTensor
from hubfmt.sdk import ConversionError, MissingFrameworkError, flatten

from . import names
from .reader import to_canonical
from .template import plan

# MindSpore cell class name -> canonical kind (matched along the class's MRO).
_CELL_KINDS = {
    "Dense": "linear", "Conv1d": "conv1d", "Conv2d": "conv2d", "Conv3d": "conv3d",
    "Conv1dTranspose": "conv_transpose1d", "Conv2dTranspose": "conv_transpose2d", "Conv3dTranspose": "conv_transpose3d",
    "_BatchNorm": "batch_norm", "LayerNorm": "layer_norm", "GroupNorm": "group_norm",
    "InstanceNorm1d": "instance_norm", "InstanceNorm2d": "instance_norm", "InstanceNorm3d": "instance_norm",
    "Embedding": "embedding", "PReLU": "prelu",
}


def _import():
    try:
        import mindspore
    except ImportError:
        raise MissingFrameworkError("mindspore", "mindspore", "a MindSpore model") from None
    return mindspore


def _kind_and_attrs(cell) -> tuple[str | None, dict]:
    kind = next((_CELL_KINDS[c.__name__] for c in type(cell).__mro__ if c.__name__ in _CELL_KINDS), None)
    attrs: dict = {}
    if kind == "batch_norm":
        attrs = {"eps": float(cell.eps), "momentum": round(float(cell.momentum), 12)}
    elif kind and kind.startswith("conv"):
        pad_mode = getattr(cell, "pad_mode", "pad")
        attrs = {"stride": _plain(cell.stride), "dilation": _plain(cell.dilation), "groups": int(cell.group),
                 "padding": _plain(cell.padding) if pad_mode == "pad" else pad_mode}
        if kind == "conv2d" and cell.group > 1 and cell.group == cell.in_channels:
            kind = "depthwise_conv2d"
    elif kind in ("layer_norm", "group_norm", "instance_norm"):
        # nn.LayerNorm calls it epsilon (default 1e-7, torch's is 1e-5); the others eps.
        eps = getattr(cell, "eps", getattr(cell, "epsilon", None))
        attrs = {} if eps is None else {"eps": float(eps)}
        if kind == "group_norm":
            attrs["num_groups"] = int(cell.num_groups)
    return kind, attrs


def _plain(v):
    return [int(x) for x in v] if isinstance(v, (tuple, list)) else int(v)


def _lazy(param, ms) -> LazyTensor:
    dt = names.TENSOR_TYPES.get(str(param.dtype))
    if dt is None:
        raise ConversionError(f"parameter {param.name!r}: unsupported MindSpore dtype {param.dtype}")
    if dt == "bfloat16":      # numpy has no bfloat16: go through float32 (exact) to hubfmt's bits
        return LazyTensor(tuple(param.shape), dt,
                          lambda: dtypes.convert(param.astype(ms.float32).asnumpy(), "float32", "bfloat16"))
    return LazyTensor(tuple(param.shape), dt, lambda: np.ascontiguousarray(param.asnumpy()))


def from_model(cell, *, keep_optimizer: bool = False) -> Checkpoint:
    """A MindSpore Cell's parameters (parameters_dict()) as a canonical, lazy Checkpoint, with
    layer kinds and attributes (conv stride/padding/groups, BatchNorm eps/momentum) from the cells.

    >>> ckpt = from_model(mindcv.create_model("efficientnet_b0"))      # doctest: +SKIP
    """
    ms = _import()
    kinds, attrs, conv1d = {}, {}, set()
    for _, sub in cell.cells_and_names():
        kind, a = _kind_and_attrs(sub)
        if kind is None:
            continue
        for p in sub.get_parameters(expand=False):
            layer = p.name.rpartition(".")[0]
            kinds[layer], attrs[layer] = kind, a
            if kind == "conv1d" and p.name.endswith(".weight") and len(p.shape) == 4:
                conv1d.add(p.name)      # MindSpore keeps Conv1d weights as [O, I, 1, K]
    items = []
    for name, p in cell.parameters_dict().items():
        t = _lazy(p, ms)
        if name in conv1d:
            o, i, _, k = t.shape
            # the shape is bound now: a closure over the loop's o, i, k would give every
            # Conv1d weight the last one's shape
            t = t.map(lambda a, shape=(o, i, k): a.reshape(shape), (o, i, k))
        items.append((name, t))
    ckpt = to_canonical(items, keep_optimizer=keep_optimizer, kinds=kinds)
    for name in conv1d:
        canon = names.canonical_name(name, "conv1d")
        if canon in ckpt:
            ckpt[canon].info.original_shape = tuple(cell.parameters_dict()[name].shape)
            ckpt.report.add("reshaped", name, f"{list(ckpt[canon].info.original_shape)}->{list(ckpt[canon].tensor.shape)}")
    for layer, a in attrs.items():
        if layer in ckpt.layers:
            ckpt.layers[layer].attrs.update(a)
    ckpt.source.framework = "mindspore"
    ckpt.source.framework_version = ms.__version__
    ckpt.source.format = "mindspore-cell"
    return ckpt


def _ms_tensor(arr: np.ndarray, dtype: str, ms):
    if dtype == "bfloat16":
        return ms.Tensor(dtypes.convert(arr, "bfloat16", "float32"), dtype=ms.bfloat16)
    return ms.Tensor(arr)


def to_model(ckpt: Checkpoint, cell, *, strict: bool = True):
    """Load `ckpt` into MindSpore Cell `cell`, following the cell's parameter names (exact or by
    role: `bn.gamma` <- `bn.weight`), shapes and dtypes. With strict (the default) any parameter
    missing, unexpected, of the wrong shape or left unloaded by load_param_into_net is a
    ConversionError naming them (raised before the cell is touched, except for load_param_into_net's
    own verdict). Returns the Report.

    >>> report = to_model(hubfmt.read("effnet_torch.safetensors"), net)   # doctest: +SKIP
    """
    ms = _import()
    flatten.check_decided(ckpt)     # a Dense's row order after a Flatten its reader could not tell
    items, report = plan(ckpt, cell, strict=strict)
    params = {}
    for it in items:
        arr = dtypes.convert(it.tensor.load(), it.tensor.dtype, it.dtype)
        params[it.name] = ms.Parameter(_ms_tensor(arr, it.dtype, ms), name=it.name)
    not_loaded, _ = ms.load_param_into_net(cell, params, strict_load=True)
    if not_loaded:
        known = set(report.names("missing"))
        for name in not_loaded:
            if name not in known:
                report.add("missing", name, "left unloaded by load_param_into_net")
        if strict:
            raise ConversionError(f"load_param_into_net left {len(not_loaded)} parameter(s) unloaded: "
                                  + ", ".join(list(not_loaded)[:10]))
    report.tensors_in = len(ckpt)
    report.tensors_out = len(params)
    return report
