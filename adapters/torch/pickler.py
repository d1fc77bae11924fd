"""A small protocol-2 pickle emitter for torch's data.pkl: only the opcodes a state dict needs and
only globals torch.load(weights_only=True) accepts. hubfmt never calls pickle.dump on torch's
behalf: what goes into the file is exactly what this module writes.

>>> emit({"w": TensorRecord("0", "float32", 2, (2,), (1,))})[:2]
b'\\x80\\x02'
"""
from __future__ import annotations

import collections
import struct
from dataclasses import dataclass

# canonical dtype -> legacy storage class torch pickles (_rebuild_tensor_v2); dtypes without one
# go through UntypedStorage + _rebuild_tensor_v3, as torch itself does.
STORAGE_CLASSES = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
    "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
    "complex64": "ComplexFloatStorage",
}
UNTYPED_DTYPES = {"uint16", "uint32", "uint64"}


@dataclass(frozen=True)
class TensorRecord:
    """A tensor to pickle: a view of storage `key` (`numel` elements of `dtype`)."""

    key: str
    dtype: str
    numel: int
    shape: tuple
    stride: tuple


class _Emitter:
    def __init__(self):
        self.out = bytearray(b"\x80\x02")     # PROTO 2

    def glob(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def value(self, v, depth: int = 0) -> None:
        if depth > 100:
            raise ValueError("non-tensor content nests more than 100 levels deep")
        out = self.out
        if v is None:
            out += b"N"
        elif v is True:
            out += b"\x88"
        elif v is False:
            out += b"\x89"
        elif isinstance(v, int):
            self.integer(v)
        elif isinstance(v, float):
            out += b"G" + struct.pack(">d", v)
        elif isinstance(v, str):
            raw = v.encode("utf-8", "surrogatepass")
            out += b"X" + struct.pack("<I", len(raw)) + raw
        elif isinstance(v, (bytes, bytearray)):
            # Protocol 2 has no bytes opcode: _codecs.encode(latin-1 text), as pickle itself does.
            self.glob("_codecs", "encode")
            self.value((bytes(v).decode("latin-1"), "latin1"), depth + 1)
            out += b"R"
        elif isinstance(v, TensorRecord):
            self.tensor(v)
        elif isinstance(v, tuple):
            self.tuple(v, depth)
        elif isinstance(v, list):
            out += b"]"
            if v:
                out += b"("
                for item in v:
                    self.value(item, depth + 1)
                out += b"e"
        elif isinstance(v, dict):
            if isinstance(v, collections.OrderedDict):
                self.glob("collections", "OrderedDict")
                out += b")R"
            else:
                out += b"}"
            if v:
                out += b"("
                for k, item in v.items():
                    self.value(k, depth + 1)
                    self.value(item, depth + 1)
                out += b"u"
        else:
            raise TypeError(f"cannot pickle a {type(v).__name__} for torch.load(weights_only=True)")

    def integer(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -(2**31) <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def tuple(self, v: tuple, depth: int) -> None:
        if not v:
            self.out += b")"
            return
        if len(v) > 3:
            self.out += b"("
        for item in v:
            self.value(item, depth + 1)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(v), b"t")

    def tensor(self, t: TensorRecord) -> None:
        untyped = t.dtype in UNTYPED_DTYPES
        if not untyped and t.dtype not in STORAGE_CLASSES:
            raise TypeError(f"torch has no storage for dtype {t.dtype}")
        self.glob("torch._utils", "_rebuild_tensor_v3" if untyped else "_rebuild_tensor_v2")
        self.out += b"("
        # persistent id ('storage', storage class, key, location, numel)
        self.out += b"("
        self.value("storage")
        if untyped:
            from hubfmt import dtypes
            self.glob("torch.storage", "UntypedStorage")
            numel = t.numel * dtypes.itemsize(t.dtype)
        else:
            self.glob("torch", STORAGE_CLASSES[t.dtype])
            numel = t.numel
        self.value(t.key)
        self.value("cpu")
        self.integer(numel)
        self.out += b"tQ"            # TUPLE, BINPERSID
        self.integer(0)              # storage offset
        self.tuple(t.shape, 0)
        self.tuple(t.stride, 0)
        self.out += b"\x89"          # requires_grad=False
        self.glob("collections", "OrderedDict")
        self.out += b")R"            # backward hooks: OrderedDict()
        if untyped:
            self.glob("torch", t.dtype)
        self.out += b"tR"            # TUPLE, REDUCE


def emit(obj) -> bytes:
    """The pickle of `obj`: plain values, dicts (OrderedDict kept), lists, tuples, bytes and
    TensorRecords. Anything else is a TypeError."""
    e = _Emitter()
    e.value(obj)
    e.out += b"."
    return bytes(e.out)
