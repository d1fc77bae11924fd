"""The NDArray list file (`.params`, what `mx.nd.save` writes), read and written without MXNet.

Layout (little-endian; MXNet src/ndarray/ndarray.cc, NDArray::Save/Load, and dmlc-core's vector
and string serialisers):

    uint64 0x112 (list magic), uint64 reserved (0), uint64 n_arrays, then n_arrays records:
        uint32 magic     0xF993FAC9 (V2) | 0xF993FACA (V3, saved under numpy shape semantics)
        int32  stype     0 dense (row_sparse/csr are refused)
        uint32 ndim, int64 dims[ndim]
        int32  dev_type, int32 dev_id          (context the array lived on)
        int32  type_flag                       (mshadow TypeFlag, see TYPE_FLAGS)
        raw data, C order
      Older records: 0xF993FAC8 (V1: no stype, same shape) or no magic at all (the first word is
      ndim, and the dims are uint32).
    uint64 n_names (0 or n_arrays), then each name as uint64 length + UTF-8 bytes.

A record with ndim 0 (V1/V2) or ndim -1 (V3) is a "none" array with no context, dtype or data.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from hubfmt.sdk import dtypes
from hubfmt.sdk import LazyTensor
from hubfmt.sdk import FormatError
from hubfmt.sdk import write_tensor

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
MAX_NDIM = 32                  # MXNet's own limit for a TShape is far below this
MAX_NAME = 1 << 20
# mshadow TypeFlag -> canonical dtype (mshadow/base.h)
TYPE_FLAGS = {
    0: "float32", 1: "float64", 2: "float16", 3: "uint8", 4: "int32", 5: "int8", 6: "int64",
    7: "bool", 8: "int16", 9: "uint16", 10: "uint32", 11: "uint64", 12: "bfloat16",
}
FLAG_OF = {v: k for k, v in TYPE_FLAGS.items()}
_STYPES = {1: "row_sparse", 2: "csr"}


@dataclass(frozen=True)
class Record:
    """One array of the list: where its raw bytes lie. `offset` is None for a 'none' array."""

    index: int
    dtype: str
    shape: tuple
    offset: int | None
    version: str              # "v3", "v2", "v1" or "legacy"


class _Cursor:
    """Sequential reads of small header fields, each checked against the file size first."""

    def __init__(self, f: BinaryIO, size: int, path: str):
        self.f, self.size, self.path, self.pos = f, size, path, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.size:
            raise FormatError(f"truncated: file ends inside {what} (needs {n} bytes at offset {self.pos}, "
                              f"file has {self.size})", self.path)
        b = self.f.read(n)
        if len(b) != n:
            raise FormatError(f"truncated: short read inside {what}", self.path)
        self.pos += n
        return b

    def u32(self, what):
        return struct.unpack("<I", self.take(4, what))[0]

    def i32(self, what):
        return struct.unpack("<i", self.take(4, what))[0]

    def u64(self, what):
        return struct.unpack("<Q", self.take(8, what))[0]

    def skip(self, n: int, what: str) -> int:
        if self.pos + n > self.size:
            raise FormatError(f"truncated: {what} needs {n} bytes at offset {self.pos}, past the end of the "
                              f"file ({self.size} bytes)", self.path)
        start = self.pos
        self.pos += n
        self.f.seek(self.pos)
        return start


def is_ndlist(path: str) -> bool:
    """Cheap check: the file starts with the NDArray-list magic and a zero reserved word."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return False
    return len(head) == 24 and struct.unpack("<QQ", head[:16]) == (LIST_MAGIC, 0)


def scan(path: str) -> tuple[list[Record], list[str]]:
    """Parse the headers of every record (data is skipped, not read) and the names.

    Returns (records, names); names is empty for a list saved without names.

    >>> records, names = scan("resnet-0000.params")      # doctest: +SKIP
    >>> names[0], records[0].shape, records[0].dtype     # doctest: +SKIP
    ('arg:conv0_weight', (64, 3, 7, 7), 'float32')
    """
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path) from None
    with f:
        cur = _Cursor(f, size, path)
        magic = cur.u64("the list header")
        if magic != LIST_MAGIC:
            raise FormatError(f"not an MXNet NDArray file: magic 0x{magic:x}, expected 0x{LIST_MAGIC:x}", path)
        cur.u64("the list header")                          # reserved
        count = cur.u64("the array count")
        # every record takes at least 4 bytes (a legacy 'none' array): a cheap bound before the loop
        if count > (size - cur.pos) // 4:
            raise FormatError(f"array count {count} cannot fit in a file of {size} bytes", path)
        records = [_record(cur, i) for i in range(count)]
        n_names = cur.u64("the name count")
        if n_names not in (0, count):
            raise FormatError(f"{n_names} names for {count} arrays", path)
        names = []
        for i in range(n_names):
            n = cur.u64(f"the length of name {i}")
            if n > MAX_NAME:
                raise FormatError(f"name {i} claims {n} bytes", path)
            raw = cur.take(n, f"name {i}")
            try:
                names.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise FormatError(f"name {i} is not UTF-8", path) from None
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise FormatError(f"array name {dup!r} appears twice", path)
    return records, names


