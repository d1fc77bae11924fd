"""ONNX's protobuf messages (onnx/onnx.proto), scanned from the file without onnx.

Only what weights need is decoded: ModelProto (ir_version 1, opset_import 8, producer 2/3, graph 7),
GraphProto (node 1, initializer 5, sparse_initializer 15), NodeProto (input 1, output 2, name 3,
op_type 4, attribute 5), AttributeProto (name 1, f 2, i 3, ints 8) and TensorProto (dims 1,
data_type 2, segment 3, float_data 4, int32_data 5, string_data 6, int64_data 7, name 8, raw_data 9,
double_data 10, uint64_data 11, external_data 13, data_location 14). Every other field is skipped
and, in a tensor or graph, kept as a byte range so the writer can copy it unchanged.

The model is never read whole: a FileCursor walks the fields; raw tensor data is only located
(offset, length), nodes are read one at a time.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np

from hubfmt.sdk import FileCursor, FormatError, dtypes, protowire

VARINT, FIXED64, LEN, FIXED32 = protowire.VARINT, protowire.FIXED64, protowire.LENGTH_DELIMITED, protowire.FIXED32

# TensorProto.DataType -> canonical dtype (the ones hubfmt carries)
DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
          10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 16: "bfloat16"}
CODE_OF = {v: k for k, v in DTYPES.items()}
# typed field number -> the numpy type its values are decoded as
TYPED_FIELDS = {4: "<f4", 5: "int32", 7: "int64", 10: "<f8", 11: "uint64"}
DATA_FIELDS = frozenset({3, 4, 5, 6, 7, 9, 10, 11, 13, 14})
EXTERNAL = 1            # TensorProto.DataLocation


@dataclass
class Initializer:
    """One TensorProto of graph.initializer, located in the file."""

    name: str
    dims: tuple
    data_type: int
    field_start: int            # where its graph field (key) starts
    start: int                  # its message content: [start, end)
    end: int
    raw: tuple[int, int] | None = None          # (offset, length) of raw_data
    typed: int = 0                              # the typed-data field number holding its values
    external: dict[str, str] = field(default_factory=dict)
    location: int = 0
    keep: list[tuple[int, int]] = field(default_factory=list)   # non-data fields' byte ranges


@dataclass
class Node:
    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict


@dataclass
class Model:
    path: str
    size: int
    top: list[tuple[int, int, int]] = field(default_factory=list)     # (field, start, end) of ModelProto
    graph_field: int = -1                       # index in `top` of the graph field
    graph_start: int = 0                        # the graph's content [graph_start, graph_end)
    graph_end: int = 0
    graph: list[tuple[int, int, int]] = field(default_factory=list)   # (field, start, end) of GraphProto
    initializers: list[Initializer] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    ir_version: int = 0
    opset: int = 0
    producer: str = ""
    sparse: int = 0


class _Scanner:
    def __init__(self, f, path: str, size: int):
        self.c = FileCursor(f, size, path, "not a valid ONNX model")
        self.path = path

    def key(self, limit: int) -> tuple[int, int]:
        k = self.c.varint(limit, "field key")
        num, wt = k >> 3, k & 7
        if num == 0:
            self.c.fail("field number 0")
        return num, wt

    def skip(self, wt: int, limit: int, what: str) -> None:
        if wt == VARINT:
            self.c.varint(limit, what)
        elif wt == FIXED64:
            self.c.skip(8, limit, what)
        elif wt == FIXED32:
            self.c.skip(4, limit, what)
        elif wt == LEN:
            n = self.c.varint(limit, what)
            self.c.skip(n, limit, what)
        else:
            self.c.fail(f"{what}: unsupported wire type {wt}")

    def length(self, wt: int, limit: int, what: str) -> int:
        if wt != LEN:
            self.c.fail(f"{what}: wire type {wt}, expected a length-delimited field")
        n = self.c.varint(limit, what)
        self.c.need(n, limit, what)
        return n

    def text(self, wt: int, limit: int, what: str) -> str:
        raw = self.c.read(self.length(wt, limit, what), limit, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.c.fail(f"{what} is not UTF-8")
            raise       # unreachable: fail raises

    def model(self) -> Model:
        c = self.c
        m = Model(self.path, c.end)
        while c.pos < c.end:
            start = c.pos
            num, wt = self.key(c.end)
            if num == 7 and wt == LEN:
                if m.graph_field >= 0:
                    c.fail("a second graph field")
                n = self.length(wt, c.end, "graph")
                m.graph_field = len(m.top)
                m.graph_start = c.pos
                m.graph_end = c.pos + n
                self.graph(m, c.pos + n)
            elif num == 1 and wt == VARINT:
                m.ir_version = c.varint(c.end, "ir_version")
            elif num == 2 and wt == LEN:
                m.producer = self.text(wt, c.end, "producer_name")
            elif num == 8 and wt == LEN:
                n = self.length(wt, c.end, "opset_import")
                domain, version = "", 0
                for f, w, v in self._fields(c.read(n, None, "opset_import")):
                    if f == 1 and w == LEN:
                        domain = bytes(v).decode("utf-8", "replace")  # type: ignore[arg-type]
                    elif f == 2 and w == VARINT:
                        version = int(v)     # type: ignore[arg-type]
                if domain in ("", "ai.onnx"):
                    m.opset = version
            else:
                self.skip(wt, c.end, f"model field {num}")
            m.top.append((num, start, c.pos))
        if m.graph_field < 0:
            c.fail("no graph")
        return m

    def _fields(self, buf: bytes):
        try:
            return list(protowire.fields(buf))
        except protowire.Malformed as e:
            self.c.fail(str(e))
            raise

    def graph(self, m: Model, end: int) -> None:
        c = self.c
        while c.pos < end:
            start = c.pos
            num, wt = self.key(end)
            if num == 1 and wt == LEN:
                n = self.length(wt, end, "node")
                m.nodes.append(self.node(c.read(n, end, "node")))
            elif num == 5 and wt == LEN:
                n = self.length(wt, end, "initializer")
                m.initializers.append(self.tensor(start, c.pos + n))
            else:
                if num == 15:
                    m.sparse += 1
                self.skip(wt, end, f"graph field {num}")
            m.graph.append((num, start, c.pos))
        if c.pos != end:
            c.fail("graph runs past its end")

    def node(self, buf: bytes) -> Node:
        node = Node("", "", [], [], {})
        for num, wt, v in self._fields(buf):
            if wt != LEN:
                continue
            raw = bytes(v)      # type: ignore[arg-type]
            if num == 1:
                node.inputs.append(raw.decode("utf-8", "replace"))
            elif num == 2:
                node.outputs.append(raw.decode("utf-8", "replace"))
            elif num == 3:
                node.name = raw.decode("utf-8", "replace")
            elif num == 4:
                node.op_type = raw.decode("utf-8", "replace")
            elif num == 5:
                name, value = self.attribute(raw)
                if name:
                    node.attrs[name] = value
        return node

    def attribute(self, buf: bytes):
        name, value, ints = "", None, []
        for num, wt, v in self._fields(buf):
            if num == 1 and wt == LEN:
                name = bytes(v).decode("utf-8", "replace")      # type: ignore[arg-type]
            elif num == 2 and wt == FIXED32:
                value = struct.unpack("<f", struct.pack("<I", v))[0]
            elif num == 3 and wt == VARINT:
                value = protowire.signed64(int(v))              # type: ignore[arg-type]
            elif num == 8 and wt == VARINT:
                ints.append(protowire.signed64(int(v)))         # type: ignore[arg-type]
            elif num == 8 and wt == LEN:
                ints.extend(protowire.signed64(x) for x in self._varints(bytes(v)))   # type: ignore[arg-type]
        return name, (ints if value is None and ints else value)

    def _varints(self, buf: bytes) -> list[int]:
        out, pos = [], 0
        try:
            while pos < len(buf):
                v, pos = protowire.read_varint(buf, pos)
                out.append(v)
        except protowire.Malformed as e:
            self.c.fail(str(e))
        return out

    def tensor(self, field_start: int, end: int) -> Initializer:
        c = self.c
        t = Initializer("", (), 0, field_start, c.pos, end)
        dims: list[int] = []
        while c.pos < end:
            start = c.pos
            num, wt = self.key(end)
            if num == 1 and wt == VARINT:
                dims.append(protowire.signed64(c.varint(end, "dims")))
            elif num == 1 and wt == LEN:
                n = self.length(wt, end, "dims")
                dims.extend(protowire.signed64(v) for v in self._varints(c.read(n, end, "dims")))
            elif num == 2 and wt == VARINT:
                t.data_type = c.varint(end, "data_type")
            elif num == 8 and wt == LEN:
                t.name = self.text(wt, end, "tensor name")
            elif num == 9 and wt == LEN:
                n = self.length(wt, end, "raw_data")
                t.raw = (c.skip(n, end, "raw_data"), n)
            elif num in TYPED_FIELDS:
                if t.typed and t.typed != num:
                    c.fail(f"tensor {t.name!r} holds data in two typed fields")
                t.typed = num
                self.skip(wt, end, "typed data")
            elif num == 13 and wt == LEN:
                n = self.length(wt, end, "external_data")
                key = value = ""
                for f, w, v in self._fields(c.read(n, end, "external_data")):
                    if w == LEN and f in (1, 2):
                        s = bytes(v).decode("utf-8", "replace")  # type: ignore[arg-type]
                        key, value = (s, value) if f == 1 else (key, s)
                t.external[key] = value
            elif num == 14 and wt == VARINT:
                t.location = c.varint(end, "data_location")
            elif num == 3:
                c.fail(f"tensor {t.name!r} is segmented (TensorProto.segment), which is not supported")
            else:
                self.skip(wt, end, f"tensor field {num}")
            if num not in DATA_FIELDS:
                t.keep.append((start, c.pos))
        if c.pos != end:
            c.fail(f"tensor {t.name!r} runs past its end")
        if any(d < 0 for d in dims):
            c.fail(f"tensor {t.name!r} has a negative dimension {dims}")
        t.dims = tuple(dims)
        return t


def scan(path: str) -> Model:
    """The model's structure; raises FormatError naming the file when it does not decode."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            return _Scanner(f, path, size).model()
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path) from None


