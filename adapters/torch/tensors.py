"""Where a storage's bytes lie (`Blob`s) and how a pickled tensor becomes a hubfmt LazyTensor.

A contiguous tensor whose bytes lie raw and little-endian in the file becomes a span_tensor, so
writers copy it file-to-file; anything else (non-contiguous views, compressed zip members,
big-endian files, storages embedded in the pickle) gets a loader that reads just the bytes the
view spans and slices them with its strides.
"""
from __future__ import annotations

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import FileSpan, LazyTensor, part_of, read_region, span_tensor
from hubfmt.sdk import Checksum, FormatError

from .vocabulary import Storage, TensorRef

# A strided view may repeat elements (stride 0); refuse one that would blow up memory on load.
_MAX_EXPANSION_BYTES = 256 * 2**20


class FileBlob:
    """`nbytes` raw bytes at `offset` of `path` (a STORED zip member, a legacy storage)."""

    __slots__ = ("path", "offset", "nbytes", "little_endian", "crc32", "_span")

    def __init__(self, path: str, offset: int, nbytes: int, little_endian: bool = True, crc32: int | None = None):
        self.path, self.offset, self.nbytes, self.little_endian = path, offset, nbytes, little_endian
        self.crc32, self._span = crc32, None

    @property
    def span(self) -> FileSpan:
        """The whole member, with its CRC-32 (None for legacy files): a view of all of it is checked
        against it directly, a view of part of it through part_of (the member read once). Made
        when a tensor first asks: a million storages are read before any tensor is made, and
        their spans then were ~120 MB of the read's peak (#13)."""
        span = self._span
        if span is None:
            crc = self.crc32
            span = self._span = FileSpan(self.path, self.offset, self.nbytes, None if crc is None else Checksum("crc32", crc))
        return span

    def part(self, start: int, n: int) -> FileSpan:
        return part_of(self.span, start, n)

    def read(self, start: int, n: int) -> np.ndarray:
        part = self.part(start, n)
        part.guard()
        raw = read_region(self.path, self.offset + start, "uint8", (n,))
        part.verify(raw)
        return raw


class BytesBlob:
    """Bytes already in memory (a torch file nested in a pickle)."""

    def __init__(self, data: bytes, little_endian: bool = True):
        self.data, self.nbytes, self.little_endian = data, len(data), little_endian

    def read(self, start: int, n: int) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.uint8, count=n, offset=start)


class MemberBlob:
    """A compressed zip member: inflated once, when a tensor first asks, into an unnamed temporary
    file (removed by the OS when closed, even if hubfmt is killed); every view of the storage then
    reads its bytes from there. Inflating per view would cost views x member size (a few KB of
    pickle can name thousands of views)."""

    def __init__(self, path: str, member: str, nbytes: int, little_endian: bool = True):
        self.path, self.member, self.nbytes, self.little_endian = path, member, nbytes, little_endian
        self._inflated = None

    def _inflate(self):
        import tempfile
        import zipfile
        tmp = tempfile.TemporaryFile(prefix="hubfmt-member-")
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                got = 0
                while got <= self.nbytes:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    tmp.write(chunk)
                    got += len(chunk)
        except MemoryError:
            tmp.close()
            raise
        except Exception as e:      # BadZipFile, zlib.error, RuntimeError (encrypted)... on damage
            tmp.close()
            raise FormatError(f"cannot read zip member {self.member}: {type(e).__name__}: {e}", self.path) from None
        if got != self.nbytes:
            tmp.close()
            raise FormatError(f"zip member {self.member} inflates to {got} bytes, not the {self.nbytes} "
                              "its directory claims", self.path)
        tmp.flush()
        return tmp

    def read(self, start: int, n: int) -> np.ndarray:
        import os
        if self._inflated is None:
            self._inflated = self._inflate()
        raw = os.pread(self._inflated.fileno(), n, start) if n else b""
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


