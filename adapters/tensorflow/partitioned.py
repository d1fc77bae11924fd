"""Partitioned variables (tf.compat.v1 partitioners): one logical tensor saved as pieces.

The full tensor's entry holds no bytes, only its dtype, shape and the TensorSliceProto of each
piece; each piece is a separate entry whose key is the OrderedCode encoding of
(0, variable name, rank, start_0, length_0, start_1, length_1, ...) (tensor_slice's
EncodeTensorNameSlice). A reader builds that key for each slice and copies the pieces into place.

>>> slice_key("emb", [(3, 2), (0, 4)])
b'\\x00emb\\x00\\x01\\x01\\x02\\x83\\x82\\x80\\x84'
"""
from __future__ import annotations

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import LazyTensor
from hubfmt.sdk import FormatError


def _num_increasing(v: int) -> bytes:
    """OrderedCode WriteNumIncreasing: length byte, then big-endian bytes."""
    body = v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""
    return bytes([len(body)]) + body


def _signed_num_increasing(v: int) -> bytes:
    """OrderedCode WriteSignedNumIncreasing for 0 <= v < 2**55: n bytes, n ones then a zero
    bit as header, 7n-1 payload bits."""
    if v < 0:
        raise ValueError("negative slice bound")
    for n in range(1, 9):
        if v < 1 << (7 * n - 1):
            return ((((1 << n) - 1) << (8 * n - n)) | v).to_bytes(n, "big")
    raise ValueError("slice bound too large")


def slice_key(name: str, extents: list[tuple[int, int]]) -> bytes:
    """The bundle key of one piece of partitioned variable `name`, extents as (start, length)."""
    escaped = name.encode("utf-8").replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff")
    out = _num_increasing(0) + escaped + b"\x00\x01" + _num_increasing(len(extents))
    for start, length in extents:
        out += _signed_num_increasing(start) + _signed_num_increasing(length)
    return out


def assemble(bundle, entry) -> LazyTensor:
    """A lazy full tensor built from the pieces of a partitioned variable's entry."""
    shape = entry.shape
    pieces = []
    covered = 0
    for extents in entry.slices:
        if len(extents) != len(shape):
            raise FormatError(f"{entry.name!r}: slice of rank {len(extents)} for a rank-{len(shape)} tensor",
                              bundle.index_path)
        full = [(s, d - s if n < 0 else n) for (s, n), d in zip(extents, shape, strict=True)]
        if any(s < 0 or n < 0 or s + n > d for (s, n), d in zip(full, shape, strict=True)):
            raise FormatError(f"{entry.name!r}: slice {full} outside shape {list(shape)}", bundle.index_path)
        piece = bundle.slice_entries.get(slice_key(entry.name, full))
        if piece is None:
            raise FormatError(f"{entry.name!r}: piece {full} of the partitioned variable is missing", bundle.index_path)
        pshape = tuple(n for _, n in full)
        if piece.dtype != entry.dtype or tuple(piece.shape) != pshape:
            raise FormatError(f"{entry.name!r}: piece {full} has {piece.dtype} {list(piece.shape)}", bundle.index_path)
        pieces.append((tuple(slice(s, s + n) for s, n in full), piece))
        covered += int(np.prod(pshape, dtype=np.int64))
    if covered != int(np.prod(shape, dtype=np.int64)):
        raise FormatError(f"{entry.name!r}: pieces cover {covered} of {int(np.prod(shape))} elements",
                          bundle.index_path)

    def load():
        out = np.empty(shape, dtype=dtypes.storage_dtype(entry.dtype))
        for where, piece in pieces:
            out[where] = bundle.tensor_of(piece).load()
        return out
    return LazyTensor(shape, entry.dtype, load)
