"""torch.save file -> canonical Checkpoint: find the weights (bare state dict, training checkpoint,
pickled nn.Module), name and classify them, keep the rest as non-tensor content.

>>> ckpt = read("yolov5s.pt", prefer_ema=True)          # doctest: +SKIP
>>> ckpt.extra["model_attributes"]["names"][:2]         # doctest: +SKIP
['person', 'bicycle']
"""
from __future__ import annotations

import collections
import os
import sys
from typing import Any

from hubfmt.sdk import dtypes
from hubfmt.sdk import Checkpoint, Entry, SourceInfo, TensorInfo
from hubfmt.sdk import ConversionError, FormatError
from hubfmt.sdk import Report
from hubfmt.sdk import OpaqueObject

from . import modules
from . import names
from .loading import load
from .tensors import _MAX_ROOT_CHAIN, lazy_and_tie_key, to_lazy
from .vocabulary import Storage, TensorRef, TorchDtype

# Where training checkpoints keep their weights, in order of preference.
WEIGHT_KEYS = ("state_dict", "model", "module", "model_state_dict", "net", "network")
EMA_KEYS = ("ema", "model_ema", "ema_state_dict", "state_dict_ema", "ema_model")
OPTIMIZER_KEYS = ("optimizer", "optimizer_states", "optimizer_state_dict", "optim", "lr_schedulers",
                  "lr_scheduler", "scheduler", "amp", "scaler")
# A tensor met among non-tensor content (YOLOv5's stride, class weights) is kept as a numpy array
# up to this size; a larger one is dropped and reported.
MAX_EXTRA_TENSOR_BYTES = 1 << 20
# Non-tensor content larger than this many values is damage or an attack (a pickle can share one
# list many times over: the plain copy would grow exponentially).
MAX_EXTRA_VALUES = 1_000_000


def is_state_dict(obj: Any) -> bool:
    """A non-empty dict of str keys whose values are tensors (and get_extra_state values), at
    least one a tensor. (One pass: a state dict can hold a million tensors, #18.)"""
    if not isinstance(obj, dict) or not obj:
        return False
    tensors = 0
    for k, v in obj.items():
        if not isinstance(k, str):
            return False
        if isinstance(v, TensorRef):
            tensors += 1
        elif not k.endswith("_extra_state"):
            return False
    return tensors > 0


def holds_weights(obj: Any, _depth: int = 0) -> bool:
    if modules.is_module(obj) or is_state_dict(obj):
        return True
    if isinstance(obj, dict) and _depth < 3:
        return any(holds_weights(obj[k], _depth + 1) for k in (*WEIGHT_KEYS, *EMA_KEYS) if k in obj)
    return False


def count_tensors(obj: Any) -> int:
    """Distinct tensors reachable from `obj` (each object visited once)."""
    seen: set[int] = set()
    stack, n = [obj], 0
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, TensorRef):
            n += 1
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif isinstance(o, OpaqueObject):
            stack.append(o.attributes() or o.args)
    return n


