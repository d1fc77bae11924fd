"""A streaming writer of the zip archive torch.load reads: every member STORED, each member's data
64-byte aligned (padding in the local header's extra field, as torch's own writer does), zip64
records where a size or offset needs them, CRC-32 computed from the bytes actually written (read
back from the output, since write_tensor may have copied them in the kernel). The read-back runs
in a worker thread while the next member is written (zlib and preadv release the GIL); small
members are checksummed in batches, from one read-back of the bytes they span. close()
waits for it, so the central directory has every CRC.

>>> with open("m.pth", "wb") as f:                       # doctest: +SKIP
...     z = ZipWriter(f)
...     z.add("archive/data.pkl", pickle_bytes)
...     z.begin("archive/data/0", t.nbytes); z.end(write_tensor(f, t))
...     z.close()
"""
from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from hubfmt.sdk import fold_region

ALIGNMENT = 64
ZIP64_LIMIT = 0xFFFFFFFF          # a size/offset at or above this goes in a zip64 extra field
_VERSION = 45                     # 4.5: zip64
_PAD_ID = 0x4246                  # "FB": the extra field torch pads with


# Members up to this size are checksummed in batches, not one by one: a flush, a read-back, a
# thread hand-off and a header patch per member cost ~20 us, more than a 1 KiB member's copy (#18).
_SMALL_MEMBER = 64 << 10
_BATCH = 4 << 20                  # bytes of small members read back at once
# A batch whose members average less than this is written back whole, its CRCs patched in, with
# one system call; larger members get their 4-byte patch each (rewriting them would cost more).
_REWRITE_BELOW = 4 << 10

_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL_CRC = 14                   # where a local header holds its CRC-32
_CENTRAL_CRC = 16                 # where a central directory record does
_U32 = struct.Struct("<L").pack
_PADDING = [struct.pack("<HH", _PAD_ID, pad) + b"Z" * pad for pad in range(ALIGNMENT)]   # the extra field


