"""Tensors of the neutral format: `LazyTensor` (shape and dtype known up front, data read on
demand) and `FileSpan` (where a tensor's bytes already lie in a file, exactly as a writer emits
them), and the LazyTensor of a file region, read with pread (no mmap: touched mmap pages count as
resident memory, and a streaming converter must not grow with the model)."""
from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from hubfmt.errors import FormatError
from hubfmt.format import dtypes
from hubfmt.format.checksums import ALGORITHMS as _ALGORITHMS
from hubfmt.format.checksums import Checksum, compute


@dataclass(frozen=True, slots=True)      # slots: one per tensor, a million in some checkpoints
class FileSpan:
    """Where a tensor's bytes already lie, exactly as a writer would emit them (little-endian,
    C order, `dtype` of the LazyTensor). Lets writers copy file-to-file without a Python buffer.

    `checksum`, when the format stores one for exactly these bytes, is verified whichever way the
    bytes leave the file: on load (region_tensor) and after a kernel copy (hubfmt.io.stream).
    `enclosing`, when these bytes are only part of a checksummed range (`part_of`), is verified
    before they are used either way."""

    path: str
    offset: int
    nbytes: int
    checksum: Checksum | None = None
    enclosing: "EnclosingChecksum | None" = field(default=None, compare=False)

    def guard(self) -> None:
        """Raise FormatError when the checksummed range these bytes are part of is corrupt."""
        if self.enclosing is not None:
            self.enclosing.verify()

    def verify(self, data) -> None:
        """Raise FormatError when `data` (these bytes, read or copied) does not match the checksum."""
        self.guard()
        if self.checksum is not None and compute(self.checksum.algorithm, data) != self.checksum.value:
            raise corrupt(self)


class EnclosingChecksum:
    """A checksum a format stores for a byte range that tensors are only parts of: a zip member
    holding several views of one storage, a checksummed tensor cut into rows (a fused qkv split)
    or written in slices. A part's own bytes cannot be checked against it, so the whole range is
    read once (the first time any part is used, loaded or copied) and the result kept: a part of a
    corrupt range fails like the whole would, and N parts cost one pass, not N."""

    __slots__ = ("span", "_ok", "_lock", "__weakref__")

    def __init__(self, span: FileSpan):
        self.span, self._ok, self._lock = span, False, threading.Lock()

    def verify(self) -> None:
        if self._ok:
            return
        with self._lock:                # prefetching threads may reach the same range at once
            if self._ok:
                return
            span = self.span
            assert span.checksum is not None
            update = _ALGORITHMS[span.checksum.algorithm]
            value, done = 0, 0
            buf = memoryview(bytearray(min(4 << 20, span.nbytes)))
            fd = os.open(span.path, os.O_RDONLY)
            try:
                while done < span.nbytes:
                    want = min(len(buf), span.nbytes - done)
                    pread_into(fd, buf[:want], span.offset + done, span.path)
                    value = update(buf[:want], value)
                    done += want
            finally:
                os.close(fd)
            if value != span.checksum.value:
                raise corrupt(span)
            self._ok = True


# One EnclosingChecksum per checksummed range, shared by all its parts (so it is read once).
_ENCLOSING: "weakref.WeakValueDictionary[FileSpan, EnclosingChecksum]" = weakref.WeakValueDictionary()
_ENCLOSING_LOCK = threading.Lock()


def part_of(span: FileSpan, start: int, nbytes: int) -> FileSpan:
    """Bytes [start, start + nbytes) of `span`, carrying the duty to verify `span`'s checksum (or
    the range `span` is itself a part of) before they are used."""
    if not 0 <= start <= start + nbytes <= span.nbytes:
        raise ValueError(f"part [{start}, {start + nbytes}) outside a span of {span.nbytes} bytes")
    if start == 0 and nbytes == span.nbytes:
        return span
    enclosing = span.enclosing
    if enclosing is None and span.checksum is not None:
        with _ENCLOSING_LOCK:
            enclosing = _ENCLOSING.get(span)
            if enclosing is None:
                enclosing = _ENCLOSING[span] = EnclosingChecksum(span)
    return FileSpan(span.path, span.offset + start, nbytes, None, enclosing)


def corrupt(span: FileSpan) -> FormatError:
    algorithm = span.checksum.algorithm if span.checksum else ""
    return FormatError(f"{algorithm} checksum mismatch in the {span.nbytes} bytes at offset "
                       f"{span.offset}: the file is corrupt", span.path)


