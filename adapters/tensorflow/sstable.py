"""LevelDB-format sorted tables, the container of a TensorFlow checkpoint's `.index` file.

Layout (leveldb/table_format.md): data blocks of prefix-compressed entries
(varint shared, varint unshared, varint value length, key suffix, value) followed by restart
offsets (uint32 each) and their count (uint32); every block is followed by a 5-byte trailer
(compression type, masked CRC-32C of block + type byte). Then a metaindex block, an index block
(last-key -> BlockHandle of each data block) and a 48-byte footer: the two BlockHandles as
varints, zero padding to 40 bytes, and the magic 0xdb4775248b80fb57.

>>> table = write_table([(b"", b"h"), (b"a", b"1"), (b"ab", b"2")])
>>> read_table(table)
[(b'', b'h'), (b'a', b'1'), (b'ab', b'2')]
"""
from __future__ import annotations

import functools
import itertools
import struct

from hubfmt.sdk import checksums, protowire

crc32c = functools.partial(checksums.compute, "crc32c")
_MASK_DELTA = 0xA282EAD8


def mask(crc: int) -> int:
    """LevelDB's masked form of a CRC, stored wherever a CRC may itself be checksummed.

    >>> unmask(mask(0x12345678)) == 0x12345678
    True
    """
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
RESTART_INTERVAL = 16
BLOCK_SIZE = 256 * 1024           # target size of a data block, as TensorFlow's bundle writer uses
_COMPRESSION = {0: None, 1: "snappy", 2: "zstd"}


def _handle(buf: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    off, pos = protowire.read_varint(buf, pos, limit)
    size, pos = protowire.read_varint(buf, pos, limit)
    return off, size, pos


def _block(table: bytes, off: int, size: int, what: str) -> bytes:
    end = off + size + TRAILER_SIZE
    if end > len(table) - FOOTER_SIZE:
        raise protowire.Malformed(f"{what} block (offset {off}, {size} bytes) runs past the end of the table")
    data = table[off:off + size]
    ctype = table[off + size]
    stored = struct.unpack_from("<I", table, off + size + 1)[0]
    if unmask(stored) != crc32c(table[off:off + size + 1]):
        raise protowire.Malformed(f"bad checksum in {what} block at offset {off} (corrupt file)")
    if ctype != 0:
        name = _COMPRESSION.get(ctype, f"unknown type {ctype}")
        raise protowire.Malformed(f"{what} block at offset {off} is {name}-compressed; only uncompressed tables "
                        "are supported (TensorFlow writes them uncompressed)")
    return data


def _entries(block: bytes, what: str) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise protowire.Malformed(f"{what} block of {len(block)} bytes is too short")
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * n_restarts
    if n_restarts == 0 and len(block) > 4 or limit < 0:
        raise protowire.Malformed(f"{what} block has a bad restart count {n_restarts}")
    out = []
    pos, key = 0, b""
    while pos < limit:
        shared, pos = protowire.read_varint(block, pos, limit, 5)
        unshared, pos = protowire.read_varint(block, pos, limit, 5)
        vlen, pos = protowire.read_varint(block, pos, limit, 5)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise protowire.Malformed(f"{what} block entry at offset {pos} runs past its block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        out.append((key, block[pos:pos + vlen]))
        pos += vlen
    return out


def read_table(table: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a table held in memory, in key order; raises protowire.Malformed."""
    if len(table) < FOOTER_SIZE:
        raise protowire.Malformed(f"{len(table)} bytes: too short for a table (footer is {FOOTER_SIZE} bytes)")
    footer = len(table) - FOOTER_SIZE
    magic = struct.unpack_from("<Q", table, len(table) - 8)[0]
    if magic != MAGIC:
        raise protowire.Malformed("not a checkpoint index (bad table magic; truncated or not a TensorFlow .index file)")
    limit = len(table) - 8
    _, _, pos = _handle(table, footer, limit)               # metaindex: TF stores nothing there
    ioff, isize, _ = _handle(table, pos, limit)
    out: list[tuple[bytes, bytes]] = []
    for last_key, handle in _entries(_block(table, ioff, isize, "index"), "index"):
        off, size, _ = _handle(handle, 0, len(handle))
        for key, value in _entries(_block(table, off, size, "data"), "data"):
            if out and key <= out[-1][0]:
                raise protowire.Malformed(f"keys out of order in data block at offset {off}")
            if key > last_key:
                raise protowire.Malformed(f"data block at offset {off} holds a key beyond its index entry")
            out.append((key, value))
    return out


def _build_block(entries: list[tuple[bytes, bytes]]) -> bytes:
    buf = bytearray()
    restarts = []
    prev = b""
    for i, (key, value) in enumerate(entries):
        if i % RESTART_INTERVAL == 0:
            restarts.append(len(buf))
            shared = 0
        else:
            shared = 0
            for a, b in zip(prev, key, strict=False):     # the common prefix of two keys
                if a != b:
                    break
                shared += 1
        buf += protowire.encode_varint(shared) + protowire.encode_varint(len(key) - shared) + protowire.encode_varint(len(value))
        buf += key[shared:] + value
        prev = key
    if not restarts:
        restarts.append(0)
    buf += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(buf)


def write_table(items: list[tuple[bytes, bytes]]) -> bytes:
    """Serialize sorted, unique (key, value) pairs as an uncompressed table."""
    for (a, _), (b, _) in itertools.pairwise(items):
        if not a < b:
            raise ValueError(f"table keys must be sorted and unique: {a!r} then {b!r}")
    out = bytearray()
    index: list[tuple[bytes, bytes]] = []

    def emit(block: bytes) -> tuple[int, int]:
        off = len(out)
        out.extend(block)
        out.append(0)                                          # uncompressed
        out.extend(struct.pack("<I", mask(crc32c(block + b"\x00"))))
        return off, len(block)

    start = 0
    size = 0
    for i, (k, v) in enumerate(items):
        size += len(k) + len(v) + 6
        if size >= BLOCK_SIZE or i == len(items) - 1:
            block = items[start:i + 1]
            off, n = emit(_build_block(block))
            index.append((block[-1][0], protowire.encode_varint(off) + protowire.encode_varint(n)))
            start, size = i + 1, 0
    meta = emit(_build_block([]))
    idx = emit(_build_block(index))
    footer = protowire.encode_varint(meta[0]) + protowire.encode_varint(meta[1]) + protowire.encode_varint(idx[0]) + protowire.encode_varint(idx[1])
    out += footer + b"\x00" * (40 - len(footer)) + struct.pack("<Q", MAGIC)
    return bytes(out)
