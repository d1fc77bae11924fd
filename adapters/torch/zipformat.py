"""Reading torch's zip format (torch.save since 1.6): `<dir>/data.pkl` holds the object pickle,
`<dir>/data/<key>` each storage's raw bytes (STORED, 64-byte aligned by torch), `<dir>/byteorder`
'little' or 'big'. `<dir>` is whatever the writer chose (torch uses the file's stem).

Storages are located through the zip's central directory and each member's local header, and
every size is checked against the file before anything is read.
"""
from __future__ import annotations

import io
import os
import struct
import zipfile
from typing import Any, Callable

from hubfmt.sdk import FormatError
from hubfmt.sdk import ziparchive

from .tensors import BytesBlob, FileBlob, MemberBlob, check_storage
from .vocabulary import Storage, storage_from_pid

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")     # 30 bytes
# Deflate cannot expand data by more than ~1032x; a bigger claim is damage or a zip bomb.
_MAX_RATIO = 1100


def find_root(names: list[str]) -> str | None:
    """The archive directory holding data.pkl ('' for a bare data.pkl), or None."""
    roots = [n[: -len("data.pkl")] for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    roots = [r for r in roots if r.count("/") <= 1]
    return roots[0] if len(roots) == 1 else None


def _open(path: str, data: bytes | None) -> zipfile.ZipFile:
    # Checked open: damage is one FormatError, and two members with one name are refused (torch
    # reads the first, zipfile the last: the same file would mean two things).
    return ziparchive.open_archive(path, data)


class _Blocks:
    """Bytes of an open archive at given offsets, read 64 KiB at a time: the local headers of
    members laid out in order come one read per hundreds of small members, not a seek and a read
    each (#18)."""

    __slots__ = ("f", "start", "block")

    def __init__(self, f):
        self.f, self.start, self.block = f, 0, b""

    def read(self, offset: int, n: int) -> bytes:
        if not (self.start <= offset and offset + n <= self.start + len(self.block)):
            self.f.seek(offset)
            self.block, self.start = self.f.read(max(n, 64 << 10)), offset
        return self.block[offset - self.start:offset - self.start + n]


def _data_offset(f: _Blocks, info: zipfile.ZipInfo, size: int, path: str) -> int:
    if info.header_offset + _LOCAL_HEADER.size > size:
        raise FormatError(f"zip member {info.filename} starts past the end of the file", path)
    fields = _LOCAL_HEADER.unpack(f.read(info.header_offset, _LOCAL_HEADER.size))
    if fields[0] != b"PK\x03\x04":
        raise FormatError(f"zip member {info.filename}: bad local header", path)
    name_len, extra_len = fields[-2], fields[-1]
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if start + info.compress_size > size:
        raise FormatError(f"zip member {info.filename} ends at byte {start + info.compress_size}, past the "
                          f"end of the file ({size} bytes): truncated", path)
    return start


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, path: str) -> bytes:
    # torch writes stored members (deflate tolerated); an LZMA or bzip2 header can make the
    # decompressor allocate gigabytes before reading a byte.
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FormatError(f"zip member {info.filename} uses compression method {info.compress_type}, "
                          "which torch never writes", path)
    if info.compress_size > size or info.file_size > max(info.compress_size, 1) * _MAX_RATIO:
        raise FormatError(f"zip member {info.filename} claims {info.file_size} bytes, more than the file can hold", path)
    try:
        return zf.read(info)
    except MemoryError:
        raise
    except Exception as e:      # BadZipFile, zlib.error, RuntimeError (encrypted), NotImplementedError...
        raise FormatError(f"cannot read zip member {info.filename}: {type(e).__name__}: {e}", path) from None


def load(path: str, data: bytes | None, unpickle: Callable[[Any, Callable], Any]) -> Any:
    """The object in a zip-format torch file at `path` (or in `data`, a nested file)."""
    size = len(data) if data is not None else os.path.getsize(path)
    with _open(path, data) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        root = find_root(list(infos))
        if root is None:
            raise FormatError("zip archive is not a torch checkpoint (no single <dir>/data.pkl member)", path)
        little = True
        if root + "byteorder" in infos:
            order = _read_member(zf, infos[root + "byteorder"], size, path).strip()
            if order not in (b"little", b"big"):
                raise FormatError(f"unknown byteorder record {order[:20]!r}", path)
            little = order == b"little"
        pickle_bytes = _read_member(zf, infos[root + "data.pkl"], size, path)
        storages: dict[str, Storage] = {}
        raw_file = open(path, "rb") if data is None else io.BytesIO(data)
        with raw_file:
            raw = _Blocks(raw_file)
            def locate(storage: Storage) -> None:
                info = infos.get(f"{root}data/{storage.key}")
                if info is None:
                    raise FormatError(f"storage {storage.key} is missing from the archive (no {root}data/{storage.key})", path)
                if data is not None:
                    storage.data = BytesBlob(_read_member(zf, info, size, path), little)
                elif info.compress_type == zipfile.ZIP_STORED:
                    if info.compress_size != info.file_size:
                        raise FormatError(f"zip member {info.filename}: stored sizes disagree", path)
                    storage.data = FileBlob(path, _data_offset(raw, info, size, path), info.file_size, little,
                                            crc32=info.CRC)
                else:
                    _data_offset(raw, info, size, path)
                    if info.file_size > max(info.compress_size, 1) * _MAX_RATIO:
                        raise FormatError(f"zip member {info.filename} claims an impossible size", path)
                    storage.data = MemberBlob(path, info.filename, info.file_size, little)
                check_storage(storage, path)

            def persistent_load(pid):
                storage = storage_from_pid(pid, storages)
                if storage.data is None and storage.root is None:
                    locate(storage)
                return storage

            return unpickle(io.BytesIO(pickle_bytes), persistent_load)


def is_torch_zip(path: str) -> bool:
    """A zip archive with a <dir>/data.pkl member (reads the central directory up to the first
    one: torch writes it first; the reader then checks there is exactly one)."""
    return ziparchive.first_name_where(path, lambda n: find_root([n]) is not None) is not None
