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


class Pickled:
    """One value's opcodes, already encoded (a StateDict's): emit_parts passes them through as
    they are, without copying them into the rest of the pickle."""

    __slots__ = ("opcodes",)

    def __init__(self, opcodes: bytearray):
        self.opcodes = opcodes


class _Emitter(PickleEmitter):
    """Protocol 2, plain values as hubfmt.pickle_emit writes them, and torch's tensor rebuilds."""

    def __init__(self):
        super().__init__()
        self._sizes: dict[tuple, bytes] = {}     # (numel, shape, stride) -> their opcodes
        self.parts: list[bytes | bytearray] = []     # what came before the current `out`

    def value(self, v, depth: int = 0) -> None:
        kind = type(v)
        if kind is TensorRecord and depth <= self.MAX_DEPTH:     # most values of a state dict
            self.tensor(v)
        elif kind is Pickled:
            self.parts += (self.out, v.opcodes)
            self.out = bytearray()
        else:
            super().value(v, depth)

    def extension(self, v, depth: int) -> None:
        if not isinstance(v, TensorRecord):
            raise TypeError(f"cannot pickle a {type(v).__name__} for torch.load(weights_only=True)")
        self.tensor(v)

    def tensor(self, t: TensorRecord) -> None:
        self.tensor_of(t.key, t.dtype, t.numel, t.shape, t.stride)

    def tensor_of(self, key: str, dtype: str, numel: int, shape: tuple, stride: tuple) -> None:
        self.out += self.tensor_opcodes(key, dtype, numel, shape, stride)

    def tensor_opcodes(self, key: str, dtype: str, numel: int, shape: tuple, stride: tuple, before: bytes = b"") -> bytes:
        """_rebuild_tensor_v2(persistent id ('storage', storage class, key, 'cpu', numel), offset 0,
        shape, stride, requires_grad False, OrderedDict()) -- v3 with the dtype for UntypedStorage,
        numel then counting bytes. Constant parts come from _PARTS, sizes from a small cache:
        layers repeat shapes. `before`: opcodes to put first (a dict key), in the same join."""
        parts = _PARTS.get(dtype)
        if parts is None:
            raise TypeError(f"torch has no storage for dtype {dtype}")
        if dtype in UNTYPED_DTYPES:
            numel *= dtypes.itemsize(dtype)
        sized = (numel, shape, stride)
        sizes = self._sizes.get(sized)
        if sizes is None:
            sizes = self._encode_sizes(numel, shape, stride)
            if len(self._sizes) < _SIZES_KEPT:
                self._sizes[sized] = sizes
        raw = key.encode("utf-8", "surrogatepass")
        return b"".join((before, parts[0], b"X", _U32(len(raw)), raw, _CPU, sizes, parts[1]))

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


class StateDict:
    """A state dict (an OrderedDict of tensors) pickled a tensor at a time: the opcodes emit()
    writes for an OrderedDict of TensorRecords, without a record object per tensor (#18).

    >>> import collections
    >>> sd = StateDict(); sd.add("w", "0", "float32", 2, (2,), (1,))
    >>> emit(sd.pickled()) == emit(collections.OrderedDict(w=TensorRecord("0", "float32", 2, (2,), (1,))))
    True
    """

    def __init__(self):
        self._e = _Emitter()
        self._e.out.clear()
        self._e.global_("collections", "OrderedDict")
        self._e.out += b")R"
        self.count = 0
        self._done: Pickled | None = None

    def add(self, name: str, key: str, dtype: str, numel: int, shape: tuple, stride: tuple) -> None:
        """Tensor `name`: a view of storage `key` (see TensorRecord)."""
        assert self._done is None, "add() after pickled()"
        e = self._e
        if not self.count:
            e.out += b"("                # MARK: items follow (an empty dict has none)
        self.count += 1
        parts = _PARTS.get(dtype) if dtype not in UNTYPED_DTYPES else None
        sizes = e._sizes.get((numel, shape, stride)) if parts is not None else None
        if sizes is not None and type(name) is str:
            # The usual case, tensor_opcodes inline (a call less per tensor): a key (str) and a
            # typed tensor whose sizes were encoded before.
            raw, k = name.encode("utf-8", "surrogatepass"), key.encode("utf-8", "surrogatepass")
            e.out += b"".join((b"X", _U32(len(raw)), raw, parts[0], b"X", _U32(len(k)), k, _CPU, sizes, parts[1]))
        elif type(name) is str:
            raw = name.encode("utf-8", "surrogatepass")
            e.out += e.tensor_opcodes(key, dtype, numel, shape, stride, b"X" + _U32(len(raw)) + raw)
        else:
            e.value(name, 1)
            e.tensor_of(key, dtype, numel, shape, stride)

    def pickled(self) -> Pickled:
        if self._done is None:
            if self.count:
                self._e.out += b"u"      # SETITEMS
            self._done = Pickled(self._e.out)
        return self._done


def emit_parts(obj) -> list[bytes | bytearray]:
    """The pickle of `obj` in pieces, to be written one after the other: a Pickled value's
    opcodes are one of them, not copied (a million tensors' state dict is ~140 MB)."""
    e = _Emitter()
    e.value(obj)
    e.out += b"."                        # STOP
    return [p for p in (*e.parts, e.out) if p]


def emit(obj) -> bytes:
    """The pickle of `obj`: plain values, dicts (OrderedDict kept), lists, tuples, bytes,
    TensorRecords and Pickled values. Anything else is a TypeError."""
    return b"".join(emit_parts(obj))
