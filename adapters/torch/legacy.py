"""Reading torch's legacy format (torch.save(..., _use_new_zipfile_serialization=False), and every
file before torch 1.6): five things one after another in one stream,

    pickle  magic number 0x1950a86a20f9469cfc6c
    pickle  protocol version 1001
    pickle  sys_info {'protocol_version', 'little_endian', 'type_sizes'}
    pickle  the object, storages as persistent ids ('storage', type, key, location, numel, view)
    pickle  the list of storage keys, in the order their data follows
    then per key: int64 element count, then count * itemsize raw bytes.
"""
from __future__ import annotations

import pickle
import struct
from typing import Any, BinaryIO, Callable

from hubfmt.sdk import dtypes
from hubfmt.sdk import FormatError
from hubfmt.sdk import RestrictedUnpickler

from .tensors import BytesBlob, FileBlob, check_storage
from .vocabulary import Storage, storage_from_pid

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
# LONG1 opcode, length 10, the magic number little-endian: how every legacy file starts after PROTO.
MAGIC_BYTES = b"\x8a\x0a" + MAGIC.to_bytes(10, "little")


def _small_pickle(f: BinaryIO, path: str, what: str) -> Any:
    # The header pickles and the key list are plain values: no torch vocabulary, no stand-ins.
    try:
        return RestrictedUnpickler(f, source=path).load()
    except FormatError as e:
        raise FormatError(f"bad {what}: {e.message}", path) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise FormatError(f"bad {what}: {type(e).__name__}: {e}", path) from None


def load(f: BinaryIO, path: str, size: int, on_disk: bool, unpickle: Callable[[Any, Callable], Any]) -> Any:
    """The object in the legacy torch file open as `f` (`on_disk`: storages can be region-read
    from `path`; otherwise `f` is an in-memory BytesIO of a nested file)."""
    if _small_pickle(f, path, "magic number") != MAGIC:
        raise FormatError("not a torch checkpoint (bad legacy magic number)", path)
    if _small_pickle(f, path, "protocol version") != PROTOCOL:
        raise FormatError("unsupported legacy torch protocol version", path)
    sys_info = _small_pickle(f, path, "sys_info record")
    if not isinstance(sys_info, dict):
        raise FormatError("bad sys_info record", path)
    little = bool(sys_info.get("little_endian", True))
    storages: dict[str, Storage] = {}

    def persistent_load(pid):
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            return pid[1]           # a pickled module's class; its recorded source is ignored
        return storage_from_pid(pid, storages)

    obj = unpickle(f, persistent_load)
    keys = _small_pickle(f, path, "storage key list")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise FormatError("bad storage key list", path)
    pos = f.tell()
    for key in keys:
        storage = storages.get(key)
        if storage is None or storage.root is not None:
            raise FormatError(f"storage key {key!r} is not used by the pickle", path)
        if pos + 8 > size:
            raise FormatError(f"file ends before storage {key}: truncated", path)
        f.seek(pos)
        (count,) = struct.unpack("<q" if little else ">q", f.read(8))
        nbytes = count * dtypes.itemsize(storage.dtype)
        if count < 0 or pos + 8 + nbytes > size:
            raise FormatError(f"storage {key} claims {count} elements, past the end of the file "
                              f"({size} bytes): truncated", path)
        if on_disk:
            storage.data = FileBlob(path, pos + 8, nbytes, little)
        else:
            f.seek(pos + 8)
            storage.data = BytesBlob(f.read(nbytes), little)
        check_storage(storage, path)
        pos += 8 + nbytes
    for key, storage in storages.items():
        if storage.root is None and storage.data is None:
            raise FormatError(f"storage {key} has no data in the file", path)
    return obj
