"""MindSpore's checkpoint.proto on the wire, without the protobuf package.

    message Checkpoint { repeated Value value = 1;
                         message Value { required string tag = 1;
                                         oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; } } }
    message TensorProto { repeated int64 dims = 1; required string tensor_type = 2; required bytes tensor_content = 3; }

`mindspore.save_checkpoint` (2.10) writes one serialized `Checkpoint` with a single `Value` per
parameter, appended one after another (concatenated messages of a repeated field merge into one).
A tensor larger than 512 MiB is split into several consecutive Values with the same tag and the full
dims, each holding the next piece of tensor_content. With `crc_check=True` the file ends with the
17-byte trailer b"crc_num" + 10-byte big-endian CRC32 of everything before it (not protobuf).

`scan` walks the top-level fields and records where each tensor's bytes lie; tensor_content is
skipped, never read, so a checkpoint of any size is indexed in a few small reads. It decodes varints
in place inside its read window rather than through hubfmt.protowire.read_varint: a call per
varint makes indexing a many-tensor checkpoint some 15% slower. Writing uses hubfmt.protowire.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from hubfmt.sdk import FormatError
from hubfmt.sdk import protowire

CIPHER_MAGIC = b"\xd8\x5e\x3a\x7f"   # save_checkpoint(enc_key=...) files start with 0x7F3A5ED8 (LE)
CRC_TRAILER = b"crc_num"
CRC_TRAILER_SIZE = 17
_WINDOW = 1 << 16
MAX_STRING = 1 << 16      # a tag or tensor_type longer than this is damage, not a name
_MAX_STRING = MAX_STRING


@dataclass
class Record:
    """One parameter of a .ckpt: its tag, dims, tensor_type and the file spans of its content."""

    tag: str
    dims: list[int]
    tensor_type: str
    pieces: list[tuple[int, int]] = field(default_factory=list)   # (offset, length) in file order
    is_map: bool = False            # a MapParameter (MapTensorProto): tables, not one tensor

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.pieces)


class _Cursor:
    """Bounds-checked reads over a file: small fields from a window, large ones skipped."""

    def __init__(self, f, path: str, end: int):
        self.f, self.path, self.end = f, path, end
        self.pos = 0
        self._buf = b""
        self._buf_at = 0

    def fail(self, problem: str):
        raise FormatError(f"not a valid MindSpore checkpoint: {problem} (at byte {self.pos})", self.path)

    def _need(self, n: int, limit: int, what: str) -> None:
        if n < 0 or self.pos + n > limit:
            where = "the file" if limit == self.end else "its enclosing message"
            self.fail(f"{what} of {n} bytes runs past the end of {where} (truncated or corrupt)")

    def read(self, n: int, limit: int, what: str) -> bytes:
        self._need(n, limit, what)
        lo = self.pos - self._buf_at
        if not (0 <= lo and lo + n <= len(self._buf)):
            self.f.seek(self.pos)
            self._buf = self.f.read(max(n, _WINDOW))
            self._buf_at = self.pos
            lo = 0
            if len(self._buf) < n:
                self.fail(f"file shorter than expected while reading {what}")
        self.pos += n
        return self._buf[lo:lo + n]

    def skip(self, n: int, limit: int, what: str) -> None:
        self._need(n, limit, what)
        self.pos += n

    def varint(self, limit: int, what: str) -> int:
        lo = self.pos - self._buf_at
        buf = self._buf
        if 0 <= lo and lo + 10 <= len(buf) and self.pos + 10 <= limit:
            # Fast path: all ten possible bytes are in the window and inside the message.
            value = shift = 0
            for i in range(lo, lo + 10):
                b = buf[i]
                value |= (b & 0x7F) << shift
                if b < 0x80:
                    self.pos += i - lo + 1
                    if value >= 1 << 64:
                        self.fail(f"{what}: varint exceeds 64 bits")
                    return value
                shift += 7
            self.fail(f"{what}: varint longer than 10 bytes")
        value = shift = 0
        for _ in range(10):
            (b,) = self.read(1, limit, what)
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                if value >= 1 << 64:
                    self.fail(f"{what}: varint exceeds 64 bits")
                return value
            shift += 7
        self.fail(f"{what}: varint longer than 10 bytes")

    def key(self, limit: int) -> tuple[int, int]:
        k = self.varint(limit, "field key")
        number, wire = k >> 3, k & 7
        if number == 0:
            self.fail("field number 0")
        return number, wire

    def skip_field(self, wire: int, limit: int) -> None:
        """Skip a field we do not use (proto2 allows unknown fields anywhere)."""
        if wire == 0:
            self.varint(limit, "unknown varint field")
        elif wire == 1:
            self.skip(8, limit, "unknown fixed64 field")
        elif wire == 2:
            self.skip(self.varint(limit, "length"), limit, "unknown field")
        elif wire == 5:
            self.skip(4, limit, "unknown fixed32 field")
        else:
            self.fail(f"unsupported wire type {wire}")

    def string(self, limit: int, what: str) -> str:
        n = self.varint(limit, f"{what} length")
        if n > _MAX_STRING:
            self.fail(f"{what} of {n} bytes is implausibly long")
        try:
            return self.read(n, limit, what).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not UTF-8")


def _tensor(cur: _Cursor, limit: int) -> tuple[list[int], str | None, tuple[int, int] | None]:
    dims: list[int] = []
    ttype = content = None
    while cur.pos < limit:
        number, wire = cur.key(limit)
        if number == 1 and wire == 0:
            dims.append(protowire.signed64(cur.varint(limit, "dims")))
        elif number == 1 and wire == 2:                      # packed encoding, equally valid
            n = cur.varint(limit, "packed dims length")
            stop = cur.pos + n
            cur._need(n, limit, "packed dims")
            while cur.pos < stop:
                dims.append(protowire.signed64(cur.varint(stop, "dims")))
        elif number == 2 and wire == 2:
            ttype = cur.string(limit, "tensor_type")
        elif number == 3 and wire == 2:
            n = cur.varint(limit, "tensor_content length")
            content = (cur.pos, n)
            cur.skip(n, limit, "tensor_content")
        else:
            cur.skip_field(wire, limit)
    return dims, ttype, content


def _value(cur: _Cursor, limit: int) -> Record:
    tag = None
    dims: list[int] = []
    ttype = content = None
    is_map = False
    while cur.pos < limit:
        number, wire = cur.key(limit)
        if number == 1 and wire == 2:
            tag = cur.string(limit, "tag")
        elif number == 2 and wire == 2:
            n = cur.varint(limit, "tensor length")
            cur._need(n, limit, "tensor")
            dims, ttype, content = _tensor(cur, cur.pos + n)
        elif number == 3 and wire == 2:
            is_map = True
            cur.skip(cur.varint(limit, "maptensor length"), limit, "maptensor")
        else:
            cur.skip_field(wire, limit)
    if tag is None:
        cur.fail("a value without its required tag")
    if is_map:
        return Record(tag, [], "", [], is_map=True)
    if ttype is None or content is None:
        cur.fail(f"tensor {tag!r} lacks its required tensor_type or tensor_content")
    return Record(tag, dims, ttype, [content])


def protobuf_end(path: str, size: int, f) -> tuple[int, bool]:
    """(end of the protobuf data, whether a crc_num trailer follows it)."""
    if size >= CRC_TRAILER_SIZE:
        f.seek(size - CRC_TRAILER_SIZE)
        if f.read(len(CRC_TRAILER)) == CRC_TRAILER:
            return size - CRC_TRAILER_SIZE, True
    # A file cut inside its trailer: b"crc_num" a few bytes before the end.
    f.seek(max(size - CRC_TRAILER_SIZE + 1, 0))
    tail = f.read()
    at = tail.find(CRC_TRAILER)
    if at >= 0 and len(tail) - at < CRC_TRAILER_SIZE:
        raise FormatError(f"truncated: the file ends {CRC_TRAILER_SIZE - (len(tail) - at)} bytes short of the "
                          "end of its crc_num trailer", path)
    return size, False


def scan(path: str | os.PathLike, *, limit_records: int | None = None) -> tuple[list[Record], bool]:
    """The records of a .ckpt in file order (consecutive slices of one tensor merged) and whether a
    CRC trailer is present. Raises FormatError naming the file on anything malformed.

    >>> records, has_crc = scan("lenet.ckpt")            # doctest: +SKIP
    >>> records[0].tag, records[0].dims, records[0].tensor_type   # doctest: +SKIP
    ('conv1.weight', [6, 1, 5, 5], 'Float32')
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            end, has_crc = protobuf_end(path, size, f)
            cur = _Cursor(f, path, end)
            records: list[Record] = []
            if end == 0:
                cur.fail("the file is empty")
            f.seek(0)
            if f.read(4) == CIPHER_MAGIC:
                raise FormatError("an encrypted MindSpore checkpoint (save_checkpoint(enc_key=...)): "
                                  "decrypt it with MindSpore first", path)
            while cur.pos < end:
                number, wire = cur.key(end)
                if number != 1 or wire != 2:
                    if not records:
                        cur.fail("it does not start with a Checkpoint.value field (encrypted, or another format?)")
                    cur.skip_field(wire, end)
                    continue
                n = cur.varint(end, "value length")
                cur._need(n, end, "value")
                rec = _value(cur, cur.pos + n)
                last = records[-1] if records else None
                if last is not None and last.tag == rec.tag and not rec.is_map and not last.is_map:
                    if (last.dims, last.tensor_type) != (rec.dims, rec.tensor_type):
                        cur.fail(f"slices of tensor {rec.tag!r} disagree on dims or tensor_type")
                    last.pieces.extend(rec.pieces)
                else:
                    records.append(rec)
                    if limit_records is not None and len(records) >= limit_records:
                        break
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path) from None
    return records, has_crc