class _Reading:
    """One read: the path, the report, the options."""

    def __init__(self, path: str, prefer_ema: bool):
        self.path, self.prefer_ema = path, prefer_ema
        self.report = Report(stage="read")
        self.layer_classes: dict[str, tuple[str, dict]] = {}
        self.values = 0

    # -- choosing the weights ---------------------------------------------------------------

    def weights(self, obj: Any, where: str = "checkpoint") -> tuple[list[tuple[str, TensorRef]], dict]:
        """(named tensors, non-tensor content) of `obj`."""
        if modules.is_module(obj):
            return self.module_weights(obj, where)
        if is_state_dict(obj):
            tensors = []
            for k, v in obj.items():
                if isinstance(v, TensorRef):
                    tensors.append((k, v))
                else:
                    self.report.add("dropped", k, "module extra state (get_extra_state) is not a tensor")
            return tensors, {}
        if not isinstance(obj, dict):
            raise ConversionError(f"{where} holds a {type(obj).__name__}, not a state dict, training checkpoint or module", self.path)
        order = (*EMA_KEYS, *WEIGHT_KEYS) if self.prefer_ema else (*WEIGHT_KEYS, *EMA_KEYS)
        chosen = next((k for k in order if k in obj and holds_weights(obj[k])), None)
        if chosen is None and any(isinstance(v, TensorRef) for v in obj.values()):
            return self.mixed(obj, where)
        if chosen is None:
            holders = [str(k) for k, v in obj.items() if holds_weights(v)]
            hint = f"; tensors found under {', '.join(holders)}" if holders else ""
            raise ConversionError(f"{where} has no state dict under any of {', '.join(WEIGHT_KEYS + EMA_KEYS)}{hint}", self.path)
        ema = [k for k in EMA_KEYS if k in obj and holds_weights(obj[k])]
        label = f"{where}[{chosen!r}]"
        if chosen in EMA_KEYS:
            why = "EMA weights, as asked (--prefer-ema)" if self.prefer_ema else "the only weights present (EMA)"
        elif ema:
            why = f"--prefer-ema would take {where}[{ema[0]!r}] instead"
        else:
            why = "no EMA weights present" if self.prefer_ema else ""
        self.report.add("warning", label, f"weights taken from here{': ' + why if why else ''}")
        tensors, inner = self.weights(obj[chosen], label)
        extra: dict = {}
        for k, v in obj.items():
            if k == chosen:
                continue
            name = f"{where}[{k!r}]"
            if k in OPTIMIZER_KEYS:
                self.report.add("dropped", name, f"optimizer/scheduler state ({count_tensors(v)} tensors): not model weights")
            elif holds_weights(v):
                self.report.add("dropped", name, f"another copy of the weights ({self.count_weights(v, name)} "
                                                 f"tensors); {label} was chosen")
            else:
                extra[k if isinstance(k, (str, int)) else str(k)] = self.plain(v, name)
        for k, v in inner.items():
            extra.setdefault(k, v)
        return tensors, extra

    def count_weights(self, obj: Any, where: str) -> int:
        """How many tensors `obj` would give if it were chosen: the same count a user sees for the
        chosen copy (count_tensors counts every tensor reachable, buffers of other kinds too)."""
        try:
            return len(_Reading(self.path, self.prefer_ema).weights(obj, where)[0])
        except (ConversionError, FormatError):
            return count_tensors(obj)

    def mixed(self, obj: dict, where: str) -> tuple[list[tuple[str, TensorRef]], dict]:
        """A dict mixing tensors with other values at the top level: the tensors are the state dict."""
        tensors = [(str(k), v) for k, v in obj.items() if isinstance(v, TensorRef)]
        extra = {(k if isinstance(k, (str, int)) else str(k)): self.plain(v, f"{where}[{k!r}]")
                 for k, v in obj.items() if not isinstance(v, TensorRef)}
        self.report.add("warning", where, f"{len(tensors)} top-level tensors taken as the state dict, "
                        f"{len(extra)} other values kept as non-tensor content")
        return tensors, extra

    def module_weights(self, module: OpaqueObject, where: str) -> tuple[list[tuple[str, TensorRef]], dict]:
        try:
            tensors = list(modules.state_dict(module))
        except ValueError as e:
            raise FormatError(f"{where}: {e}", self.path) from None
        for path, m in modules.modules(module):
            self.layer_classes[path] = (modules.class_name(m), m.attributes())
        attrs = {k: self.plain(v, f"{where}.{k}") for k, v in modules.public_attributes(module).items()}
        self.report.add("warning", where, f"pickled module {module.class_name} read without its source: "
                        f"{len(tensors)} tensors rebuilt from _parameters/_buffers, no code run")
        return tensors, {"model_class": module.class_name, "model_attributes": attrs}

    # -- non-tensor content -----------------------------------------------------------------

    def plain(self, value: Any, name: str, _depth: int = 0) -> Any:
        """Non-tensor content as plain data (hubfmt.extra normalises it further)."""
        self.values += 1
        if _depth > 60 or self.values > MAX_EXTRA_VALUES:
            raise FormatError(f"{name}: non-tensor content nests too deeply or holds more than "
                              f"{MAX_EXTRA_VALUES} values", self.path)
        if isinstance(value, TensorRef):
            lazy = to_lazy(value, name, self.path)
            if lazy.nbytes > MAX_EXTRA_TENSOR_BYTES:
                self.report.add("dropped", name, f"a {lazy.nbytes}-byte tensor among non-tensor content")
                return None
            arr = lazy.load()
            return dtypes.convert(arr, "bfloat16", "float32") if lazy.dtype == "bfloat16" else arr
        if isinstance(value, TorchDtype):
            return str(value)
        if isinstance(value, Storage):
            self.report.add("dropped", name, "a bare storage among non-tensor content")
            return None
        if isinstance(value, dict):
            return {(k if isinstance(k, (str, int)) else str(k)): self.plain(v, f"{name}[{k!r}]", _depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [self.plain(v, f"{name}[{i}]", _depth + 1) for i, v in enumerate(value)]
            return tuple(items) if isinstance(value, tuple) else items
        if modules.is_module(value):
            return {"__object__": value.class_name, "tensors": count_tensors(value)}
        if isinstance(value, OpaqueObject):
            state = value.state if value.state is not None else list(value.args)
            return {"__object__": value.class_name, "state": self.plain(state, name, _depth + 1)}
        return value

    # -- the checkpoint ---------------------------------------------------------------------

    def checkpoint(self, obj: Any, fmt: str) -> Checkpoint:
        tensors, extra = self.weights(obj)
        return self.build(tensors, extra, fmt)

    def build(self, tensors: list[tuple[str, TensorRef]], extra: dict, fmt: str) -> Checkpoint:
        """The Checkpoint of `tensors` (emptied as they are converted: each one's TensorRef, and
        its Storage once no other tensor needs it, is freed as its LazyTensor is made, so a
        million tensors are not held twice, #18)."""
        ckpt = Checkpoint(source=SourceInfo(framework="torch", file=os.path.basename(self.path), format=fmt))
        ckpt.report = self.report
        shapes = {name: t.shape for name, t in tensors}
        layer_kinds, ckpt.layers = names.classify(shapes, self.layer_classes)
        del shapes
        # Only tensors that share a root storage can be tied: the others need no tie key kept.
        # (Every root is alive until this loop starts, so their ids are distinct.)
        counts = collections.Counter(_root_id(t) for _, t in tensors)
        shared = {root for root, n in counts.items() if n > 1}
        del counts
        first_of: dict[tuple, str] = {}
        entries, path, intern = ckpt.entries, self.path, sys.intern
        for i, (name, t) in enumerate(tensors):
            tensors[i] = None       # type: ignore[call-overload]
            if name in entries:
                raise FormatError(f"tensor name {name!r} appears twice", path)
            lazy, key = lazy_and_tie_key(t, name, path)
            layer, _, role = name.rpartition(".")
            shape = t.shape if type(t.shape) is tuple else tuple(t.shape)
            # What Checkpoint.add would fill in (layer and role interned), given directly: this
            # loop runs once per tensor, a million times for some checkpoints (#18).
            info = TensorInfo(layer_kinds.get(layer, "tensor"), intern(role), intern(layer), name,
                              t.dtype or lazy.dtype, "", shape)
            if key[0] in shared:
                if key in first_of and lazy.nbytes:
                    info.tied_to = first_of[key]
                else:
                    first_of.setdefault(key, name)
            entries[name] = Entry(lazy, info)
        ckpt.extra = extra
        self.report.tensors_in = len(ckpt)
        return ckpt


def _root_id(t: Any) -> int:
    """id() of the root storage byte_span would find for `t` (of something else when `t` is
    malformed: converting it raises anyway)."""
    s, hops = getattr(t, "storage", None), 0
    while type(s) is Storage and s.root is not None and hops <= _MAX_ROOT_CHAIN:
        s, hops = s.root, hops + 1
    return id(s)


def read(path: str | os.PathLike, *, prefer_ema: bool = False) -> Checkpoint:
    """Read a torch.save file (zip or legacy), a plain torch safetensors file or a Hugging Face
    model directory / shard index (adapters.torch.hf) as a lazy canonical Checkpoint, without torch.

    `prefer_ema` takes EMA weights ('ema', 'model_ema', ...) over the plain ones when both exist.

    >>> ckpt = read("model.pth")                  # doctest: +SKIP
    """
    path = os.fspath(path)
    from . import hf
    from .formats import sniff

    if sniff(path) in ("hf", "torch-safetensors") or hf.model_directory_weights(path) is not None:
        return hf.read(path)
    hf.refuse_lone_shard(path, index_required=True)     # pytorch_model-00001-of-00002.bin
    obj, fmt = load(path)
    reading = _Reading(path, prefer_ema)
    tensors, extra = reading.weights(obj)
    del obj         # the unpickled graph: what build needs of it is in `tensors`
    return reading.build(tensors, extra, fmt)
