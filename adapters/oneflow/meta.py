"""The `meta` file beside each tensor's `out`: OneFlow's VariableMetaInfo message in protobuf TEXT
format (check_point_v2.py writes it with text_format.MessageToString and reads it with
text_format.Parse), e.g.

    shape {
      dim: 4
      dim: 3
    }
    data_type: kFloat

Only the two fields of VariableMetaInfo exist (shape: ShapeProto with repeated int64 dim,
data_type: the DataType enum of oneflow/core/common/data_type.proto). Anything else is refused:
a meta we do not fully understand could describe bytes we would misread.
"""
from __future__ import annotations

import re

from hubfmt.sdk import FormatError

# DataType enum (oneflow/core/common/data_type.proto, checked against OneFlow 0.9's
# data_type_pb2) -> canonical dtype. kChar is a C `char` (signed, 1 byte); OneFlow's own writer
# never emits it for a tensor, so the writer side maps int8 to kInt8 only.
DATA_TYPES = {
    "kFloat": (2, "float32"),
    "kDouble": (3, "float64"),
    "kInt8": (4, "int8"),
    "kInt32": (5, "int32"),
    "kInt64": (6, "int64"),
    "kUInt8": (7, "uint8"),
    "kFloat16": (9, "float16"),
    "kBFloat16": (11, "bfloat16"),
    "kBool": (12, "bool"),
    "kUInt16": (13, "uint16"),
    "kUInt32": (14, "uint32"),
    "kUInt64": (15, "uint64"),
    "kInt16": (17, "int16"),
    "kComplex64": (20, "complex64"),
    "kChar": (1, "int8"),
}
_BY_NUMBER = {num: dt for num, dt in DATA_TYPES.values()}
# What OneFlow 0.9's flow.load can read back (oneflow/framework/dtype.py maps only these to numpy;
# it has no Python int16/uint16+/complex dtypes, and it saves bfloat16 as float32 bytes that it
# then cannot load).
LOADABLE = frozenset({"float32", "float64", "float16", "int8", "int32", "int64", "uint8", "bool"})
_ENUM_OF = {dt: name for name, (_, dt) in DATA_TYPES.items() if dt in LOADABLE and name != "kChar"}

MAX_META_BYTES = 64 * 1024   # a real one is ~60 bytes; anything this large is not a meta
MAX_RANK = 64

_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*|-?\d+|[{}<>:\[\],])")


def _tokens(text: str, path: str) -> list[str]:
    out, pos = [], 0
    text = re.sub(r"#[^\n]*", "", text).rstrip()     # comments (the message has no string fields)
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise FormatError(f"meta is not a OneFlow VariableMetaInfo (unexpected text at byte {pos})", path)
        out.append(m.group(1))
        pos = m.end()
    return out


def parse(data: bytes, path: str) -> tuple[tuple[int, ...], str]:
    """(shape, canonical dtype) from the bytes of a `meta` file.

    >>> parse(b"shape {\\n  dim: 2\\n}\\ndata_type: kFloat\\n", "meta")
    ((2,), 'float32')
    """
    try:
        toks = _tokens(data.decode("ascii"), path)
    except UnicodeDecodeError:
        raise FormatError("meta is not a OneFlow VariableMetaInfo (not protobuf text)", path) from None
    shape: list[int] | None = None
    dtype: str | None = None
    i = 0

    def need(tok: str) -> None:
        nonlocal i
        if i >= len(toks) or toks[i] != tok:
            got = toks[i] if i < len(toks) else "end of file"
            raise FormatError(f"meta: expected {tok!r}, found {got!r}", path)
        i += 1

    while i < len(toks):
        field = toks[i]
        i += 1
        if field == "shape" and shape is None:
            if i < len(toks) and toks[i] == ":":
                i += 1
            close = {"{": "}", "<": ">"}.get(toks[i] if i < len(toks) else "")
            if close is None:
                raise FormatError("meta: shape is not a message", path)
            i += 1
            shape = []
            while i < len(toks) and toks[i] != close:
                need("dim")
                need(":")
                values = []
                if i < len(toks) and toks[i] == "[":       # dim: [2, 3] (list syntax)
                    i += 1
                    while i < len(toks) and toks[i] != "]":
                        values.append(toks[i])
                        i += 1
                        if i < len(toks) and toks[i] == ",":
                            i += 1
                    need("]")
                else:
                    values.append(toks[i] if i < len(toks) else "")
                    i += 1
                for v in values:
                    if not re.fullmatch(r"\d+", v):
                        raise FormatError(f"meta: shape dimension {v!r} is not a non-negative integer", path)
                    shape.append(int(v))
                if len(shape) > MAX_RANK:
                    raise FormatError(f"meta: more than {MAX_RANK} dimensions", path)
            need(close)
        elif field == "data_type" and dtype is None:
            need(":")
            v = toks[i] if i < len(toks) else ""
            i += 1
            if v in DATA_TYPES:
                dtype = DATA_TYPES[v][1]
            elif re.fullmatch(r"\d+", v) and int(v) in _BY_NUMBER:
                dtype = _BY_NUMBER[int(v)]
            else:
                raise FormatError(f"meta: data_type {v!r} is not a tensor dtype hubfmt can carry", path)
        else:
            raise FormatError(f"meta: unexpected field {field!r}", path)
    if shape is None or dtype is None:
        raise FormatError("meta lacks " + ("shape" if shape is None else "data_type"), path)
    return tuple(shape), dtype


def enum_name(dtype: str) -> str:
    """The DataType enum name OneFlow writes for a canonical dtype (KeyError: not loadable)."""
    return _ENUM_OF[dtype]


def render(shape, dtype: str) -> bytes:
    """A `meta` file's bytes, exactly as OneFlow's text_format.MessageToString writes them.

    >>> render((4, 3), "float16")
    b'shape {\\n  dim: 4\\n  dim: 3\\n}\\ndata_type: kFloat16\\n'
    """
    dims = "".join(f"  dim: {int(d)}\n" for d in shape)
    return f"shape {{\n{dims}}}\ndata_type: {enum_name(dtype)}\n".encode("ascii")
