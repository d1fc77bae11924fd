"""flax.serialization's msgpack files (`to_bytes` / `msgpack_serialize`), scanned and written
without flax or msgpack's unpacker holding the file.

The format (flax/serialization.py): a msgpack map tree of str keys; array leaves are msgpack ext
type 1 (ndarray) or 3 (numpy scalar) whose payload is the msgpack array (shape, dtype name,
row-major bytes); ext type 2 is a complex scalar (real, imag); arrays over 2**30 bytes are
`{"__msgpack_chunked_array__": True, "shape": {"0": d0, ...}, "chunks": {"0": flat, ...}}`.
Other leaves are plain msgpack values (ints, floats, str, None, bool).

Scanning walks the bytes with a bounds-checked FileCursor and only locates array bytes, so tensors
are LazyTensors over the file (nothing is loaded until asked for).
"""
from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

from hubfmt.sdk import FileCursor, FormatError, LazyTensor, dtypes, region_tensor

NDARRAY, COMPLEX, NPSCALAR = 1, 2, 3
CHUNKED = "__msgpack_chunked_array__"
MAX_CHUNK_SIZE = 2**30
MAX_DEPTH = 64
_NAMES = {d: d for d in dtypes.DTYPES}


class _Scanner:
    def __init__(self, f, path: str, size: int):
        self.c = FileCursor(f, size, path, "not a valid flax msgpack file")
        self.path = path

    def _uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.c.read(n, None, what), "big")

    def obj(self, depth: int = 0) -> Any:
        c = self.c
        if depth > MAX_DEPTH:
            c.fail(f"nested deeper than {MAX_DEPTH} levels")
        b = c.read(1, None, "msgpack value")[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return [self.obj(depth + 1) for _ in range(b & 0x0F)]
        if 0xA0 <= b <= 0xBF:
            return self.text(b & 0x1F)
        simple: dict[int, Any] = {0xC0: None, 0xC2: False, 0xC3: True}
        if b in simple:
            return simple[b]
        if b in (0xC4, 0xC5, 0xC6):
            n = self._uint(1 << (b - 0xC4), "bin length")
            return c.read(n, None, "bin")
        if b in (0xC7, 0xC8, 0xC9):
            n = self._uint(1 << (b - 0xC7), "ext length")
            return self.ext(n, depth)
        if 0xD4 <= b <= 0xD8:
            return self.ext(1 << (b - 0xD4), depth)
        if b == 0xCA:
            return struct.unpack(">f", c.read(4, None, "float32"))[0]
        if b == 0xCB:
            return struct.unpack(">d", c.read(8, None, "float64"))[0]
        if 0xCC <= b <= 0xCF:
            return self._uint(1 << (b - 0xCC), "uint")
        if 0xD0 <= b <= 0xD3:
            n = 1 << (b - 0xD0)
            return int.from_bytes(c.read(n, None, "int"), "big", signed=True)
        if b in (0xD9, 0xDA, 0xDB):
            return self.text(self._uint(1 << (b - 0xD9), "str length"))
        if b in (0xDC, 0xDD):
            n = self._uint(2 if b == 0xDC else 4, "array length")
            return [self.obj(depth + 1) for _ in range(n)]
        if b in (0xDE, 0xDF):
            return self.map(self._uint(2 if b == 0xDE else 4, "map length"), depth)
        c.fail(f"byte 0x{b:02x} starts no msgpack value")

    def text(self, n: int) -> str:
        raw = self.c.read(n, None, "str")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.c.fail("a string that is not UTF-8")
            raise

    def map(self, n: int, depth: int) -> dict:
        out: dict = {}
        for _ in range(n):
            key = self.obj(depth + 1)
            if isinstance(key, bytes):
                key = key.decode("utf-8", "replace")
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                self.c.fail(f"a map key of type {type(key).__name__}")
            key = str(key)
            if key in out:
                self.c.fail(f"key {key!r} appears twice in one map")
            out[key] = self.obj(depth + 1)
        return out

    def ext(self, n: int, depth: int) -> Any:
        c = self.c
        code = int.from_bytes(c.read(1, None, "ext type"), "big", signed=True)
        end = c.pos + n
        c.need(n, None, "ext payload")
        if code == COMPLEX:
            pair = self.obj(depth + 1)
            if c.pos != end or not isinstance(pair, list) or len(pair) != 2:
                c.fail("a complex scalar that is not (real, imag)")
            return complex(pair[0], pair[1])
        if code not in (NDARRAY, NPSCALAR):
            c.fail(f"unknown ext type {code}")
        head = c.read(1, end, "ndarray header")[0]
        if head != 0x93:
            c.fail("an ndarray that is not (shape, dtype, bytes)")
        shape = self.obj(depth + 1)
        name = self.obj(depth + 1)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        b = c.read(1, end, "ndarray bytes")[0]
        if b not in (0xC4, 0xC5, 0xC6, 0xA0, 0xD9, 0xDA, 0xDB) and not 0xA0 <= b <= 0xBF:
            c.fail("ndarray data is not bytes")
        if 0xA0 <= b <= 0xBF:
            nbytes = b & 0x1F
        else:
            width = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}[b]
            nbytes = self._uint(width, "ndarray data length")
        offset = c.skip(nbytes, end, "ndarray data")
        if c.pos != end:
            c.fail("ext payload longer than its ndarray")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            c.fail(f"ndarray shape {shape!r} is not a list of sizes")
        dt = _NAMES.get(name) if isinstance(name, str) else None
        if dt is None:
            c.fail(f"ndarray dtype {name!r} is not supported")
        count = 1
        for d in shape:
            count *= d
        if count * dtypes.itemsize(dt) != nbytes:
            c.fail(f"ndarray of shape {shape} {dt} needs {count * dtypes.itemsize(dt)} bytes, holds {nbytes}")
        return region_tensor(self.path, offset, dt, tuple(shape))


