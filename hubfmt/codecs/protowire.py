"""Protocol-buffer wire format by hand: varints and the fields of a serialized message.

Checkpoint formats embed small protobuf messages (TensorFlow's BundleHeaderProto,
BundleEntryProto and TensorShapeProto, LevelDB block handles; MindSpore's checkpoint.proto
Values) that do not justify a protobuf dependency. The encoding is framework-agnostic, so it
lives here once and adapters share it (adapters never import each other).

Every read is bounds-checked and raises `Malformed` (the caller names the file in a FormatError).
Readers holding the whole message use `fields`; a streaming scanner that reads a file through a
window (MindSpore's) decodes its own varints in place and uses this module for writing.

>>> encode_varint(300)
b'\\xac\\x02'
>>> list(fields(b"\\x08\\x96\\x01"))
[(1, 0, 150)]
"""
from __future__ import annotations

import struct
from typing import Iterator

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5      # wire types we read and write


class Malformed(ValueError):
    """Bytes that do not decode; the message says what and where."""


def read_varint(buf: bytes, pos: int, limit: int | None = None, max_bytes: int = 10) -> tuple[int, int]:
    """(value, next position) of the varint at buf[pos:], not reading at or past `limit`
    (default: the end of buf) nor more than `max_bytes` bytes (5 for a 32-bit varint).

    >>> read_varint(b"\\x00\\xac\\x02", 1)
    (300, 3)
    """
    end = len(buf) if limit is None else limit
    result = shift = 0
    for _ in range(max_bytes):
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
    """The varint of `value`; a negative value is an int64, written as 10-byte two's complement
    as protobuf does.

    >>> encode_varint(1), encode_varint(-1)[-1]
    (b'\\x01', 1)
    """
    # Lengths, dims and field keys are nearly always one or two bytes: a streaming writer encodes
    # several per tensor, so those skip the loop (#18).
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if 0 < value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0:
        value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a serialized message. Varint and fixed
    values are ints, length-delimited values bytes. Groups (wire types 3/4) are refused."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = read_varint(buf, pos)
        num, wt = tag >> 3, tag & 7
        if num == 0:
            raise Malformed("field number 0")
        val: int | bytes
        if wt == VARINT:
            val, pos = read_varint(buf, pos)
        elif wt == FIXED64:
            if pos + 8 > end:
                raise Malformed("fixed64 field runs past the end")
            val = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wt == FIXED32:
            if pos + 4 > end:
                raise Malformed("fixed32 field runs past the end")
            val = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wt == LENGTH_DELIMITED:
            n, pos = read_varint(buf, pos)
            if pos + n > end:
                raise Malformed(f"field {num} of {n} bytes runs past the end")
            val = bytes(buf[pos:pos + n])
            pos += n
        else:
            raise Malformed(f"unsupported wire type {wt}")
        yield num, wt, val


def signed64(v: int) -> int:
    """A varint read as int64 (protobuf stores negatives as 2**64 - |v|).

    >>> signed64(2**64 - 1)
    -1
    """
    return v - (1 << 64) if v >= 1 << 63 else v


def field_varint(num: int, value: int) -> bytes:
    """Field `num` holding an integer (int32/int64/uint64/enum/bool).

    >>> field_varint(1, 150)
    b'\\x08\\x96\\x01'
    """
    return encode_varint(num << 3 | VARINT) + encode_varint(value)


def field_length(num: int, n: int) -> bytes:
    """Key and length of length-delimited field `num` whose `n` bytes the caller writes next:
    a streaming writer announces a tensor's content, then copies it.

    >>> field_length(3, 600)
    b'\\x1a\\xd8\\x04'
    """
    return encode_varint(num << 3 | LENGTH_DELIMITED) + encode_varint(n)


def field_bytes(num: int, value: bytes) -> bytes:
    """Field `num` holding bytes, a string or an embedded message.

    >>> field_bytes(2, b"hi")
    b'\\x12\\x02hi'
    """
    return field_length(num, len(value)) + value


def field_fixed32(num: int, value: int) -> bytes:
    """Field `num` holding a fixed32 (e.g. a masked CRC-32C).

    >>> field_fixed32(6, 1)
    b'5\\x01\\x00\\x00\\x00'
    """
    return encode_varint(num << 3 | FIXED32) + struct.pack("<I", value)