# A legacy view storage points at its root; real files have one level. Longer chains (or a
# storage that is its own root) are damage or an attack.
_MAX_ROOT_CHAIN = 8


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_view(t: TensorRef, name: str, path: str) -> None:
    """Everything the view `t` says, checked where it is used (the rebuild functions checked it
    when the pickle made it; this holds whatever happened since): a real Storage chain ending at
    a root with data, non-negative integer offset/shape/stride of one rank, a known dtype."""
    if not isinstance(t, TensorRef):
        raise FormatError(f"tensor {name!r} is a {type(t).__name__}, not a tensor", path)
    if not (isinstance(t.shape, tuple) and isinstance(t.stride, tuple) and len(t.shape) == len(t.stride)
            and all(_count(v) for v in (*t.shape, *t.stride)) and _count(t.offset)):
        raise FormatError(f"tensor {name!r} has a malformed view (offset {t.offset!r}, shape {t.shape!r}, "
                          f"stride {t.stride!r})", path)
    s, hops = t.storage, 0
    while True:
        if not isinstance(s, Storage) or not _count(s.numel) or not _count(s.root_offset):
            raise FormatError(f"tensor {name!r} is a view of something that is not a storage", path)
        if s.root is None:
            break
        hops += 1
        if hops > _MAX_ROOT_CHAIN:
            raise FormatError(f"tensor {name!r}: its storage's chain of roots is longer than {_MAX_ROOT_CHAIN} "
                              "(or loops)", path)
        s = s.root
    if s.dtype not in dtypes.DTYPES or not isinstance(getattr(s.data, "nbytes", None), int):
        raise FormatError(f"tensor {name!r}: storage {s.key!r} has no data in the file", path)
    if s.data.nbytes < s.numel * dtypes.itemsize(s.dtype):
        raise FormatError(f"tensor {name!r}: storage {s.key!r} claims {s.numel} elements, more than the "
                          f"{s.data.nbytes} bytes the file holds for it", path)


def byte_span(t: TensorRef) -> tuple[Storage, int, int]:
    """(root storage, first byte, byte count) the view `t` touches (count 0 for empty tensors).
    `t` must have passed check_view."""
    root, base_bytes, hops = t.storage, 0, 0
    while root.root is not None:
        hops += 1
        if hops > _MAX_ROOT_CHAIN:
            raise FormatError(f"storage chain longer than {_MAX_ROOT_CHAIN} (or a loop)")
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
    check_view(t, name, path)
    if t.dtype not in dtypes.DTYPES:
        raise FormatError(f"tensor {name!r} has dtype {t.dtype}, which hubfmt cannot represent", path)
    problem = dtypes.shape_problem(t.shape, t.dtype)
    if problem:
        raise FormatError(f"tensor {name!r}: {problem}", path)
    root, start, count = byte_span(t)
    have = min(root.numel * dtypes.itemsize(root.dtype), root.data.nbytes)
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
        # The member's CRC-32 travels with the bytes, verified whether they are loaded or copied
        # in the kernel: on the bytes themselves for a view of the whole member, by one pass over
        # the member (shared by all its views) for a view of part of it.
        return span_tensor(blob.part(start, count), dtype, shape)
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


def lazy_and_tie_key(t: TensorRef, name: str, path: str) -> tuple[LazyTensor, tuple]:
    """(to_lazy(t, name, path), tie_key(t)) in one pass (#18): a tensor that passes every check
    check_view and to_lazy make on the plain case (a root Storage, plain non-negative ints, a
    contiguous view of a little-endian stored member) becomes its span_tensor here; any other one,
    and every one that fails a check, goes through to_lazy and fails or works exactly as there."""
    s, shape, stride, offset, dtype = t.storage, t.shape, t.stride, t.offset, t.dtype
    if (type(t) is TensorRef and type(s) is Storage and s.root is None and type(shape) is tuple
            and type(stride) is tuple and len(shape) == len(stride) and type(offset) is int and offset >= 0
            and dtype in _DTYPES and s.dtype in _DTYPES and type(s.numel) is int and s.numel >= 0
            and type(s.root_offset) is int and s.root_offset >= 0 and type(s.data) is FileBlob
            and type(s.data.nbytes) is int and s.data.nbytes >= s.numel * _itemsize(s.dtype)):
        blob = s.data
        size = _itemsize(dtype)
        count, step, contiguous = size, 1, True
        for d, st in zip(reversed(shape), reversed(stride), strict=True):
            if type(d) is not int or type(st) is not int or d <= 0 or st < 0:
                break       # a zero dimension (empty tensor), or a value to_lazy refuses
            count += (d - 1) * st * size
            if st != step and d != 1:
                contiguous = False
            step *= d
        else:
            start = offset * size
            # (dtypes.shape_problem's checks, on dimensions already known to be positive ints)
            if (contiguous and blob.little_endian and start + count <= s.numel * _itemsize(s.dtype)
                    and len(shape) <= dtypes.MAX_RANK and step * size < dtypes.MAX_EXTENT_BYTES):
                return span_tensor(blob.part(start, count), dtype, shape), (id(s), start, shape, stride, dtype)
    return to_lazy(t, name, path), tie_key(t)


_DTYPES, _itemsize = dtypes.DTYPES, dtypes.itemsize


def tie_key(t: TensorRef) -> tuple:
    """Two tensors with the same key are the same data (tied weights)."""
    root, start, count = byte_span(t)
    return id(root), start, t.shape, t.stride, t.dtype
