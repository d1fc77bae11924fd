"""Bounds-checked sequential reads over a file, for the binary formats whose headers are parsed
field by field (MXNet NDArray lists, MindSpore's protobuf checkpoints): every length is checked
against the file (or an enclosing message) before anything is read or allocated, and small
fields come from one read-ahead window instead of a system call each.

>>> import io; c = FileCursor(io.BytesIO(b"\\x96\\x01abc"), 5, "x")
>>> c.varint(5, "tag"), c.read(3, 5, "name")
(150, b'abc')
"""
from __future__ import annotations

import struct

from hubfmt.codecs import protowire
from hubfmt.errors import FormatError

WINDOW = 1 << 16


class FileCursor:
    """Reads at `pos` of the open binary file `f` whose data ends at `end` (`path` names it in
    errors, `what_file` in the message: "not a valid MindSpore checkpoint")."""

    def __init__(self, f, end: int, path: str, what_file: str = "truncated or corrupt file"):
        self.f, self.end, self.path, self.what_file = f, end, path, what_file
        self.pos = 0
        self._buf = b""
        self._buf_at = 0

    def fail(self, problem: str):
        raise FormatError(f"{self.what_file}: {problem} (at byte {self.pos})", self.path)

    def need(self, n: int, limit: int | None, what: str) -> None:
        limit = self.end if limit is None else limit
        if n < 0 or self.pos + n > limit:
            where = "the file" if limit == self.end else "its enclosing message"
            self.fail(f"{what} of {n} bytes runs past the end of {where}")

    def read(self, n: int, limit: int | None, what: str) -> bytes:
        self.need(n, limit, what)
        lo = self.pos - self._buf_at
        if not (0 <= lo and lo + n <= len(self._buf)):
            self.f.seek(self.pos)
            self._buf = self.f.read(max(n, WINDOW))
            self._buf_at = self.pos
            lo = 0
            if len(self._buf) < n:
                self.fail(f"file shorter than expected while reading {what}")
        self.pos += n
        return self._buf[lo:lo + n]

    def skip(self, n: int, limit: int | None, what: str) -> int:
        """Skip `n` bytes (a tensor's data); returns where they start."""
        self.need(n, limit, what)
        start = self.pos
        self.pos += n
        return start

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.read(4, None, what))[0]

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.read(4, None, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.read(8, None, what))[0]

    def varint(self, limit: int | None, what: str) -> int:
        """A protobuf varint (at most 10 bytes, at most 64 bits), decoded by protowire from the window."""
        limit = self.end if limit is None else limit
        avail = min(10, limit - self.pos)
        if avail <= 0:
            self.fail(f"{what}: varint runs past the end of its message")
        lo = self.pos - self._buf_at
        if not (0 <= lo and lo + avail <= len(self._buf)):
            self.f.seek(self.pos)
            self._buf = self.f.read(max(avail, WINDOW))
            self._buf_at, lo = self.pos, 0
        try:
            value, end = protowire.read_varint(self._buf, lo, min(lo + avail, len(self._buf)))
        except protowire.Malformed as e:
            self.fail(f"{what}: {e}")
        if value >= 1 << 64:
            self.fail(f"{what}: varint exceeds 64 bits")
        self.pos += end - lo
        return value