class ZipWriter:
    """Members in order: `add(name, data)`, or `begin(name, size)`, the data written to the file
    directly, then `end(written)` with the count written; `close()` writes the central directory.
    The write position is kept here (a tell per member is a system call) and checked against the
    file's at every read-back and at close. The central directory is built as members end, in one
    buffer (~66 bytes a member, not a tuple and a name each), their CRCs patched in when known."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.pos = f.tell()
        self.count = 0
        self._central = bytearray()
        self._late: list[tuple[int, Future | int]] = []   # central CRC field, its read-back job
        self._open: tuple[bytes, int, int, int] | None = None    # name, header offset, data start, size
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="hubfmt-zipcrc")
        # small members not yet checksummed: central CRC field, header offset, data start, size
        self._small: list[tuple[int, int, int, int]] = []
        self._small_bytes = 0

    def _local_header(self, name: bytes, offset: int, size: int, crc: int) -> bytes:
        big = size >= ZIP64_LIMIT or offset >= ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
        fixed = 30 + len(name) + len(extra) + 4
        pad = -(offset + fixed) % ALIGNMENT
        extra += struct.pack("<HH", _PAD_ID, pad) + b"Z" * pad
        shown = 0xFFFFFFFF if big else size
        return _LOCAL.pack(b"PK\x03\x04", _VERSION, 0, 0, 0, 0, 0x21, crc, shown, shown, len(name), len(extra)) + name + extra

    def _check_position(self) -> None:
        """After a flush: the file ends where the members written so far say it does."""
        actual = self.f.seek(0, os.SEEK_END)
        if actual != self.pos:
            raise ValueError(f"zip: the file holds {actual} bytes where its members account for {self.pos}")

    def begin(self, name: str, size: int) -> None:
        """Start member `name` of `size` bytes; its data is then written to the file directly."""
        if size > _SMALL_MEMBER:
            self._checksum_small()      # a batch is read back in one piece: it spans small members only
        offset = self.pos
        raw = name.encode()
        if size < ZIP64_LIMIT and offset < ZIP64_LIMIT:      # _local_header without zip64, inline
            pad = -(offset + 34 + len(raw)) % ALIGNMENT
            header = _LOCAL.pack(b"PK\x03\x04", _VERSION, 0, 0, 0, 0, 0x21, 0, size, size, len(raw), 4 + pad) + raw + _PADDING[pad]
        else:
            header = self._local_header(raw, offset, size, 0)
        self.f.write(header)
        self.pos = offset + len(header)
        self._open = (raw, offset, self.pos, size)

    def end(self, written: int) -> int:
        """Finish the open member, of `written` bytes: CRC-32 over the bytes in the file, patched
        into its local header and the central directory."""
        assert self._open is not None, "end() without begin()"
        raw, offset, start, size = self._open
        self._open = None
        if written != size:
            raise ValueError(f"zip member {raw.decode()}: {written} bytes written, {size} announced")
        self.pos = start + size
        if size < ZIP64_LIMIT and offset < ZIP64_LIMIT:      # _central_record without zip64, inline
            at = len(self._central) + _CENTRAL_CRC
            self._central += _CENTRAL.pack(b"PK\x01\x02", _VERSION, 3, _VERSION, 0, 0, 0, 0, 0x21,
                                           0, size, size, len(raw), 0, 0, 0, 0, 0, offset) + raw
            self.count += 1
        else:
            at = self._central_record(raw, offset, size) + _CENTRAL_CRC
        if size <= _SMALL_MEMBER:
            self._small.append((at, offset, start, size))
            self._small_bytes += size + start - offset
            if self._small_bytes >= _BATCH:
                self._checksum_small()
            return size
        self.f.flush()
        self._check_position()
        # A duplicate descriptor: the job never touches another file, even if `f` were closed first.
        fd = os.dup(self.f.fileno())
        crc: Future | int | None = None
        if self._pool is not None:
            try:
                crc = self._pool.submit(_checksum_and_patch, fd, offset, start, size)
            except RuntimeError:      # no thread could start (a memory rlimit counts its stack)
                self._pool = None
        if crc is None:
            crc = _checksum_and_patch(fd, offset, start, size)
        self._late.append((at, crc))
        return size

    def _central_record(self, raw: bytes, offset: int, size: int) -> int:
        """Append the central directory record of a member that needs zip64 fields (CRC 0 for now);
        returns where it starts. end() writes the others itself."""
        at = len(self._central)
        limit = ZIP64_LIMIT
        fields = [v for v in (size, size) if v >= limit]
        if offset >= limit:
            fields.append(offset)
        extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
        clip = (lambda v: 0xFFFFFFFF if v >= limit else v)
        self._central += _CENTRAL.pack(b"PK\x01\x02", _VERSION, 3, _VERSION, 0, 0, 0, 0, 0x21,
                                       0, clip(size), clip(size), len(raw), len(extra), 0, 0, 0, 0, clip(offset)) + raw + extra
        self.count += 1
        return at

    def _checksum_small(self) -> None:
        """CRC-32 of the small members written since the last batch, from one read-back of the
        bytes they span (headers included), each patched into its local header."""
        if not self._small:
            return
        self.f.flush()
        self._check_position()
        lo = self._small[0][1]
        buf = bytearray(self.pos - lo)
        view = memoryview(buf)
        fd = self.f.fileno()
        done = 0
        while done < len(buf):
            got = os.preadv(fd, [view[done:]], lo + done)
            if got <= 0:
                raise OSError(f"file shorter than the {len(buf)} bytes written at offset {lo}")
            done += got
        whole = len(self._small) > len(buf) // _REWRITE_BELOW
        central = self._central
        crc32 = zlib.crc32
        for at, offset, start, size in self._small:
            crc = _U32(crc32(view[start - lo:start - lo + size]))
            central[at:at + 4] = crc
            if whole:
                buf[offset - lo + _LOCAL_CRC:offset - lo + _LOCAL_CRC + 4] = crc
            else:
                os.pwrite(fd, crc, offset + _LOCAL_CRC)
        if whole:
            _pwrite_all(fd, view, lo)
        self._small.clear()
        self._small_bytes = 0

    def add(self, name: str, data: bytes) -> None:
        self.add_parts(name, [data])

    def add_parts(self, name: str, parts) -> None:
        """Member `name` holding the bytes-like `parts` one after the other."""
        size = sum(len(p) for p in parts)
        self.begin(name, size)
        for p in parts:
            self.f.write(p)
        self.end(size)

    def close(self) -> None:
        """Central directory (+ zip64 end records when needed) and end-of-central-directory."""
        self._checksum_small()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        central = self._central
        for at, crc in self._late:   # .result() re-raises a failed read-back here
            central[at:at + 4] = _U32(crc.result() if isinstance(crc, Future) else crc)
        self._late.clear()
        self.f.flush()
        self._check_position()
        cd_start = self.pos
        self.f.write(central)
        cd_end = cd_start + len(central)
        cd_size, count = len(central), self.count
        if count >= 0xFFFF or cd_start >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT:
            self.f.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, _VERSION, _VERSION, 0, 0, count, count,
                                     cd_size, cd_start))
            self.f.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, cd_end, 1))
            self.f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
        else:
            self.f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_start, 0))


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(f"could not write back {len(view)} bytes at offset {offset}")
        done += n


def _checksum_and_patch(fd: int, header_offset: int, start: int, size: int) -> int:
    """CRC-32 of a member's data, written into its local header; closes `fd`."""
    try:
        crc = fold_region(fd, start, size, zlib.crc32)
        os.pwrite(fd, _U32(crc), header_offset + _LOCAL_CRC)
        return crc
    finally:
        os.close(fd)
