"""Zip archives as checkpoint containers (torch.save files, .keras archives): opened with every
size checked before anything is read, damaged archives one FormatError, members located by their
local headers so stored ones can be read (or kernel-copied) in place.

zipfile alone is not enough for untrusted files: it raises a dozen exception types on damage, reads
a member's claimed size in one allocation, lets an LZMA or bzip2 header allocate gigabytes before
a byte is read, and silently picks the last of two members with one name (torch's reader picks the
first: the same file would mean two things).

>>> import io, zipfile as z; buf = io.BytesIO()
>>> with z.ZipFile(buf, "w") as w: w.writestr("a/data.pkl", b"x")
>>> with open_archive("mem.zip", buf.getvalue()) as zf: sorted(zf.NameToInfo)
['a/data.pkl']
"""
from __future__ import annotations

import io
import struct
import zipfile

from hubfmt.errors import FormatError

LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")     # 30 bytes
LOCAL_MAGIC = b"PK\x03\x04"
# Deflate cannot expand data by more than ~1032x; a bigger claim is damage or a zip bomb.
MAX_DEFLATE_RATIO = 1100


def open_archive(path: str, data: bytes | None = None) -> zipfile.ZipFile:
    """The archive at `path` (or in `data`, a nested file named `path`); duplicate member names
    and any damage zipfile reports are a FormatError naming the file."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if data is not None else path)
    except FileNotFoundError:
        raise FormatError("no such file", path) from None
    except MemoryError:
        raise
    except Exception as e:      # zipfile raises a dozen types on damaged archives (found by tests/fuzz)
        raise FormatError(f"truncated or corrupt zip archive ({type(e).__name__}: {e})", path) from None
    names = [i.filename for i in zf.infolist()]
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dup = ""
        for n in names:
            if n in seen:
                dup = n
                break
            seen.add(n)
        zf.close()
        raise FormatError(f"zip archive holds two members named {dup!r}: readers disagree on which one counts", path)
    return zf


def is_archive_with(path: str, accept) -> bool:
    """Whether `path` is a zip archive whose member names satisfy `accept(names)` (reads only the
    central directory; never raises)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(accept(zf.namelist()))
    except MemoryError:
        raise
    except Exception:           # any damage: not such an archive
        return False


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


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int, path: str, writer: str) -> bytes:
    """A member's bytes, after check_member; zipfile's CRC-32 check included."""
    check_member(info, file_size, path, writer)
    try:
        return zf.read(info)
    except MemoryError:
        raise
    except Exception as e:      # BadZipFile (CRC), zlib.error, RuntimeError (encrypted), NotImplementedError...
        raise FormatError(f"cannot read zip member {info.filename}: {type(e).__name__}: {e}", path) from None


def data_offset(f, info: zipfile.ZipInfo, file_size: int, path: str) -> int:
    """Where member `info`'s (compressed) bytes start in the open archive file `f`: after its
    local header, whose name and extra fields may differ from the central directory's."""
    if info.header_offset + LOCAL_HEADER.size > file_size:
        raise FormatError(f"zip member {info.filename} starts past the end of the file", path)
    f.seek(info.header_offset)
    fields = LOCAL_HEADER.unpack(f.read(LOCAL_HEADER.size))
    if fields[0] != LOCAL_MAGIC:
        raise FormatError(f"zip member {info.filename}: bad local header", path)
    name_len, extra_len = fields[-2], fields[-1]
    start = info.header_offset + LOCAL_HEADER.size + name_len + extra_len
    if start + info.compress_size > file_size:
        raise FormatError(f"zip member {info.filename} ends at byte {start + info.compress_size}, past the "
                          f"end of the file ({file_size} bytes): truncated", path)
    return start
