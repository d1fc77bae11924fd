"""Reading torch's zip format (torch.save since 1.6): `<dir>/data.pkl` holds the object pickle,
`<dir>/data/<key>` each storage's raw bytes (STORED, 64-byte aligned by torch), `<dir>/byteorder`
'little' or 'big'. `<dir>` is whatever the writer chose (torch uses the file's stem).

Storages are located through the zip's central directory and each member's local header, and
every size is checked against the file before anything is read.
"""
from __future__ import annotations

import io
import zipfile
from typing import Any, Callable

from hubfmt.sdk import FormatError
from hubfmt.sdk import ziparchive

from .tensors import BytesBlob, FileBlob, MemberBlob, check_storage
from .vocabulary import Storage, storage_from_pid

# Deflate cannot expand data by more than ~1032x; a bigger claim is damage or a zip bomb.
_MAX_RATIO = 1100


def find_root(names: list[str]) -> str | None:
    """The archive directory holding data.pkl ('' for a bare data.pkl), or None."""
    roots = [n[: -len("data.pkl")] for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    roots = [r for r in roots if r.count("/") <= 1]
    return roots[0] if len(roots) == 1 else None


def load(path: str, data: bytes | None, unpickle: Callable[[Any, Callable], Any]) -> Any:
    """The object in a zip-format torch file at `path` (or in `data`, a nested file)."""
    # The compact directory (not zipfile's ZipInfo per member): a storage's entry is unpacked
    # only when the pickle names it (#18).
    with ziparchive.Directory(path, data) as zd:
        root = find_root(zd.names())
        if root is None:
            raise FormatError("zip archive is not a torch checkpoint (no single <dir>/data.pkl member)", path)
        little = True
        order_member = zd.get(root + "byteorder")
        if order_member is not None:
            order = zd.read(order_member, "torch").strip()
            if order not in (b"little", b"big"):
                raise FormatError(f"unknown byteorder record {order[:20]!r}", path)
            little = order == b"little"
        pickle_member = zd.get(root + "data.pkl")
        assert pickle_member is not None
        pickle_bytes = zd.read(pickle_member, "torch")
        storages: dict[str, Storage] = {}
        prefix = root + "data/"

        def locate(storage: Storage) -> None:
            # Each storage is located once (storages holds it by key): its entry is dropped
            # from the index as it is taken, freeing the member's name before the graph is done.
            m = zd.get(prefix + storage.key, forget=True)
            if m is None:
                raise FormatError(f"storage {storage.key} is missing from the archive (no {prefix}{storage.key})", path)
            if data is not None:
                storage.data = BytesBlob(zd.read(m, "torch"), little)
            elif m[5] == zipfile.ZIP_STORED:
                if m[2] != m[3]:
                    raise FormatError(f"zip member {m[0]}: stored sizes disagree", path)
                storage.data = FileBlob(path, zd.data_offset(m), m[3], little, crc32=m[4])
            else:
                zd.data_offset(m)
                if m[3] > max(m[2], 1) * _MAX_RATIO:
                    raise FormatError(f"zip member {m[0]} claims an impossible size", path)
                storage.data = MemberBlob(path, m[0], m[3], little)
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
