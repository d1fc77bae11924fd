"""Zip archives as checkpoint containers (torch.save files, .keras archives): opened with every
size checked before anything is read, damaged archives one FormatError, members located by their
local headers so stored ones can be read (or kernel-copied) in place.

zipfile alone is not enough for untrusted files: it raises a dozen exception types on damage, reads
a member's claimed size in one allocation, lets an LZMA or bzip2 header allocate gigabytes before
a byte is read, and silently picks the last of two members with one name (torch's reader picks the
first: the same file would mean two things).

>>> import io, zipfile as z; buf = io.BytesIO()
>>> with z.ZipFile(buf, "w") as w: w.writestr("a/data.pkl", b"x")
>>> with Directory("mem.zip", buf.getvalue()) as zd: zd.names()
['a/data.pkl']
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib

from hubfmt.errors import FormatError

LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")     # 30 bytes
LOCAL_MAGIC = b"PK\x03\x04"
# Deflate cannot expand data by more than ~1032x; a bigger claim is damage or a zip bomb.
MAX_DEFLATE_RATIO = 1100


_EOCD = struct.Struct("<4s4H2LH")            # end of central directory, 22 bytes
_ZIP64_LOCATOR = struct.Struct("<4sLQL")       # 20 bytes, just before the EOCD
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")      # 56 bytes
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")     # one central directory entry, 46 bytes


def first_name_where(path: str, accept, block: int = 1 << 20) -> str | None:
    """The first member name in the central directory of the zip archive at `path` for which
    `accept(name)` holds, or None (none, or not a readable archive; never raises). Stops there:
    for sniffing, where zipfile would build a ZipInfo for each of a million members first. The
    reader opens the archive fully and checks everything."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            tail_len = min(size, _EOCD.size + 0xFFFF)
            f.seek(size - tail_len)
            tail = f.read(tail_len)
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or at + _EOCD.size > len(tail):
                return None
            _, _, _, _, count, cd_size, cd_start, _ = _EOCD.unpack_from(tail, at)
            if (count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_start == 0xFFFFFFFF) and at >= _ZIP64_LOCATOR.size:
                magic, _, z64_at, _ = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)
                if magic != b"PK\x06\x07":
                    return None
                f.seek(z64_at)
                rec = f.read(_ZIP64_EOCD.size)
                if len(rec) < _ZIP64_EOCD.size or rec[:4] != b"PK\x06\x06":
                    return None
                count, cd_size, cd_start = _ZIP64_EOCD.unpack(rec)[7:10]
            f.seek(cd_start)
            buf, pos = b"", 0
            for _ in range(count):
                if pos + _CENTRAL.size > len(buf):
                    buf = buf[pos:] + f.read(block)
                    pos = 0
                    if _CENTRAL.size > len(buf):
                        return None
                fields = _CENTRAL.unpack_from(buf, pos)
                if fields[0] != b"PK\x01\x02":
                    return None
                name_len, extra_len, comment_len = fields[12], fields[13], fields[14]
                end = pos + _CENTRAL.size + name_len
                while end > len(buf):
                    more = f.read(block)
                    if not more:
                        return None
                    buf += more
                name = buf[pos + _CENTRAL.size:end].decode("utf-8", "replace")
                if accept(name):
                    return name
                pos = end + extra_len + comment_len
        return None
    except MemoryError:
        raise
    except Exception:           # any damage: no such member
        return None