def decode_typed(path: str, t: Initializer, dtype: str, count: int) -> np.ndarray:
    """The values of a tensor stored in a typed field (float_data, int32_data, ...), as `dtype`
    storage: packed and unpacked repeated fields alike. Reads the tensor's message only."""
    with open(path, "rb") as f:
        f.seek(t.start)
        buf = f.read(t.end - t.start)
    if len(buf) != t.end - t.start:
        raise FormatError(f"tensor {t.name!r}: file shorter than its message", path)
    kind = TYPED_FIELDS[t.typed]
    chunks: list[np.ndarray] = []
    ints: list[int] = []
    try:
        for num, wt, v in protowire.fields(buf):
            if num != t.typed:
                continue
            if kind in ("<f4", "<f8"):
                if wt == LEN:
                    raw = bytes(v)      # type: ignore[arg-type]
                    if len(raw) % np.dtype(kind).itemsize:
                        raise FormatError(f"tensor {t.name!r}: packed {kind} data of {len(raw)} bytes", path)
                    chunks.append(np.frombuffer(raw, kind))
                else:
                    fmt = "<I" if kind == "<f4" else "<Q"
                    chunks.append(np.frombuffer(struct.pack(fmt, int(v)), kind))   # type: ignore[arg-type]
            elif wt == LEN:
                pos, raw = 0, bytes(v)  # type: ignore[arg-type]
                while pos < len(raw):
                    x, pos = protowire.read_varint(raw, pos)
                    ints.append(x)
            elif wt == VARINT:
                ints.append(int(v))     # type: ignore[arg-type]
            if len(ints) > count or sum(len(ch) for ch in chunks) > count:
                raise FormatError(f"tensor {t.name!r}: more values than its dims {list(t.dims)} hold", path)
    except protowire.Malformed as e:
        raise FormatError(f"not a valid ONNX model: tensor {t.name!r}: {e}", path) from None
    if kind in ("<f4", "<f8"):
        vals = np.concatenate(chunks) if chunks else np.zeros(0, kind)
    else:
        mask = (1 << 64) - 1
        u = np.array([x & mask for x in ints], dtype=np.uint64)
        vals = u.view(np.int64) if kind in ("int32", "int64") else u
    if vals.size != count:
        raise FormatError(f"tensor {t.name!r}: {vals.size} values, dims {list(t.dims)} need {count}", path)
    if dtype in ("float16", "bfloat16"):        # int32_data holds the 16-bit patterns
        return vals.astype(np.uint16).view("<f2" if dtype == "float16" else "<u2")
    return vals.astype(dtypes.storage_dtype(dtype))
