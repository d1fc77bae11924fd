"""Varints and protocol-buffer fields, by hand: the few small messages a checkpoint bundle holds
(BundleHeaderProto, BundleEntryProto, TensorShapeProto) do not justify a protobuf dependency.

Every read is bounds-checked and raises `Malformed` (the caller names the file in a FormatError).

>>> encode_varint(300)
b'\\xac\\x02'
>>> list(fields(b"\\x08\\x96\\x01"))
[(1, 0, 150)]
"""
from __future__ import annotations

import struct
from typing import Iterator


class Malformed(ValueError):
    """Bytes that do not decode; the message says what and where."""


def read_varint(buf: bytes, pos: int, limit: int | None = None, max_bytes: int = 10) -> tuple[int, int]:
    """(value, next position) of the varint at buf[pos:]."""
    end = len(buf) if limit is None else limit
    result = shift = 0
    for i in range(max_bytes):
        if pos >= end:
            raise Malformed(f"varint runs past the end at offset {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise Malformed(f"varint longer than {max_bytes} bytes at offset {pos - max_bytes}")


def encode_varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1     # protobuf encodes negative int64 as 10-byte two's complement
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a serialized message. Varint and fixed
    values are ints, length-delimited values bytes. Groups (wire types 3/4) are refused."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = read_varint(buf, pos)
        num, wt = tag >> 3, tag & 7
        if num == 0:
            raise Malformed("field number 0")
        if wt == 0:
            val, pos = read_varint(buf, pos)
        elif wt == 1:
            if pos + 8 > end:
                raise Malformed("fixed64 field runs past the end")
            val = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wt == 5:
            if pos + 4 > end:
                raise Malformed("fixed32 field runs past the end")
            val = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wt == 2:
            n, pos = read_varint(buf, pos)
            if pos + n > end:
                raise Malformed(f"field {num} of {n} bytes runs past the end")
            val = bytes(buf[pos:pos + n])
            pos += n
        else:
            raise Malformed(f"unsupported wire type {wt}")
        yield num, wt, val


def signed64(v: int) -> int:
    """A varint read as int64 (protobuf stores negatives as 2**64 - |v|)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def field_varint(num: int, value: int) -> bytes:
    return encode_varint(num << 3) + encode_varint(value)


def field_bytes(num: int, value: bytes) -> bytes:
    return encode_varint(num << 3 | 2) + encode_varint(len(value)) + value


def field_fixed32(num: int, value: int) -> bytes:
    return encode_varint(num << 3 | 5) + struct.pack("<I", value)