def check_member(info: zipfile.ZipInfo, file_size: int, path: str, writer: str) -> None:
    """Refuse a member no `writer` (torch, Keras) writes: compression other than stored/deflate,
    or sizes the file cannot hold."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FormatError(f"zip member {info.filename} uses compression method {info.compress_type}, "
                          f"which {writer} never writes", path)
    if info.compress_size > file_size or info.file_size > max(info.compress_size, 1) * MAX_DEFLATE_RATIO:
        raise FormatError(f"zip member {info.filename} claims {info.file_size} bytes, more than the file can hold", path)
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise FormatError(f"zip member {info.filename}: stored sizes disagree", path)


# ---- a compact reader of the central directory, for archives of a million members (#18) -------

# Of a central directory entry only what the walk needs: signature, version needed to extract,
# flags (bit 11: UTF-8 name), name/extra/comment lengths.
_CENTRAL_HEAD = struct.Struct("<4s2xBxH18xHHH")
_EXTRA_HEAD = struct.Struct("<HH")
_LOCAL_LENGTHS = struct.Struct("<4s22xHH")     # a local header's magic, name and extra lengths
_U64 = struct.Struct("<Q")
_MAX_EXTRACT_VERSION = 63           # zipfile's: newer features (e.g. encryption schemes) it cannot read
_UTF8_NAME, _ENCRYPTED, _PATCHED, _STRONG = 0x800, 0x1, 0x20, 0x40


class Member(tuple):
    """One member, as its central directory entry says: (filename, header_offset,
    compress_size, file_size, CRC, compress_type, flag_bits), names as ZipInfo's."""

    __slots__ = ()
    filename = property(lambda self: self[0])
    header_offset = property(lambda self: self[1])
    compress_size = property(lambda self: self[2])
    file_size = property(lambda self: self[3])
    CRC = property(lambda self: self[4])
    compress_type = property(lambda self: self[5])
    flag_bits = property(lambda self: self[6])


