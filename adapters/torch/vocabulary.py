"""torch's pickle vocabulary, mapped to inert stand-ins for hubfmt.safe_pickle.

A torch.save pickle names a handful of torch callables: tensor rebuild functions, storage classes,
dtypes, torch.Size, torch.device. Each maps here to a function of ours that only records what the
file describes (a `TensorRef` over a `Storage`); nothing from torch is imported or called.

>>> allowed = allow_list(nested_loader=None)
>>> allowed[("torch", "Size")]((2, 3))
(2, 3)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from hubfmt.sdk import ConversionError, dtypes

# Every stand-in has __slots__: a pickle's BUILD opcode cannot rewrite an object's fields.

# Legacy typed storage classes -> canonical dtype name (None: not representable in the hub).
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": None, "QInt8Storage": None,
    "QUInt8Storage": None, "QInt32Storage": None, "QUInt4x2Storage": None, "QUInt2x4Storage": None,
}
# Untyped storages hold bytes; _rebuild_tensor_v3 names the dtype separately.
UNTYPED_STORAGES = ("UntypedStorage", "_UntypedStorage", "TypedStorage", "_TypedStorage")

# torch.<dtype> globals -> canonical name (None: known to torch, not to the hub).
TORCH_DTYPES = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64",
    "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "short": "int16",
    "int8": "int8", "uint8": "uint8", "bool": "bool", "complex64": "complex64", "cfloat": "complex64",
    "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "complex128": None, "cdouble": None, "complex32": None, "chalf": None, "float8_e4m3fn": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2", "float8_e4m3fnuz": None, "float8_e5m2fnuz": None, "qint8": None,
    "quint8": None, "qint32": None,
}


class TorchDtype(str):
    """A torch.<dtype> global met in a pickle: the string "torch.float16", with `.hub` the
    canonical dtype name (None when the hub has no such dtype)."""

    hub: str | None = None


def _dtype_global(name: str) -> TorchDtype:
    d = TorchDtype(f"torch.{name}")
    d.hub = TORCH_DTYPES[name]
    return d


@dataclass(eq=False, slots=True)
class StorageType:
    """The class object a persistent id names (torch.FloatStorage, torch.storage.UntypedStorage)."""

    name: str
    dtype: str | None       # None for untyped (bytes) storages


@dataclass(eq=False, slots=True)
class Storage:
    """One torch storage: `numel` elements of `dtype` (untyped: bytes, dtype "uint8").

    `data` is set by the reader once it knows where the bytes lie (a `Blob`); a legacy view
    storage points at its root with `root_offset` in elements."""

    key: str
    dtype: str | None
    numel: int
    type_name: str
    data: Any = None
    root: "Storage | None" = None
    root_offset: int = 0

    @property
    def untyped(self) -> bool:
        return self.type_name in UNTYPED_STORAGES


@dataclass(eq=False, slots=True)
class TensorRef:
    """A tensor as the pickle describes it: a strided view of a storage. No data is read."""

    storage: Storage
    offset: int
    shape: tuple
    stride: tuple
    dtype: str | None
    parameter: bool = False
    requires_grad: bool = False


class _TensorClass:
    """torch.Tensor / torch.nn.parameter.Parameter named by _rebuild_from_type_v2."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


def _ints(value, what: str) -> tuple:
    if isinstance(value, (tuple, list)):
        for v in value:
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                break
        else:
            return value if type(value) is tuple else tuple(value)
    raise ValueError(f"tensor {what} is not a tuple of non-negative integers: {value!r}")


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _tensor(storage, storage_offset, size, stride, None, requires_grad)


def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, TorchDtype):
        raise ValueError(f"_rebuild_tensor_v3 with a dtype that is not a torch dtype: {dtype!r}")
    if dtype.hub is None:
        raise ConversionError(f"a valid file, but tensor dtype {dtype} is not supported: the hub format "
                              f"has no equivalent (it holds {', '.join(sorted(dtypes.DTYPES))})")
    return _tensor(storage, storage_offset, size, stride, dtype.hub, requires_grad)


def rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride, None, False)