def _unchunk(node: dict, path: str) -> LazyTensor:
    shape, chunks = node.get("shape"), node.get("chunks")
    if not (isinstance(shape, dict) and isinstance(chunks, dict)):
        raise FormatError("a chunked array without shape and chunks", path)
    try:
        dims = tuple(shape[str(i)] for i in range(len(shape)))
        parts = [chunks[str(i)] for i in range(len(chunks))]
    except KeyError:
        raise FormatError("a chunked array whose shape or chunks are not numbered 0..n-1", path) from None
    if not parts or not all(isinstance(p, LazyTensor) and p.dtype == parts[0].dtype for p in parts):
        raise FormatError("a chunked array whose chunks are not arrays of one dtype", path)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise FormatError(f"a chunked array of shape {dims}", path)
    count = int(np.prod(dims, dtype=object))
    if sum(int(np.prod(p.shape, dtype=object)) for p in parts) != count:
        raise FormatError(f"chunks do not add up to shape {list(dims)}", path)
    dt = parts[0].dtype

    def load() -> np.ndarray:
        return np.concatenate([p.load().reshape(-1) for p in parts]).reshape(dims)
    return LazyTensor(dims, dt, load)


def _resolve(node: Any, path: str) -> Any:
    if isinstance(node, dict):
        if node.get(CHUNKED) is True:
            return _unchunk(node, path)
        return {k: _resolve(v, path) for k, v in node.items()}
    return node


def scan(path: str) -> Any:
    """The file's tree: dicts, LazyTensor leaves (arrays and numpy scalars), plain values."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            s = _Scanner(f, path, size)
            tree = s.obj()
            if s.c.pos != size:
                s.c.fail(f"{size - s.c.pos} bytes after the msgpack value")
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path) from None
    except RecursionError:
        raise FormatError("not a valid flax msgpack file: nested too deeply", path) from None
    return _resolve(tree, path)


# ---- writing ------------------------------------------------------------------------------------

def map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    return b"\xde" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xdf" + n.to_bytes(4, "big")


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + bytes([n])
    return b"\xc5" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xc6" + n.to_bytes(4, "big")


def ndarray_header(shape, dtype: str, scalar: bool = False) -> bytes:
    """Everything of an ndarray ext before its data bytes (as flax's msgpack.packb writes it,
    ext8/16/32 sizes chosen by length)."""
    import msgpack

    nbytes = dtypes.itemsize(dtype)
    for d in shape:
        nbytes *= int(d)
    payload = b"\x93" + msgpack.packb([int(d) for d in shape]) + msgpack.packb(dtype) + _bin_header(nbytes)
    n = len(payload) + nbytes
    code = bytes([NPSCALAR if scalar else NDARRAY])
    if n in (1, 2, 4, 8, 16):
        head = bytes([0xD4 + (n.bit_length() - 1)]) + code
    elif n < 1 << 8:
        head = b"\xc7" + bytes([n]) + code
    elif n < 1 << 16:
        head = b"\xc8" + n.to_bytes(2, "big") + code
    else:
        head = b"\xc9" + n.to_bytes(4, "big") + code
    return head + payload


def plain(value: Any) -> bytes:
    """A non-array leaf, as msgpack packs it (complex as flax's ext type 2)."""
    import msgpack

    if isinstance(value, complex):
        inner = msgpack.packb((value.real, value.imag))
        return b"\xc7" + bytes([len(inner), COMPLEX]) + inner
    return msgpack.packb(value)
