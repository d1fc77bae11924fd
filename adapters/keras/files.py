"""Opening Keras weight files without Keras: a `.weights.h5` (HDF5) file, or the h5 member of a
`.keras` zip archive. Keras stores archive members uncompressed, so the member is opened in place
through a window on the archive (its datasets' offsets are then offsets in the archive too); a
compressed member is read through zipfile instead.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from contextlib import contextmanager

from hubfmt.sdk import Checksum, FileSpan, FormatError, MissingFrameworkError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
WEIGHTS_MEMBER = "model.weights.h5"     # Keras 3's name for the weights inside a .keras archive
CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
MAX_JSON = 64 * 2**20                    # a larger config.json is damage, not a model


def h5py_module():
    """h5py, or a one-line error saying how to get it (it is the `keras` extra)."""
    try:
        import h5py
    except ImportError:
        raise MissingFrameworkError("h5py", "h5py", "reading or writing Keras .weights.h5/.keras files") from None
    return h5py


class _Window(io.RawIOBase):
    """A read-only file object over bytes [start, start+size) of a file: the h5 member of a zip."""

    def __init__(self, f, start: int, size: int):
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, pos, whence=0):
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, b):
        n = max(0, min(len(b), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)


def is_hdf5(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def is_keras_archive(path: str) -> bool:
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
        return CONFIG_MEMBER in names and WEIGHTS_MEMBER in names
    except MemoryError:
        raise
    except Exception:       # zipfile raises many types on damaged archives (found by tests/fuzz)
        return False


def _check_compression(path: str, info: zipfile.ZipInfo) -> None:
    # Keras stores members uncompressed (deflate is tolerated); an LZMA or bzip2 header can make
    # the decompressor allocate gigabytes before reading a byte (found by tests/fuzz).
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FormatError(f"zip member {info.filename} uses compression method {info.compress_type}, "
                          "which Keras never writes", path)
    # zipfile reads compress_size bytes in one call: a claim beyond the file would allocate it.
    if info.compress_size > os.path.getsize(path):
        raise FormatError(f"zip member {info.filename} claims {info.compress_size} bytes, more than the file holds", path)


def _member_data_offset(path: str, f, info: zipfile.ZipInfo, size: int) -> int:
    """Where a stored (uncompressed) zip member's bytes start: after its local file header."""
    f.seek(info.header_offset)
    head = f.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise FormatError(f"zip member {info.filename}: bad local header", path)
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > size:
        raise FormatError(f"zip member {info.filename} ends past the end of the file ({size} bytes)", path)
    return start


def _read_json(path: str, z: zipfile.ZipFile, member: str) -> dict | None:
    try:
        info = z.getinfo(member)
    except KeyError:
        return None
    if info.file_size > MAX_JSON:
        raise FormatError(f"{member} is implausibly large ({info.file_size} bytes)", path)
    _check_compression(path, info)
    try:
        doc = json.loads(z.read(member).decode("utf-8"))
    except MemoryError:
        raise
    except Exception as e:  # BadZipFile, zlib.error, RuntimeError (encrypted), NotImplementedError...
        raise FormatError(f"{member} is not valid JSON: {type(e).__name__}: {e}", path) from None
    if not isinstance(doc, dict):
        raise FormatError(f"{member} is not a JSON object", path)
    return doc