# ---- writing ------------------------------------------------------------------------------

_FIXED: dict[tuple, bytes] = {}     # (dims, tensor_type) -> TensorProto's dims and tensor_type fields
_FIXED_KEPT = 4096                  # layers repeat shapes: a few distinct ones are worth keeping
_ONE_BYTE = protowire._ONE_BYTE     # the varints of 0..127


def value_header(tag: str, dims, tensor_type: str, content_bytes: int) -> bytes:
    """Every byte of one top-level Checkpoint.value field up to its tensor_content data: the
    caller writes `content_bytes` raw bytes right after it. Dims are unpacked, as MindSpore writes.

    >>> value_header("b", [2], "Float32", 8)
    b'\\n\\x1a\\n\\x01b\\x12\\x15\\x08\\x02\\x12\\x07Float32\\x1a\\x08'
    """
    # Called once per tensor (#18): the field keys are literal bytes (0x0a: field 1, length-
    # delimited; 0x12: field 2; 0x1a: field 3; 0x08: field 1, varint), the dims and type fields are
    # kept per shape (equal dims encode equally: each is int()ed), one-byte lengths are looked up.
    varint = protowire.encode_varint
    key = (dims, tensor_type) if type(dims) is tuple else None
    fixed = _FIXED.get(key) if key is not None else None
    if fixed is None:
        fixed = (b"".join([b"\x08" + varint(int(d)) for d in dims])
                 + protowire.field_bytes(2, tensor_type.encode("ascii")) + b"\x1a")
        if key is not None and len(_FIXED) < _FIXED_KEPT:
            _FIXED[key] = fixed
    tensor_head = fixed + (_ONE_BYTE[content_bytes] if 0 <= content_bytes < 0x80 else varint(content_bytes))
    raw_tag = tag.encode("utf-8")
    n = len(raw_tag)
    m = len(tensor_head) + content_bytes
    value_head = (b"\n" + (_ONE_BYTE[n] if n < 0x80 else varint(n)) + raw_tag
                  + b"\x12" + (_ONE_BYTE[m] if 0 <= m < 0x80 else varint(m)) + tensor_head)
    k = len(value_head) + content_bytes
    return b"\n" + (_ONE_BYTE[k] if 0 <= k < 0x80 else varint(k)) + value_head
