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
...     z.begin("archive/data/0", t.nbytes); write_tensor(f, t); z.end()
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


class ZipWriter:
    def __init__(self, f: BinaryIO):
        self.f = f
        self.members: list[tuple[str, int, int, Future | int]] = []   # name, header offset, size, crc
        self._open: tuple[str, int, int, int] | None = None    # name, header offset, data start, size
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="hubfmt-zipcrc")
        self._small: list[tuple[int, int]] = []   # small members not yet checksummed: index in members, data start
        self._small_bytes = 0

    def _local_header(self, name: bytes, offset: int, size: int, crc: int) -> bytes:
        big = size >= ZIP64_LIMIT or offset >= ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
        fixed = 30 + len(name) + len(extra) + 4
        pad = -(offset + fixed) % ALIGNMENT
        extra += struct.pack("<HH", _PAD_ID, pad) + b"Z" * pad
        shown = 0xFFFFFFFF if big else size
        return struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", _VERSION, 0, 0, 0, 0, 0x21, crc,
                           shown, shown, len(name), len(extra)) + name + extra

    def begin(self, name: str, size: int) -> None:
        """Start member `name` of `size` bytes; its data is then written to the file directly."""
        if size > _SMALL_MEMBER:
            self._checksum_small()      # a batch is read back in one piece: it spans small members only
        offset = self.f.tell()
        self.f.write(self._local_header(name.encode(), offset, size, 0))
        self._open = (name, offset, self.f.tell(), size)

    def end(self) -> int:
        """Finish the open member: CRC-32 over the bytes written, patched into its local header."""
        name, offset, start, size = self._open
        self._open = None
        if size <= _SMALL_MEMBER:
            written = self.f.tell() - start     # writers append: the position is the end
            if written != size:
                raise ValueError(f"zip member {name}: {written} bytes written, {size} announced")
            self._small.append((len(self.members), start))
            self.members.append((name, offset, size, 0))
            self._small_bytes += size + start - offset
            if self._small_bytes >= _BATCH:
                self._checksum_small()
            return size
        self.f.flush()
        written = self.f.seek(0, os.SEEK_END) - start
        if written != size:
            raise ValueError(f"zip member {name}: {written} bytes written, {size} announced")
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
        self.members.append((name, offset, size, crc))
        return size

    def _checksum_small(self) -> None:
        """CRC-32 of the small members written since the last batch, from one read-back of the
        bytes they span (headers included), each patched into its local header."""
        if not self._small:
            return
        self.f.flush()
        lo = self.members[self._small[0][0]][1]
        hi = self.f.seek(0, os.SEEK_END)
        buf = bytearray(hi - lo)
        view = memoryview(buf)
        fd = self.f.fileno()
        done = 0
        while done < len(buf):
            got = os.preadv(fd, [view[done:]], lo + done)
            if got <= 0:
                raise OSError(f"file shorter than the {len(buf)} bytes written at offset {lo}")
            done += got
        for i, start in self._small:
            name, offset, size, _ = self.members[i]
            crc = zlib.crc32(view[start - lo:start - lo + size])
            os.pwrite(fd, struct.pack("<L", crc), offset + 14)
            self.members[i] = (name, offset, size, crc)
        self._small.clear()
        self._small_bytes = 0

    def add(self, name: str, data: bytes) -> None:
        self.begin(name, len(data))
        self.f.write(data)
        self.end()

    def close(self) -> None:
        """Central directory (+ zip64 end records when needed) and end-of-central-directory."""
        self._checksum_small()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        # .result() re-raises a failed read-back here
        self.members = [(n, o, s, c.result() if isinstance(c, Future) else c) for n, o, s, c in self.members]
        cd_start = self.f.tell()
        for name, offset, size, crc in self.members:
            raw = name.encode()
            fields = [v for v in (size, size) if v >= ZIP64_LIMIT]
            if offset >= ZIP64_LIMIT:
                fields.append(offset)
            extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            clip = (lambda v: 0xFFFFFFFF if v >= ZIP64_LIMIT else v)
            self.f.write(struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", _VERSION, 3, _VERSION, 0, 0, 0, 0, 0x21,
                                     crc, clip(size), clip(size), len(raw), len(extra), 0, 0, 0, 0, clip(offset))
                         + raw + extra)
        cd_end = self.f.tell()
        cd_size, count = cd_end - cd_start, len(self.members)
        if count >= 0xFFFF or cd_start >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT:
            self.f.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, _VERSION, _VERSION, 0, 0, count, count,
                                     cd_size, cd_start))
            self.f.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, cd_end, 1))
            self.f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
        else:
            self.f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_start, 0))


def _checksum_and_patch(fd: int, header_offset: int, start: int, size: int) -> int:
    """CRC-32 of a member's data, written into its local header; closes `fd`."""
    try:
        crc = fold_region(fd, start, size, zlib.crc32)
        os.pwrite(fd, struct.pack("<L", crc), header_offset + 14)
        return crc
    finally:
        os.close(fd)