def _tensor(storage, offset, size, stride, dtype, requires_grad) -> TensorRef:
    if not isinstance(storage, Storage):
        raise ValueError(f"tensor rebuilt from something that is not a storage: {type(storage).__name__}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"tensor storage offset is not a non-negative integer: {offset!r}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise ValueError(f"tensor size {shape} and stride {strides} differ in rank")
    if dtype is None:
        if storage.untyped:
            raise ValueError("typed tensor rebuild over an untyped storage without a dtype")
        dtype = storage.dtype
    return TensorRef(storage, offset, shape, strides, dtype, requires_grad=bool(requires_grad))


def rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, TensorRef):
        raise ValueError("Parameter rebuilt from something that is not a tensor")
    data.parameter = True
    data.requires_grad = bool(requires_grad)
    return data


def rebuild_from_type_v2(func, new_type, args, state):
    # A Tensor/Parameter with Python attributes: rebuild the plain tensor, keep nothing else.
    if func not in (rebuild_tensor_v2, rebuild_tensor_v3, rebuild_tensor, rebuild_parameter):
        raise ValueError("_rebuild_from_type_v2 with a function outside the allow-list")
    if not isinstance(new_type, _TensorClass) or not isinstance(args, tuple):
        raise ValueError("_rebuild_from_type_v2 of a class other than torch.Tensor/Parameter")
    t = func(*args)
    if new_type.name == "Parameter":
        t.parameter = True
    return t


def _size(*args):
    return tuple(*args)


def _device(*args):
    return ":".join(str(a) for a in args)


def allow_list(nested_loader: Callable[[bytes], Any] | None) -> dict[tuple[str, str], Callable]:
    """(module, name) -> our stand-in, for hubfmt.safe_pickle.RestrictedUnpickler.

    `nested_loader(bytes)` reads a torch file embedded by torch.storage._load_from_bytes (legacy
    files) with this same restricted reader; None refuses such files."""
    allowed: dict[tuple[str, str], Callable] = {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): rebuild_tensor_v3,
        ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): rebuild_from_type_v2,
        ("torch", "Size"): _size,
        ("torch", "device"): _device,
        ("torch", "Tensor"): _TensorClass("Tensor"),
        ("torch._tensor", "Tensor"): _TensorClass("Tensor"),
        ("torch.nn.parameter", "Parameter"): _TensorClass("Parameter"),
    }
    for name, dt in STORAGE_DTYPES.items():
        allowed[("torch", name)] = StorageType(name, dt)
    for name in UNTYPED_STORAGES:
        allowed[("torch.storage", name)] = StorageType(name, None)
        allowed[("torch", name)] = StorageType(name, None)
    for name in TORCH_DTYPES:
        allowed[("torch", name)] = _dtype_global(name)
    if nested_loader is not None:
        allowed[("torch.storage", "_load_from_bytes")] = nested_loader
    return allowed


def storage_from_pid(pid: tuple, storages: dict[str, Storage]) -> Storage:
    """The Storage a ('storage', type, key, location, numel[, view]) persistent id names, one
    object per key (so tensors sharing a storage share the object: that is how ties show)."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise ValueError(f"unexpected persistent id {str(pid)[:80]}")
    stype, key, _location, numel = pid[1:5]
    if not isinstance(stype, StorageType):
        raise ValueError(f"persistent id names a storage type outside the allow-list: {stype!r}")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"malformed storage persistent id {str(pid)[:80]}")
    if stype.dtype is None and stype.name not in UNTYPED_STORAGES:
        raise ConversionError(f"a valid file, but storage type {stype.name} is not supported: the hub format "
                              f"has no equivalent (it holds {', '.join(sorted(dtypes.DTYPES))})")
    root = storages.get(key)
    if root is None:
        root = storages[key] = Storage(key, stype.dtype or "uint8", numel, stype.name)
    elif root.dtype != (stype.dtype or "uint8"):
        raise ValueError(f"storage {key} is named with two dtypes")
    view = pid[5] if len(pid) == 6 else None
    if view is None:
        return root
    # Legacy view storages: (view_key, offset, size) into the root, in elements.
    if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
            and all(isinstance(v, int) and v >= 0 for v in view[1:])):
        raise ValueError(f"malformed storage view {view!r}")
    view_key, offset, size = view
    if offset + size > root.numel:
        raise ValueError(f"storage view {view_key} exceeds its storage {key}")
    existing = storages.get(view_key)
    if existing is None:
        existing = storages[view_key] = Storage(view_key, root.dtype, size, root.type_name, root=root, root_offset=offset)
    return existing