@contextmanager
def open_h5(path: str):
    """(h5py.File, absolute offset of the h5 bytes in `path` (None when compressed), their size,
    config, metadata, member) for a .weights.h5 file or a .keras archive; FormatError for anything
    else. `member` is the stored archive member's byte range with its zip CRC-32 (None for a bare
    file or a compressed member, which zipfile checks as it inflates): every tensor read in place
    is part of it, and answers for it (hubfmt.sdk.part_of)."""
    h5py = h5py_module()
    path = os.fspath(path)
    if os.path.isdir(path):
        raise FormatError("a directory, not a Keras file (for an unzipped .keras directory, read its "
                          f"{WEIGHTS_MEMBER})", path)
    if not os.path.isfile(path):
        raise FormatError("no such file", path)
    size = os.path.getsize(path)
    if is_hdf5(path):
        try:
            h5 = h5py.File(path, "r")
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
            raise FormatError(f"not a readable HDF5 file ({h5_reason(e)})", path) from None
        try:
            yield h5, 0, size, None, None, None
        finally:
            h5.close()
        return
    if not zipfile.is_zipfile(path):
        raise FormatError("neither an HDF5 .weights.h5 file nor a .keras zip archive", path)
    try:
        z = zipfile.ZipFile(path)
    except MemoryError:
        raise
    except Exception as e:  # BadZipFile, NotImplementedError (unknown zip version), ...
        raise FormatError(f"damaged zip archive: {type(e).__name__}: {e}", path) from None
    with z, open(path, "rb") as raw:
        try:
            info = z.getinfo(WEIGHTS_MEMBER)
        except KeyError:
            raise FormatError(f"zip archive without {WEIGHTS_MEMBER}: not a Keras 3 .keras file", path) from None
        config = _read_json(path, z, CONFIG_MEMBER)
        metadata = _read_json(path, z, METADATA_MEMBER)
        _check_compression(path, info)
        try:
            member = None
            if info.compress_type == zipfile.ZIP_STORED:
                start = _member_data_offset(path, raw, info, size)
                fobj = _Window(raw, start, info.file_size)
                member = FileSpan(path, start, info.file_size, Checksum("crc32", info.CRC))
            else:   # compressed: inflated once per process, no in-place byte ranges
                start = None
                fobj = _inflated(path, z, info)
            h5 = h5py.File(fobj, "r")
        except (OSError, ValueError, RuntimeError, NotImplementedError, zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise FormatError(f"{WEIGHTS_MEMBER} in the archive is not a readable HDF5 file ({h5_reason(e)})", path) from None
        try:
            yield h5, start, info.file_size, config, metadata, member
        finally:
            h5.close()
            if start is None:
                fobj.close()


# A deflated member, inflated once per process into an unnamed temporary file (the OS removes it
# even on SIGKILL): h5py seeks backwards, and a seek back in a zipfile stream re-inflates from byte
# 0, so reading through zipfile cost O(seeks x member) and each lazy tensor re-opened it.
_INFLATED: dict[tuple, int] = {}
MAX_INFLATED = 64 << 30      # bytes one deflated member may inflate to (the member says its size)


def _inflated(path: str, z: zipfile.ZipFile, info: zipfile.ZipInfo):
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, info.filename)
    fd = _INFLATED.get(key)
    if fd is None:
        if info.file_size > MAX_INFLATED or info.file_size > 1100 * max(info.compress_size, 1) + (1 << 20):
            raise FormatError(f"zip member {info.filename} would inflate {info.compress_size} bytes to "
                              f"{info.file_size}: beyond deflate's ratio", path)
        with tempfile.TemporaryFile() as tmp:
            with z.open(info) as src:        # zipfile stops at file_size and checks the CRC-32
                shutil.copyfileobj(src, tmp, 1 << 20)
            tmp.flush()
            fd = os.dup(tmp.fileno())
        _INFLATED[key] = fd
    # An open file description of its own (its own offset), so several readers never interfere.
    return open(f"/proc/self/fd/{fd}", "rb")


def h5_reason(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]


# ---- global heaps ----------------------------------------------------------------------------
# Variable-length strings (the `name` attributes Keras writes) live in HDF5 global heap
# collections. HDF5 1.14 loops forever on a collection whose objects do not tile it (found by
# fuzzing: a free-space object of size 0), so every collection is checked before any attribute
# is read. Layout (HDF5 file format spec, "Global Heap"): "GCOL", version 1, 3 reserved bytes,
# the collection size (8 bytes), then objects: index (2), reference count (2), reserved (4),
# size (8), data padded to 8 bytes; index 0 is the free space, which runs to the end.
_GCOL = b"GCOL\x01\x00\x00\x00"
_GCOL_MIN = 4096            # HDF5 never makes a smaller collection
_SCAN_CHUNK = 1 << 20


def _check_collection(f, at: int, limit: int, path: str, where: int) -> None:
    """Walk the collection at file offset `at` (header by header: nothing large is read)."""
    f.seek(at)
    head = f.read(16)
    size = struct.unpack_from("<Q", head, 8)[0] if len(head) == 16 else 0
    if size < _GCOL_MIN or at + size > limit:
        raise FormatError(f"damaged HDF5 global heap at byte {where}: collection size {size}", path)
    pos = 16
    while pos + 16 <= size:
        f.seek(at + pos)
        index, _, _, obj = struct.unpack("<HHIQ", f.read(16))
        if index == 0:          # free space: it must end the collection exactly
            if pos + obj != size or obj < 16:
                raise FormatError(f"damaged HDF5 global heap at byte {where}: free space of {obj} bytes at {pos}", path)
            return
        step = 16 + (obj + 7) // 8 * 8
        if pos + step > size:
            raise FormatError(f"damaged HDF5 global heap at byte {where}: object {index} of {obj} bytes "
                              "runs past the collection", path)
        pos += step
    # Out of the loop with fewer than 16 bytes left: free space too small for an object header,
    # which HDF5 leaves unrepresented (a full collection: Keras files of a few hundred layers).


def check_global_heaps(path: str, start: int, size: int, skip: list[tuple[int, int]]) -> None:
    """FormatError unless every global heap collection in the h5 bytes [start, start+size) of
    `path` is well formed. `skip` lists (offset, end) ranges of dataset bytes, relative to
    `start`: only metadata is scanned, so the cost does not grow with the weights."""
    ranges, pos = [], 0
    for a, b in sorted(skip):
        if a > pos:
            ranges.append((pos, a))
        pos = max(pos, b)
    if pos < size:
        ranges.append((pos, size))
    with open(path, "rb") as f:
        for a, b in ranges:
            for off in range(a, b, _SCAN_CHUNK):
                f.seek(start + off)
                block = f.read(min(_SCAN_CHUNK, b - off) + len(_GCOL) - 1)
                i = block.find(_GCOL)
                while 0 <= i < min(_SCAN_CHUNK, b - off):
                    _check_collection(f, start + off + i, start + size, path, off + i)
                    i = block.find(_GCOL, i + 1)