class Directory:
    """The central directory of a zip archive at `path` (or in `data`, a nested file named
    `path`), read the way zipfile reads it (end record, zip64 records, bytes prepended to the
    archive, UTF-8 or cp437 names cut at a NUL, zip64 extra fields) but kept as its raw bytes and a
    name -> entry position dict, each entry unpacked only when asked (`get`): zipfile builds a
    ZipInfo of ~600 bytes per member, 1.2 s and 115 MB for 200,000 one-tensor storages.

    Damage is a FormatError naming the file ("truncated or corrupt zip archive"), and so are two
    members with one name (torch reads the first, zipfile the last: the same file would mean two
    things). `read` and `data_offset` check a member before touching its bytes."""

    def __init__(self, path: str, data: bytes | None = None):
        self.path = path
        try:
            f = io.BytesIO(data) if data is not None else open(path, "rb")
        except FileNotFoundError:
            raise FormatError("no such file", path) from None
        except OSError as e:
            raise FormatError(f"cannot read: {e.strerror}", path) from None
        self._f = f
        self._block_start, self._block = 0, b""
        try:
            self.size = f.seek(0, 2)
            self._read_directory()
        except BaseException:
            f.close()
            raise

    def _corrupt(self, why: str) -> FormatError:
        return FormatError(f"truncated or corrupt zip archive ({why})", self.path)

    def _end_record(self) -> tuple[int, int, int]:
        """(central directory size, its offset as recorded, bytes prepended to the archive), as
        zipfile's _EndRecData/_EndRecData64 find them."""
        f, size = self._f, self.size
        if size < _EOCD.size:
            raise self._corrupt("File is not a zip file")
        f.seek(size - _EOCD.size)
        tail = f.read(_EOCD.size)
        if tail[:4] == b"PK\x05\x06" and tail[-2:] == b"\0\0":
            at = size - _EOCD.size
        else:
            start = max(size - (1 << 16) - _EOCD.size, 0)
            f.seek(start)
            tail = f.read()
            found = tail.rfind(b"PK\x05\x06")
            if found < 0 or found + _EOCD.size > len(tail):
                raise self._corrupt("File is not a zip file")
            at = start + found
            tail = tail[found:found + _EOCD.size]
        _, _, _, _, _, cd_size, cd_offset, _ = _EOCD.unpack(tail)
        zip64 = False
        if at >= _ZIP64_LOCATOR.size:
            f.seek(at - _ZIP64_LOCATOR.size)
            loc = f.read(_ZIP64_LOCATOR.size)
            magic, disk, _, disks = _ZIP64_LOCATOR.unpack(loc)
            if magic == b"PK\x06\x07":
                if disk != 0 or disks > 1:
                    raise self._corrupt("zipfiles that span multiple disks are not supported")
                rec_at = at - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size
                if rec_at >= 0:
                    f.seek(rec_at)
                    rec = f.read(_ZIP64_EOCD.size)
                    if rec[:4] == b"PK\x06\x06":
                        cd_size, cd_offset = _ZIP64_EOCD.unpack(rec)[8:10]
                        zip64 = True
        concat = at - cd_size - cd_offset
        if zip64:
            concat -= _ZIP64_EOCD.size + _ZIP64_LOCATOR.size
        return cd_size, cd_offset, concat

    def _read_directory(self) -> None:
        cd_size, cd_offset, concat = self._end_record()
        start = cd_offset + concat
        if start < 0:
            raise self._corrupt("Bad offset for central directory")
        if start + cd_size > self.size:
            raise self._corrupt("Truncated central directory")
        self._f.seek(start)
        cd = self._f.read(cd_size)
        index: dict[str, int] = {}
        unpack, pos, n = _CENTRAL_HEAD.unpack_from, 0, len(cd)
        while pos < n:
            if pos + _CENTRAL.size > n:
                raise self._corrupt("Truncated central directory")
            magic, version, flags, name_len, extra_len, comment_len = unpack(cd, pos)
            if magic != b"PK\x01\x02":
                raise self._corrupt("Bad magic number for central directory")
            if version > _MAX_EXTRACT_VERSION:
                raise self._corrupt(f"zip file version {version / 10:.1f}")
            at = pos + _CENTRAL.size
            raw = cd[at:at + name_len]
            try:
                # An ASCII name reads the same in cp437: decoded by the C UTF-8 decoder, not the
                # cp437 codec's Python wrapper (a million members, #18).
                name = raw.decode("utf-8" if flags & _UTF8_NAME or raw.isascii() else "cp437")
            except UnicodeDecodeError as e:
                raise self._corrupt(f"UnicodeDecodeError: {e}") from None
            if "\0" in name:
                name = name[:name.index("\0")]      # as zipfile.ZipInfo does
            if extra_len:
                self._zip64_extra(cd, at + name_len, extra_len, None)
            if name in index:
                raise FormatError(f"zip archive holds two members named {name!r}: readers disagree on which one counts",
                                  self.path)
            index[name] = pos
            pos = at + name_len + extra_len + comment_len
        self._cd, self._index, self._concat = cd, index, concat

    def _zip64_extra(self, cd: bytes, at: int, length: int, sizes: list | None) -> None:
        """Check the extra fields at cd[at:at + length] as zipfile does; with `sizes`
        ([file_size, compress_size, header_offset]), replace the 0xFFFFFFFF ones by the zip64 field's."""
        extra = cd[at:at + length]
        while len(extra) >= 4:
            kind, n = _EXTRA_HEAD.unpack_from(extra)
            if n + 4 > len(extra):
                raise self._corrupt(f"Corrupt extra field {kind:04x} (size={n})")
            if kind == 1 and sizes is not None:
                data, k = extra[4:n + 4], 0
                for i, sentinel in enumerate((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)):
                    if sizes[i] == sentinel or (i == 0 and sizes[0] == 0xFFFFFFFFFFFFFFFF):
                        if k + 8 > len(data):
                            raise self._corrupt(f"Corrupt zip64 extra field. {('File size', 'Compress size', 'Header offset')[i]} not found.")
                        sizes[i] = _U64.unpack_from(data, k)[0]
                        k += 8
            extra = extra[n + 4:]

    def names(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def get(self, name: str, forget: bool = False) -> Member | None:
        """The member named `name`, or None. `forget`: drop it from the index (a reader that
        asks for each member once frees its name as it goes; `get` of it again is None)."""
        pos = self._index.pop(name, None) if forget else self._index.get(name)
        if pos is None:
            return None
        f = _CENTRAL.unpack_from(self._cd, pos)
        flags, method, crc, csize, usize, name_len, extra_len, offset = f[5], f[6], f[9], f[10], f[11], f[12], f[13], f[18]
        if 0xFFFFFFFF in (csize, usize, offset):
            sizes = [usize, csize, offset]
            self._zip64_extra(self._cd, pos + _CENTRAL.size + name_len, extra_len, sizes)
            usize, csize, offset = sizes
        return Member((name, offset + self._concat, csize, usize, crc, method, flags))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Directory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _bytes_at(self, offset: int, n: int) -> bytes:
        # Read 64 KiB at a time: the local headers of members laid out in order come one read per
        # hundreds of small members, not a seek and a read each.
        start, block = self._block_start, self._block
        if not (start <= offset and offset + n <= start + len(block)):
            self._f.seek(offset)
            self._block, self._block_start = block, start = self._f.read(max(n, 64 << 10)), offset
        return block[offset - start:offset - start + n]

    def data_offset(self, m: Member) -> int:
        """Where member `m`'s (compressed) bytes start: after its local header, whose name and
        extra fields may differ in length from the central directory's."""
        header_offset, path = m[1], self.path
        if header_offset < 0:       # bytes missing before the archive (its records say where it starts)
            raise FormatError(f"zip member {m[0]} starts before the beginning of the file", path)
        if header_offset + LOCAL_HEADER.size > self.size:
            raise FormatError(f"zip member {m[0]} starts past the end of the file", path)
        magic, name_len, extra_len = _LOCAL_LENGTHS.unpack(self._bytes_at(header_offset, LOCAL_HEADER.size))
        if magic != LOCAL_MAGIC:
            raise FormatError(f"zip member {m[0]}: bad local header", path)
        start = header_offset + LOCAL_HEADER.size + name_len + extra_len
        if start + m[2] > self.size:
            raise FormatError(f"zip member {m[0]} ends at byte {start + m[2]}, past the "
                              f"end of the file ({self.size} bytes): truncated", path)
        return start

    def read(self, m: Member, writer: str) -> bytes:
        """Member `m`'s bytes, after check_member and the checks zipfile makes (flags, the local
        header's name), inflated within its claimed size, CRC-32 verified."""
        name, _, csize, usize, crc, method, flags = m
        check_member(m, self.size, self.path, writer)       # type: ignore[arg-type]
        if flags & (_ENCRYPTED | _PATCHED | _STRONG):
            raise FormatError(f"cannot read zip member {name}: it is encrypted or patched", self.path)
        start = self.data_offset(m)
        fields = LOCAL_HEADER.unpack(self._bytes_at(m[1], LOCAL_HEADER.size))
        raw_name = self._bytes_at(m[1] + LOCAL_HEADER.size, fields[-2])
        try:
            local_name = raw_name.decode("utf-8" if fields[3] & _UTF8_NAME else "cp437")
        except UnicodeDecodeError:
            local_name = None
        if local_name is None or local_name.split("\0")[0] != name:
            raise FormatError(f"cannot read zip member {name}: the name in its local header differs ({raw_name[:80]!r})",
                              self.path)
        self._f.seek(start)
        raw = self._f.read(csize)
        if method == zipfile.ZIP_DEFLATED:
            inflate = zlib.decompressobj(-15)
            try:
                out = inflate.decompress(raw, usize + 1)
            except zlib.error as e:
                raise FormatError(f"cannot read zip member {name}: zlib.error: {e}", self.path) from None
            if len(out) != usize:
                raise FormatError(f"cannot read zip member {name}: it inflates to other than the {usize} bytes "
                                  "its directory claims", self.path)
            raw = out
        if zlib.crc32(raw) != crc:
            raise FormatError(f"cannot read zip member {name}: BadZipFile: Bad CRC-32 for file {name!r}", self.path)
        return raw
