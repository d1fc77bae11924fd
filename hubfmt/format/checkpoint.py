"""The in-memory form of the neutral format: a lazy, canonical checkpoint.

Every importer returns a `Checkpoint`; every exporter consumes one. Tensors are `LazyTensor`s: their
shape and dtype are known up front (so a writer can lay out its file before any data is read) and
their data is read only when `load()` is called, one tensor at a time. That is what lets a
conversion stream a model without holding it in memory.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..report import Report
from .tensor import LazyTensor


@dataclass(slots=True)                   # slots: one per tensor, a million in some checkpoints
class TensorInfo:
    """What a tensor is (one manifest entry, spec section 'Manifest')."""

    kind: str = "tensor"           # layer kind: conv2d, linear, batch_norm, ... (spec: Layer kinds)
    role: str = ""                 # weight, bias, running_mean, ... (spec: Roles)
    layer: str = ""                # module path of the layer the tensor belongs to
    original_name: str = ""        # name in the source checkpoint
    original_dtype: str = ""       # dtype in the source checkpoint
    original_layout: str = ""      # e.g. HWIO for a TensorFlow conv kernel; "" when canonical
    original_shape: tuple | None = None
    tied_to: str | None = None     # name of the tensor this one shares storage with

    def to_json(self) -> dict:
        # Field by field, not dataclasses.asdict: that deep-copies every value and ran at 40 us a
        # tensor, the largest single cost of writing a manifest of 20,000 tensors (#18).
        d = {k: v for k in _INFO_FIELDS if (v := getattr(self, k)) not in ("", None)}
        if self.original_shape is not None:
            d["original_shape"] = list(self.original_shape)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TensorInfo":
        # Kinds, roles, dtypes and layer paths repeat across tensors: one string object each.
        # Field by field, not a dict comprehension: a manifest may list a million tensors (#13).
        get = d.get
        kind, role, layer = get("kind", "tensor"), get("role", ""), get("layer", "")
        dtype, layout, shape = get("original_dtype", ""), get("original_layout", ""), get("original_shape")
        return cls(_intern(kind) if type(kind) is str else kind, _intern(role) if type(role) is str else role,
                   _intern(layer) if type(layer) is str else layer, get("original_name", ""),
                   _intern(dtype) if type(dtype) is str else dtype, _intern(layout) if type(layout) is str else layout,
                   tuple(shape) if shape is not None else None, get("tied_to"))


_intern = sys.intern
_INFO_FIELDS = tuple(f.name for f in dataclasses.fields(TensorInfo))


@dataclass(slots=True)
class Entry:
    """One named tensor of a checkpoint: its data and what it is."""

    tensor: LazyTensor
    info: TensorInfo


@dataclass
class LayerInfo:
    """Attributes of a layer that change its outputs (spec: Layer attributes)."""

    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceInfo:
    framework: str = ""
    framework_version: str = ""
    file: str = ""
    format: str = ""


@dataclass
class Checkpoint:
    """A canonical checkpoint: ordered named tensors, layer attributes, non-tensor content.

    `entries` is ordered as the source stored (or the model declared) its parameters; order is
    information that alignment uses. Tied tensors appear under every name, with `info.tied_to`
    naming the first; writers that can store a tie store the data once.
    """

    entries: dict[str, Entry] = field(default_factory=dict)
    layers: dict[str, LayerInfo] = field(default_factory=dict)
    source: SourceInfo = field(default_factory=SourceInfo)
    extra: dict[str, Any] = field(default_factory=dict)
    report: Report = field(default_factory=Report)

    def add(self, name: str, tensor: LazyTensor, info: TensorInfo | None = None) -> Entry:
        if name in self.entries:
            raise ValueError(f"duplicate tensor name {name!r}")
        info = info or TensorInfo()
        if not (info.role and info.layer):
            layer, _, role = name.rpartition(".")
            # interned: a layer's tensors share its path, and every bias one "bias"
            info.layer = info.layer or sys.intern(layer)
            info.role = info.role or sys.intern(role)
        if not info.original_name or info.original_name == name:
            info.original_name = name          # the key's own string object, not an equal copy
        info.original_dtype = info.original_dtype or tensor.dtype
        entry = Entry(tensor, info)
        self.entries[name] = entry
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str) -> Entry:
        return self.entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def array(self, name: str) -> np.ndarray:
        """One tensor's data, loaded now, as a numpy array (`ckpt[name].tensor` is the lazy
        LazyTensor, `ckpt[name].info` what it is)."""
        return self.entries[name].tensor.load()

    # The old name of `array`, kept so existing code runs; `ckpt[name].tensor` is a LazyTensor,
    # so one word meant two things: new code says array().
    tensor = array

    def total_bytes(self) -> int:
        return sum(e.tensor.nbytes for e in self.entries.values() if not e.info.tied_to)

    def stored_names(self) -> list[str]:
        """Names whose data must be stored (aliases of tied tensors excluded)."""
        return [n for n, e in self.entries.items() if not e.info.tied_to]
