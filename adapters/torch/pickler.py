"""torch's data.pkl, written by hand: hubfmt.pickle_emit's protocol-2 plain values plus torch's
tensor rebuilds, only globals torch.load(weights_only=True) accepts. hubfmt never calls
pickle.dump on torch's behalf: what goes into the file is exactly what this module writes.

>>> emit({"w": TensorRecord("0", "float32", 2, (2,), (1,))})[:2]
b'\\x80\\x02'
"""
from __future__ import annotations

from dataclasses import dataclass

from hubfmt.sdk import PickleEmitter

# canonical dtype -> legacy storage class torch pickles (_rebuild_tensor_v2); dtypes without one
# go through UntypedStorage + _rebuild_tensor_v3, as torch itself does.
STORAGE_CLASSES = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
    "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
    "complex64": "ComplexFloatStorage",
}
UNTYPED_DTYPES = {"uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2"}


@dataclass(frozen=True)
class TensorRecord:
    """A tensor to pickle: a view of storage `key` (`numel` elements of `dtype`)."""

    key: str
    dtype: str
    numel: int
    shape: tuple
    stride: tuple


class _Emitter(PickleEmitter):
    """Protocol 2, plain values as hubfmt.pickle_emit writes them, and torch's tensor rebuilds."""

    def extension(self, v, depth: int) -> None:
        if not isinstance(v, TensorRecord):
            raise TypeError(f"cannot pickle a {type(v).__name__} for torch.load(weights_only=True)")
        self.tensor(v)

    def tensor(self, t: TensorRecord) -> None:
        untyped = t.dtype in UNTYPED_DTYPES
        if not untyped and t.dtype not in STORAGE_CLASSES:
            raise TypeError(f"torch has no storage for dtype {t.dtype}")
        self.global_("torch._utils", "_rebuild_tensor_v3" if untyped else "_rebuild_tensor_v2")
        self.out += b"("
        # persistent id ('storage', storage class, key, location, numel)
        self.out += b"("
        self.value("storage")
        if untyped:
            from hubfmt.sdk import dtypes
            self.global_("torch.storage", "UntypedStorage")
            numel = t.numel * dtypes.itemsize(t.dtype)
        else:
            self.global_("torch", STORAGE_CLASSES[t.dtype])
            numel = t.numel
        self.value(t.key)
        self.value("cpu")
        self.integer(numel)
        self.out += b"tQ"            # TUPLE, BINPERSID
        self.integer(0)              # storage offset
        self.tuple_(t.shape, 0)
        self.tuple_(t.stride, 0)
        self.out += b"\x89"          # requires_grad=False
        self.global_("collections", "OrderedDict")
        self.out += b")R"            # backward hooks: OrderedDict()
        if untyped:
            self.global_("torch", t.dtype)
        self.out += b"tR"            # TUPLE, REDUCE


def emit(obj) -> bytes:
    """The pickle of `obj`: plain values, dicts (OrderedDict kept), lists, tuples, bytes and
    TensorRecords. Anything else is a TypeError."""
    e = _Emitter()
    e.value(obj)
    return e.finish()