def _shape(cur: _Cursor, i: int, wide: bool) -> tuple[int, tuple]:
    ndim = cur.i32(f"the shape of array {i}")
    if ndim > MAX_NDIM or ndim < -1:
        raise FormatError(f"array {i}: implausible rank {ndim}", cur.path)
    if ndim <= 0:
        return ndim, ()
    fmt, w = ("<q", 8) if wide else ("<I", 4)
    raw = cur.take(w * ndim, f"the shape of array {i}")
    dims = tuple(struct.unpack_from(fmt, raw, k * w)[0] for k in range(ndim))
    return ndim, dims


def _record(cur: _Cursor, i: int) -> Record:
    magic = cur.u32(f"the header of array {i}")
    if magic in (V2_MAGIC, V3_MAGIC):
        version = "v3" if magic == V3_MAGIC else "v2"
        stype = cur.i32(f"the storage type of array {i}")
        if stype != 0:
            raise FormatError(f"array {i}: {_STYPES.get(stype, f'storage type {stype}')} (sparse) arrays are not "
                              "supported; save it dense (tostype('default'))", cur.path)
        ndim, dims = _shape(cur, i, wide=True)
    elif magic == V1_MAGIC:
        version = "v1"
        ndim, dims = _shape(cur, i, wide=True)
    elif magic <= MAX_NDIM:
        # before V1 there was no magic: the word is the rank, and the dims are uint32
        version = "legacy"
        ndim = magic
        raw = cur.take(4 * ndim, f"the shape of array {i}")
        dims = struct.unpack(f"<{ndim}I", raw)
    else:
        raise FormatError(f"array {i}: unknown record magic 0x{magic:08x}", cur.path)
    if any(d < 0 for d in dims) and version != "v3":
        raise FormatError(f"array {i}: negative dimension in shape {list(dims)}", cur.path)
    # V3 (numpy semantics) has true 0-d arrays and marks 'none' by rank -1 or an unknown dim
    if ndim == -1 or (ndim == 0 and version != "v3") or any(d < 0 for d in dims):
        return Record(i, "float32", (), None, version)
    cur.i32(f"the context of array {i}")
    cur.i32(f"the context of array {i}")
    flag = cur.i32(f"the dtype of array {i}")
    if flag not in TYPE_FLAGS:
        raise FormatError(f"array {i}: unknown dtype code {flag} (MXNet defines {min(TYPE_FLAGS)}..{max(TYPE_FLAGS)})",
                          cur.path)
    dtype = TYPE_FLAGS[flag]
    problem = dtypes.shape_problem(dims, dtype)
    if problem:
        raise FormatError(f"array {i}: {problem}", cur.path)
    nbytes = dtypes.itemsize(dtype)
    for d in dims:
        nbytes *= d
    offset = cur.skip(nbytes, f"the data of array {i} ({dtype} {list(dims)})")
    return Record(i, dtype, tuple(dims), offset, version)


# ---- writing ------------------------------------------------------------------------------

def write_header(out: BinaryIO, count: int) -> None:
    out.write(struct.pack("<QQQ", LIST_MAGIC, 0, count))


def write_record(out: BinaryIO, tensor: LazyTensor, dtype: str | None = None) -> int:
    """One dense V2 record (CPU context) holding `tensor` as `dtype`; returns data bytes written.

    V2, not V3: MXNet 1.x loads V3 only inside numpy-shape semantics, and V2 loads everywhere.
    A 0-d tensor is stored as shape (1,), since V2 reads rank 0 as 'no array'."""
    dtype = dtype or tensor.dtype
    if dtype not in FLAG_OF:
        raise ValueError(f"MXNet has no dtype {dtype}")
    shape = tensor.shape or (1,)
    out.write(struct.pack("<Ii", V2_MAGIC, 0))
    out.write(struct.pack(f"<I{len(shape)}q", len(shape), *shape))
    out.write(struct.pack("<iii", 1, 0, FLAG_OF[dtype]))      # cpu(0), type flag
    if shape != tensor.shape:
        tensor = tensor.map(lambda a: a.reshape(shape), shape)
    return write_tensor(out, tensor, dtype)


def write_names(out: BinaryIO, names: list[str]) -> None:
    out.write(struct.pack("<Q", len(names)))
    for name in names:
        raw = name.encode("utf-8")
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
