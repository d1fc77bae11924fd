"""The in-memory form of the neutral format: a lazy, canonical checkpoint.

Every importer returns a `Checkpoint`; every exporter consumes one. Tensors are `LazyTensor`s: their
shape and dtype are known up front (so a writer can lay out its file before any data is read) and
their data is read only when `load()` is called, one tensor at a time. That is what lets a
conversion stream a model without holding it in memory.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from . import dtypes
from .report import Report


@dataclass(frozen=True)
class FileSpan:
    """Where a tensor's bytes already lie, exactly as a writer would emit them (little-endian,
    C order, `dtype` of the LazyTensor). Lets writers copy file-to-file without a Python buffer."""

    path: str
    offset: int
    nbytes: int


class LazyTensor:
    """A tensor whose data is read on demand.

    `dtype` is a canonical name (see hubfmt.dtypes); `load()` returns a C-contiguous little-endian
    numpy array of `storage_dtype(dtype)` and `shape`. Transformations (`map`, `astype`) compose
    lazily; they drop `span`, since the bytes on disk no longer match.
    """

    __slots__ = ("shape", "dtype", "_loader", "span")

    def __init__(self, shape, dtype: str, loader: Callable[[], np.ndarray], span: FileSpan | None = None):
        if dtype not in dtypes.DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}")
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self._loader = loader
        self.span = span

    @classmethod
    def from_array(cls, array: np.ndarray, dtype: str | None = None) -> "LazyTensor":
        name = dtype or dtypes.name_of(array.dtype)
        # ascontiguousarray turns a 0-d array into shape (1,): reshape keeps scalars scalars.
        arr = np.ascontiguousarray(array, dtype=dtypes.storage_dtype(name)).reshape(np.shape(array))
        return cls(arr.shape, name, lambda: arr)

    @property
    def nbytes(self) -> int:
        n = dtypes.itemsize(self.dtype)
        for d in self.shape:
            n *= d
        return n

    def load(self) -> np.ndarray:
        arr = self._loader()
        want = dtypes.storage_dtype(self.dtype)
        if arr.dtype != want:
            arr = arr.astype(want)
        if tuple(arr.shape) != self.shape:
            arr = arr.reshape(self.shape)
        # ascontiguousarray turns a 0-d array into shape (1,): reshape keeps scalars scalars.
        return np.ascontiguousarray(arr).reshape(self.shape)

    def map(self, fn: Callable[[np.ndarray], np.ndarray], shape, dtype: str | None = None) -> "LazyTensor":
        """A new LazyTensor whose data is fn(self.load()); `shape`/`dtype` describe the result."""
        return LazyTensor(shape, dtype or self.dtype, lambda: fn(self.load()))

    def astype(self, dtype: str) -> "LazyTensor":
        if dtype == self.dtype:
            return self
        src = self.dtype
        return LazyTensor(self.shape, dtype, lambda: dtypes.convert(self.load(), src, dtype))

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


@dataclass
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
        d = dataclasses.asdict(self)
        if d["original_shape"] is not None:
            d["original_shape"] = list(d["original_shape"])
        return {k: v for k, v in d.items() if v not in ("", None)}

    @classmethod
    def from_json(cls, d: dict) -> "TensorInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("original_shape") is not None:
            kw["original_shape"] = tuple(kw["original_shape"])
        return cls(**kw)


@dataclass
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
            info.layer = info.layer or layer
            info.role = info.role or role
        info.original_name = info.original_name or name
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

    def tensor(self, name: str) -> np.ndarray:
        """Load one tensor's data (convenience for tests and the Python API)."""
        return self.entries[name].tensor.load()

    def total_bytes(self) -> int:
        return sum(e.tensor.nbytes for e in self.entries.values() if not e.info.tied_to)

    def stored_names(self) -> list[str]:
        """Names whose data must be stored (aliases of tied tensors excluded)."""
        return [n for n, e in self.entries.items() if not e.info.tied_to]


def file_span(path: str | os.PathLike, offset: int, dtype: str, shape) -> FileSpan:
    n = dtypes.itemsize(dtype)
    for d in shape:
        n *= int(d)
    return FileSpan(os.fspath(path), offset, n)


def read_region(path: str, offset: int, dtype: str, shape) -> np.ndarray:
    """Read one tensor's bytes from a file with pread (no mmap: touched mmap pages count as
    resident memory, and a streaming converter must not grow with the model)."""
    st = dtypes.storage_dtype(dtype)
    count = 1
    for d in shape:
        count *= int(d)
    out = np.empty(count, dtype=st)
    if count:
        fd = os.open(path, os.O_RDONLY)
        try:
            pread_into(fd, memoryview(out).cast("B"), offset, path)
        finally:
            os.close(fd)
    return out.reshape(tuple(int(d) for d in shape))


def pread_into(fd: int, buf: memoryview, offset: int, path: str) -> None:
    """Fill `buf` with the bytes at `offset` of the open file `fd` (`path` names it in errors)."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            from .errors import FormatError
            raise FormatError(f"file ends inside a tensor (wanted {len(buf)} bytes at offset {offset})", path)
        done += n


def region_tensor(path: str | os.PathLike, offset: int, dtype: str, shape) -> LazyTensor:
    """A LazyTensor for `shape` elements of `dtype` stored little-endian at `offset` in `path`."""
    p = os.fspath(path)
    return LazyTensor(shape, dtype, lambda: read_region(p, offset, dtype, shape), file_span(p, offset, dtype, shape))