class LazyTensor:
    """A tensor whose data is read on demand.

    `dtype` is a canonical name (see hubfmt.dtypes); `load()` returns a C-contiguous little-endian
    numpy array of `storage_dtype(dtype)` and `shape`. Transformations (`map`, `astype`) compose
    lazily; they drop `span`, since the bytes on disk no longer match.
    """

    __slots__ = ("shape", "dtype", "_loader", "span")

    def __init__(self, shape, dtype: str, loader: Callable[[], np.ndarray] | None, span: FileSpan | None = None):
        if dtype not in dtypes.DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}")
        if loader is None and span is None:
            raise ValueError("a LazyTensor needs a loader or a span to read")
        self.shape = tuple(map(int, shape))
        self.dtype = dtype
        self._loader = loader      # None: read `span` (span_tensor), no loader object per tensor
        self.span = span

    @classmethod
    def over_span(cls, span: FileSpan, dtype: str, shape: tuple) -> "LazyTensor":
        """A span tensor from a reader that has checked `dtype` (a canonical name) and `shape` (a
        tuple of ints, kept as it is: readers share one tuple among tensors of one shape). The
        constructor's checks and copies, skipped a million times (#13)."""
        t = object.__new__(cls)
        t.shape, t.dtype, t._loader, t.span = shape, dtype, None, span
        return t

    @classmethod
    def from_array(cls, array: np.ndarray, dtype: str | None = None) -> "LazyTensor":
        name = dtype or dtypes.name_of(array.dtype)
        # ascontiguousarray turns a 0-d array into shape (1,): reshape keeps scalars scalars.
        arr = np.ascontiguousarray(array, dtype=dtypes.storage_dtype(name)).reshape(np.shape(array))
        return cls(arr.shape, name, lambda: arr)

    @property
    def nbytes(self) -> int:
        n = dtypes.itemsize(self.dtype)
        for d in self.shape:
            n *= d
        return n

    def load(self) -> np.ndarray:
        arr = self._loader() if self._loader is not None else _read_span(self.span, self.dtype, self.shape)
        want = dtypes.storage_dtype(self.dtype)
        if arr.dtype != want:
            arr = arr.astype(want)
        if tuple(arr.shape) != self.shape:
            arr = arr.reshape(self.shape)
        # ascontiguousarray turns a 0-d array into shape (1,): reshape keeps scalars scalars.
        return np.ascontiguousarray(arr).reshape(self.shape)

    def map(self, fn: Callable[[np.ndarray], np.ndarray], shape, dtype: str | None = None) -> "LazyTensor":
        """A new LazyTensor whose data is fn(self.load()); `shape`/`dtype` describe the result."""
        return LazyTensor(shape, dtype or self.dtype, lambda: fn(self.load()))

    def astype(self, dtype: str) -> "LazyTensor":
        if dtype == self.dtype:
            return self
        src = self.dtype
        return LazyTensor(self.shape, dtype, lambda: dtypes.convert(self.load(), src, dtype))

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


def file_span(path: str | os.PathLike, offset: int, dtype: str, shape, checksum: Checksum | None = None) -> FileSpan:
    n = dtypes.itemsize(dtype)
    for d in shape:
        n *= int(d)
    return FileSpan(os.fspath(path), offset, n, checksum)


def read_region(path: str, offset: int, dtype: str, shape) -> np.ndarray:
    """Read one tensor's bytes from a file with pread (no mmap: touched mmap pages count as
    resident memory, and a streaming converter must not grow with the model)."""
    st = dtypes.storage_dtype(dtype)
    count = 1
    for d in shape:
        count *= int(d)
    out = np.empty(count, dtype=st)
    if count:
        fd = os.open(path, os.O_RDONLY)
        try:
            pread_into(fd, out.data.cast("B"), offset, path)
        finally:
            os.close(fd)
    return out.reshape(tuple(int(d) for d in shape))


def pread_into(fd: int, buf: memoryview, offset: int, path: str) -> None:
    """Fill `buf` with the bytes at `offset` of the open file `fd` (`path` names it in errors)."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            raise FormatError(f"file ends inside a tensor (wanted {len(buf)} bytes at offset {offset})", path)
        done += n


def region_tensor(path: str | os.PathLike, offset: int, dtype: str, shape, checksum: Checksum | None = None) -> LazyTensor:
    """A LazyTensor for `shape` elements of `dtype` stored little-endian at `offset` in `path`;
    with `checksum` (of exactly those bytes) every load verifies it."""
    return span_tensor(file_span(path, offset, dtype, shape, checksum), dtype, shape)


def span_tensor(span: FileSpan, dtype: str, shape) -> LazyTensor:
    """A LazyTensor over the bytes of `span` (`shape` elements of `dtype`, little-endian, C order):
    every load verifies what the span carries (its checksum, the range it is part of)."""
    return LazyTensor(shape, dtype, None, span)


def _read_span(span: FileSpan | None, dtype: str, shape: tuple) -> np.ndarray:
    """The load of a span_tensor: its bytes read, and verified against what the span carries."""
    assert span is not None         # LazyTensor.__init__ refuses neither a loader nor a span
    span.guard()                    # before reading: a part of a corrupt range is not used
    arr = read_region(span.path, span.offset, dtype, shape)
    span.verify(arr)
    return arr
