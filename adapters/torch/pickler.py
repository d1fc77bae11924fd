"""torch's data.pkl, written by hand: hubfmt.pickle_emit's protocol-2 plain values plus torch's
tensor rebuilds, only globals torch.load(weights_only=True) accepts. hubfmt never calls
pickle.dump on torch's behalf: what goes into the file is exactly what this module writes.

>>> emit({"w": TensorRecord("0", "float32", 2, (2,), (1,))})[:2]
b'\\x80\\x02'
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from hubfmt.sdk import PickleEmitter, dtypes

_U32 = struct.Struct("<I").pack

# canonical dtype -> legacy storage class torch pickles (_rebuild_tensor_v2); dtypes without one
# go through UntypedStorage + _rebuild_tensor_v3, as torch itself does.
STORAGE_CLASSES = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
    "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
    "complex64": "ComplexFloatStorage",
}
UNTYPED_DTYPES = {"uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2"}


@dataclass(slots=True)
class TensorRecord:
    """A tensor to pickle: a view of storage `key` (`numel` elements of `dtype`); shape and
    stride are tuples of Python ints. Not frozen: a frozen dataclass's __init__ costs ~1 us more,
    once per tensor (#18)."""

    key: str
    dtype: str
    numel: int
    shape: tuple
    stride: tuple


def _rebuild_parts(dtype: str) -> tuple[bytes, bytes]:
    """The opcodes of a tensor of `dtype` before its storage key and after its sizes: the same
    for every tensor of that dtype, so built once (see _Emitter.tensor for what they say)."""
    e = PickleEmitter()
    e.out.clear()
    untyped = dtype in UNTYPED_DTYPES
    e.global_("torch._utils", "_rebuild_tensor_v3" if untyped else "_rebuild_tensor_v2")
    e.out += b"(("
    e.value("storage")
    if untyped:
        e.global_("torch.storage", "UntypedStorage")
    else:
        e.global_("torch", STORAGE_CLASSES[dtype])
    head = bytes(e.out)
    e.out.clear()
    e.out += b"\x89"              # requires_grad=False
    e.global_("collections", "OrderedDict")
    e.out += b")R"                # backward hooks: OrderedDict()
    if untyped:
        e.global_("torch", dtype)
    e.out += b"tR"                # TUPLE, REDUCE
    return head, bytes(e.out)


_PARTS = {dt: _rebuild_parts(dt) for dt in (*STORAGE_CLASSES, *UNTYPED_DTYPES)}
_CPU = b"X\x03\x00\x00\x00cpu"
_SIZES_KEPT = 4096                # distinct (numel, shape, stride) encodings an emitter keeps


class _Emitter(PickleEmitter):
    """Protocol 2, plain values as hubfmt.pickle_emit writes them, and torch's tensor rebuilds."""

    def __init__(self):
        super().__init__()
        self._sizes: dict[tuple, bytes] = {}     # (numel, shape, stride) -> their opcodes

    def value(self, v, depth: int = 0) -> None:
        if type(v) is TensorRecord and depth <= self.MAX_DEPTH:     # most values of a state dict
            self.tensor(v)
        else:
            super().value(v, depth)

    def extension(self, v, depth: int) -> None:
        if not isinstance(v, TensorRecord):
            raise TypeError(f"cannot pickle a {type(v).__name__} for torch.load(weights_only=True)")
        self.tensor(v)

    def tensor(self, t: TensorRecord) -> None:
        """_rebuild_tensor_v2(persistent id ('storage', storage class, key, 'cpu', numel), offset 0,
        shape, stride, requires_grad False, OrderedDict()) -- v3 with the dtype for UntypedStorage,
        numel then counting bytes. Constant parts come from _PARTS, sizes from a small cache:
        layers repeat shapes."""
        parts = _PARTS.get(t.dtype)
        if parts is None:
            raise TypeError(f"torch has no storage for dtype {t.dtype}")
        numel = t.numel * dtypes.itemsize(t.dtype) if t.dtype in UNTYPED_DTYPES else t.numel
        key = (numel, t.shape, t.stride)
        sizes = self._sizes.get(key)
        if sizes is None:
            sizes = self._encode_sizes(*key)
            if len(self._sizes) < _SIZES_KEPT:
                self._sizes[key] = sizes
        raw = t.key.encode("utf-8", "surrogatepass")
        self.out += parts[0] + b"X" + _U32(len(raw)) + raw + _CPU + sizes + parts[1]

    def _encode_sizes(self, numel: int, shape: tuple, stride: tuple) -> bytes:
        out, self.out = self.out, bytearray()
        try:
            self.integer(numel)          # of the storage: bytes for an UntypedStorage
            self.out += b"tQ"            # TUPLE, BINPERSID
            self.integer(0)              # storage offset
            self.tuple_(shape, 0)
            self.tuple_(stride, 0)
            return bytes(self.out)
        finally:
            self.out = out


def emit(obj) -> bytes:
    """The pickle of `obj`: plain values, dicts (OrderedDict kept), lists, tuples, bytes and
    TensorRecords. Anything else is a TypeError."""
    e = _Emitter()
    e.value(obj)
    return e.finish()
