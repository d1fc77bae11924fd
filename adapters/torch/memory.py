"""In-memory models (needs torch, imported only inside these functions): an nn.Module or a state
dict -> canonical Checkpoint, and a Checkpoint -> an nn.Module through load_state_dict.

>>> ckpt = from_model(torchvision.models.resnet18())         # doctest: +SKIP
>>> report = to_model(ckpt, torchvision.models.resnet18())   # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import Checkpoint, LazyTensor, SourceInfo, TensorInfo
from hubfmt.sdk import ConversionError, MissingFrameworkError
from hubfmt.sdk import Report

from . import names
from .vocabulary import TORCH_DTYPES


def _torch(what: str):
    try:
        import torch
    except ImportError:
        raise MissingFrameworkError("torch", "torch", what) from None
    return torch


def _hub_dtype(t) -> str | None:
    return TORCH_DTYPES.get(str(t.dtype).removeprefix("torch."))


def _to_numpy(t, dtype: str) -> np.ndarray:
    torch = _torch("reading a torch tensor")
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy() if flat.numel() else np.zeros(0, np.uint8)
    return raw.view(dtypes.storage_dtype(dtype)).reshape(tuple(t.shape)).copy()


def from_model(model: Any, **options) -> Checkpoint:
    """An nn.Module (kinds and BN/conv attributes from its module classes) or a state dict ->
    a canonical Checkpoint whose tensors are read from the live tensors on demand.

    >>> ckpt = from_model(torch.nn.Linear(3, 2))       # doctest: +SKIP
    >>> ckpt["weight"].info.kind                       # doctest: +SKIP
    'linear'
    """
    if options:
        raise TypeError(f"unknown options: {', '.join(options)}")
    torch = _torch("from_model")
    report = Report(stage="read")
    classes: dict[str, tuple[str, Mapping]] = {}
    if isinstance(model, torch.nn.Module):
        state = model.state_dict()
        for path, m in model.named_modules(remove_duplicate=False):
            classes[path] = (type(m).__name__, vars(m))
        source = type(model).__name__
    elif isinstance(model, Mapping):
        state, source = model, "state dict"
    else:
        raise ConversionError(f"from_model needs an nn.Module or a state dict, not a {type(model).__name__}")
    tensors = {}
    for name, t in state.items():
        if not torch.is_tensor(t):
            report.add("dropped", str(name), f"a {type(t).__name__}, not a tensor")
            continue
        if _hub_dtype(t) is None:
            raise ConversionError(f"tensor {name!r} has dtype {t.dtype}, which hubfmt cannot represent")
        tensors[str(name)] = t
    layer_kinds, layers = names.classify({n: tuple(t.shape) for n, t in tensors.items()}, classes)
    ckpt = Checkpoint(layers=layers, source=SourceInfo(framework="torch", framework_version=torch.__version__,
                                                       file=source, format="in-memory"))
    ckpt.report = report
    first_of: dict[tuple, str] = {}
    for name, t in tensors.items():
        dt = _hub_dtype(t)
        info = TensorInfo(kind=layer_kinds.get(name.rpartition(".")[0], "tensor"), original_name=name,
                          original_dtype=dt, original_shape=tuple(t.shape))
        if t.numel():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), dt)
            if key in first_of:
                info.tied_to = first_of[key]
            else:
                first_of[key] = name
        ckpt.add(name, LazyTensor(tuple(t.shape), dt, lambda t=t, dt=dt: _to_numpy(t, dt)), info)
    report.tensors_in = len(ckpt)
    return ckpt


def _to_torch(arr: np.ndarray, dtype: str):
    torch = _torch("to_model")
    if dtype == "bfloat16":
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True))


def to_model(ckpt: Checkpoint, model: Any, *, strict: bool = True, restore_dtype: bool = True) -> Report:
    """Load `ckpt` into nn.Module `model` with load_state_dict(strict=strict), tensors in their
    original dtypes (`restore_dtype`). Missing/unexpected names: ConversionError when strict,
    reported otherwise.

    >>> report = to_model(hubfmt.read("model.safetensors"), net)   # doctest: +SKIP
    """
    torch = _torch("to_model")
    if not isinstance(model, torch.nn.Module):
        raise ConversionError(f"to_model needs an nn.Module, not a {type(model).__name__}")
    report = Report(stage="write", destination=type(model).__name__)
    target = model.state_dict()
    state = {}
    for name, entry in ckpt.entries.items():
        src = entry.tensor.dtype
        dt = entry.info.original_dtype if restore_dtype and entry.info.original_dtype in dtypes.DTYPES else src
        state[name] = _to_torch(dtypes.convert(entry.tensor.load(), src, dt), dt)
        want = _hub_dtype(target[name]) if name in target else None
        if want and want != src:
            report.add("cast", name, f"{src}->{want}")
        elif name in target:
            report.add("matched", name)
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ConversionError("load_state_dict refused the checkpoint: " + " ".join(lines)[:500]) from None
    for name in result.missing_keys:
        report.add("missing", name, "the model has it, the checkpoint does not")
    for name in result.unexpected_keys:
        report.add("unexpected", name, "the checkpoint has it, the model does not")
    report.tensors_in = len(ckpt)
    report.tensors_out = len(state) - len(result.unexpected_keys)
    return report
