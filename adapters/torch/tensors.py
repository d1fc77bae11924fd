"""Where a storage's bytes lie (`Blob`s) and how a pickled tensor becomes a hubfmt LazyTensor.

A contiguous tensor whose bytes lie raw and little-endian in the file becomes a region_tensor, so
writers copy it file-to-file; anything else (non-contiguous views, compressed zip members,
big-endian files, storages embedded in the pickle) gets a loader that reads just the bytes the
view spans and slices them with its strides.
"""
from __future__ import annotations

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import LazyTensor, read_region, region_tensor
from hubfmt.sdk import FormatError

from .vocabulary import Storage, TensorRef

# A strided view may repeat elements (stride 0); refuse one that would blow up memory on load.
_MAX_EXPANSION_BYTES = 256 * 2**20


class FileBlob:
    """`nbytes` raw bytes at `offset` of `path` (a STORED zip member, a legacy storage)."""

    def __init__(self, path: str, offset: int, nbytes: int, little_endian: bool = True):
        self.path, self.offset, self.nbytes, self.little_endian = path, offset, nbytes, little_endian

    def read(self, start: int, n: int) -> np.ndarray:
        return read_region(self.path, self.offset + start, "uint8", (n,))


class BytesBlob:
    """Bytes already in memory (a torch file nested in a pickle)."""

    def __init__(self, data: bytes, little_endian: bool = True):
        self.data, self.nbytes, self.little_endian = data, len(data), little_endian

    def read(self, start: int, n: int) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.uint8, count=n, offset=start)


class MemberBlob:
    """A compressed zip member: decompressed (whole, once per load) when a tensor asks."""

    def __init__(self, path: str, member: str, nbytes: int, little_endian: bool = True):
        self.path, self.member, self.nbytes, self.little_endian = path, member, nbytes, little_endian

    def read(self, start: int, n: int) -> np.ndarray:
        import zipfile
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                f.seek(start)
                raw = f.read(n)
        except MemoryError:
            raise
        except Exception as e:      # BadZipFile, zlib.error, RuntimeError (encrypted)... on damage
            raise FormatError(f"cannot read zip member {self.member}: {type(e).__name__}: {e}", self.path) from None
        if len(raw) != n:
            raise FormatError(f"zip member {self.member} ends early", self.path)
        return np.frombuffer(raw, dtype=np.uint8)


def check_storage(storage: Storage, path: str) -> None:
    """The bytes found for a storage must cover what its persistent id claims."""
    claimed = storage.numel * dtypes.itemsize(storage.dtype)
    if storage.data is None:
        raise FormatError(f"storage {storage.key} has no data in the file", path)
    if storage.data.nbytes < claimed:
        raise FormatError(f"storage {storage.key} holds {storage.data.nbytes} bytes, shorter than the "
                          f"{claimed} its header claims", path)


def c_strides(shape) -> tuple:
    out, step = [], 1
    for d in reversed(shape):
        out.append(step)
        step *= d
    return tuple(reversed(out))


def is_contiguous(shape, stride) -> bool:
    return all(s == c or d == 1 for d, s, c in zip(shape, stride, c_strides(shape), strict=True))


def byte_span(t: TensorRef) -> tuple[Storage, int, int]:
    """(root storage, first byte, byte count) the view `t` touches (count 0 for empty tensors)."""
    root, base_bytes = t.storage, 0
    while root.root is not None:
        base_bytes += root.root_offset * dtypes.itemsize(root.dtype)
        root = root.root
    size = dtypes.itemsize(t.dtype)
    start = base_bytes + t.offset * size
    if any(d == 0 for d in t.shape):
        return root, start, 0
    last = sum((d - 1) * s for d, s in zip(t.shape, t.stride, strict=True))
    return root, start, (last + 1) * size


def to_lazy(t: TensorRef, name: str, path: str) -> LazyTensor:
    """A LazyTensor for tensor `name`, every extent checked against its storage first."""
    if t.dtype not in dtypes.DTYPES:
        raise FormatError(f"tensor {name!r} has dtype {t.dtype}, which hubfmt cannot represent", path)
    root, start, count = byte_span(t)
    have = root.numel * dtypes.itemsize(root.dtype)
    if start + count > have:
        raise FormatError(f"tensor {name!r} (shape {list(t.shape)}, offset {t.offset}, stride {list(t.stride)}) "
                          f"extends to byte {start + count}, past its storage {root.key} of {have} bytes", path)
    shape, dtype = t.shape, t.dtype
    size = dtypes.itemsize(dtype)
    if count == 0:
        return LazyTensor.from_array(np.zeros(shape, dtype=dtypes.storage_dtype(dtype)), dtype)
    blob = root.data
    contiguous = is_contiguous(shape, t.stride)
    logical = size
    for d in shape:
        logical *= d
    if not contiguous and logical > max(4 * count, _MAX_EXPANSION_BYTES):
        raise FormatError(f"tensor {name!r} repeats its {count} stored bytes into {logical} (stride 0 "
                          f"expansion); refusing to materialise it", path)
    if contiguous and isinstance(blob, FileBlob) and blob.little_endian:
        return region_tensor(blob.path, blob.offset + start, dtype, shape)
    stride = t.stride

    def load() -> np.ndarray:
        raw = blob.read(start, count)
        st = dtypes.storage_dtype(dtype)
        arr = np.frombuffer(raw, dtype=st if blob.little_endian else st.newbyteorder(">"))
        if contiguous:
            arr = arr.reshape(shape)
        else:
            arr = np.lib.stride_tricks.as_strided(arr, shape, tuple(s * size for s in stride), writeable=False)
        return np.ascontiguousarray(arr, dtype=st)

    return LazyTensor(shape, dtype, load)


def tie_key(t: TensorRef) -> tuple:
    """Two tensors with the same key are the same data (tied weights)."""
    root, start, count = byte_span(t)
    return id(root), start, t.shape, t.stride, t.dtype
