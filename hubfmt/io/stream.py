"""Moving tensor bytes into an output file, one tensor at a time.

`write_tensor` is the one place every writer sends data through: when the source bytes already
lie in a file exactly as needed (LazyTensor.span), it copies file-to-file in the kernel
(copy_file_range, then sendfile), or, for small tensors in a write loop, slices them from one block
read of the source (a system call per MiB, not three per tensor); otherwise it loads the tensor,
converts its dtype, and writes it. Either way at most one tensor is in memory.

While writing, it paces the output's writeback to disk (hubfmt.writeback).
"""
from __future__ import annotations

import errno
import operator
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Callable, Generic, Iterable, Iterator, TypeVar

from hubfmt.format import checksums, dtypes
from hubfmt.format.tensor import LazyTensor, corrupt
from hubfmt.errors import FormatError
from hubfmt.io.writeback import wrote

_CHUNK = 1 << 30
_FOLD_CHUNK = 4 << 20            # cache-sized pieces for checksumming bytes already in a file
# Spans up to this size are read and written through Python instead of copied in the kernel: a
# copy_file_range of 1 KiB costs ~5 us and needs the output flushed and re-seeked around it,
# while a slice of an already-read source block and a buffered write cost ~1.5 us (#18).
_SMALL = 64 << 10
_BLOCK = 1 << 20                 # source bytes read at once for small spans (the next ones follow)
# The buffer of a writer's output file (open(..., buffering=OUTPUT_BUFFER)): small tensors and their
# framing leave in one write() per MiB, where the default 8 KiB buffer made one every few tensors
# (33,000 write calls for 100,000 tensors of 1 KiB, #18).
OUTPUT_BUFFER = 1 << 20


class _SourceBlocks:
    """The source files of one write loop, each kept open with one block of it read: small
    spans of a file laid out in order are sliced from the block, one preadv per _BLOCK bytes
    instead of an open, a read and a close per tensor. Lives for one `prefetched` iteration
    (sources do not change while they are converted), in the writing thread only."""

    __slots__ = ("fds", "blocks", "open")

    def __init__(self):
        self.fds: dict[str, int] = {}
        self.blocks: dict[str, tuple[int, bytearray]] = {}
        self.open = True

    def read(self, path: str, offset: int, nbytes: int) -> memoryview:
        start, block = self.blocks.get(path, (0, bytearray()))
        if not (start <= offset and offset + nbytes <= start + len(block)):
            fd = self.fds.get(path)
            if fd is None:
                if len(self.fds) >= 16:            # a file per tensor (OneFlow): no reuse to gain
                    self.close()
                fd = self.fds[path] = os.open(path, os.O_RDONLY)
            buf = bytearray(max(nbytes, _BLOCK))
            got = os.preadv(fd, [buf], offset)
            if got < nbytes:
                raise FormatError(f"file ends inside a tensor ({nbytes} bytes at offset {offset})", path)
            del buf[got:]
            start, block = offset, buf
            self.blocks[path] = (start, block)
        return memoryview(block)[offset - start:offset - start + nbytes]

    def close(self, final: bool = False) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.blocks.clear()
        self.open = self.open and not final


_local = threading.local()       # .sources: the _SourceBlocks of the write loop running in this thread


def _kernel_copy(src_path: str, offset: int, nbytes: int, out: BinaryIO) -> memoryview | None:
    """Append src_path[offset:offset+nbytes] to `out` file to file, never loading a tensor: in the
    kernel, or, for a small range inside a write loop (`prefetched`), sliced from the loop's block
    of that source (returned then, for checking) and written buffered."""
    sources = getattr(_local, "sources", None)
    if nbytes <= _SMALL and sources is not None and sources.open:
        data = sources.read(src_path, offset, nbytes)
        out.write(data)
        return data
    out.flush()
    dst_fd = out.fileno()
    src_fd = os.open(src_path, os.O_RDONLY)
    try:
        use_cfr = hasattr(os, "copy_file_range")
        done = 0
        while done < nbytes:
            n = min(_CHUNK, nbytes - done)
            if use_cfr:
                try:
                    k = os.copy_file_range(src_fd, dst_fd, n, offset + done)
                except OSError as e:
                    if e.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                        use_cfr = False     # another file system or kernel: sendfile instead
                        continue
                    raise
            else:
                k = os.sendfile(dst_fd, src_fd, offset + done, n)
            if k == 0:
                raise FormatError(f"file ends inside a tensor ({nbytes} bytes at offset {offset})", src_path)
            done += k
    finally:
        os.close(src_fd)
    # The kernel advanced the descriptor's offset; bring the Python file object in step.
    out.seek(0, os.SEEK_END)
    return None


def fold_region(fd: int, offset: int, nbytes: int, update, value: int = 0) -> int:
    """Fold `update(piece, value) -> value` (zlib.crc32, crc32c) over bytes [offset, offset+nbytes)
    of the open file `fd`: a checksum of data a writer copied in the kernel, read back into one
    reused buffer."""
    buf = bytearray(min(_FOLD_CHUNK, nbytes))
    view = memoryview(buf)
    done = 0
    while done < nbytes:
        want = min(len(buf), nbytes - done)
        got = os.preadv(fd, [view[:want]], offset + done)
        if got <= 0:
            raise OSError(f"file shorter than the {nbytes} bytes written at offset {offset}")
        value = update(view[:got], value)
        done += got
    return value


def kernel_copyable(tensor: LazyTensor, dtype: str | None = None) -> bool:
    """Whether write_tensor(out, tensor, dtype) copies file-to-file (never loading the tensor)."""
    span = tensor.span
    return (span is not None and (dtype or tensor.dtype) == tensor.dtype
            and span.nbytes == tensor.nbytes and span.nbytes > 0)


def prefetched(items: Iterable[tuple[LazyTensor | None, str | None]]) -> Iterator[LazyTensor | None]:
    """Yield each (tensor, dtype)'s tensor for write_tensor, loading the next one that needs
    loading (not kernel_copyable; None passes through) in a background thread meanwhile: reading,
    checksumming and transposing the next tensor overlaps writing this one (numpy copies, preadv
    and file writes release the GIL).

    At most two loaded tensors exist at once (the one being written, the next). All loads happen
    in the one worker thread, in order, so readers with a shared file handle are never entered
    twice. Where no thread can start (a memory rlimit counts its stack), tensors load in place."""
    items = list(items)
    # This loop's own source blocks, never an outer or abandoned loop's: a block read before a
    # file was rewritten must not be served after.
    outer = getattr(_local, "sources", None)
    mine = _local.sources = _SourceBlocks()
    try:
        yield from _prefetched(items)
    finally:
        mine.close(final=True)
        if _local.sources is mine:
            _local.sources = outer


def _prefetched(items: list[tuple[LazyTensor | None, str | None]]) -> Iterator[LazyTensor | None]:
    loads = [i for i, (t, dt) in enumerate(items) if t is not None and not kernel_copyable(t, dt)]
    if len(loads) < 2:
        yield from (t for t, _ in items)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubfmt-prefetch")
    futures: dict[int, Future] = {}
    nxt = iter(loads)

    def submit() -> None:
        i = next(nxt, None)
        if i is not None:
            t = items[i][0]
            assert t is not None      # loads lists only the tensors to load
            futures[i] = pool.submit(t.load)
    try:
        submit()                       # starts the worker thread
    except RuntimeError:
        pool.shutdown(wait=False)
        yield from (t for t, _ in items)
        return
    try:
        for i, (t, _) in enumerate(items):
            fut = futures.pop(i, None)
            if fut is None:
                yield t
                continue
            assert t is not None
            loaded = _handed_once(t, fut.result())
            submit()                   # the next load runs while this tensor is written
            yield loaded
            del loaded
    finally:
        for fut in futures.values():
            fut.cancel()
        pool.shutdown(wait=True)


def _handed_once(t: LazyTensor, arr) -> LazyTensor:
    """`t` with its data already loaded; the first load() takes the array away, so the writer's
    copy is the only one left (a second load() reads again)."""
    held = [arr]
    return LazyTensor(t.shape, t.dtype, lambda: held.pop() if held else t.load())


def write_tensor(out: BinaryIO, tensor: LazyTensor, dtype: str | None = None) -> int:
    """Write `tensor`'s data as `dtype` (default: its own) to `out`; returns bytes written."""
    dtype = dtype or tensor.dtype
    span = tensor.span
    if span is not None and dtype == tensor.dtype and 0 < span.nbytes == tensor.nbytes:   # kernel_copyable
        if span.enclosing is not None:
            span.enclosing.verify()  # part of a checksummed range: that range is verified first
        n = span.nbytes
        passed = _kernel_copy(span.path, span.offset, n, out)
        if passed is not None:
            span.verify(passed)         # the bytes came through Python: check them as a load would
        elif span.checksum is not None:
            # The bytes never passed through Python: read the copy back (from the page cache) and
            # check it, so a corrupt source fails here as it would on load. (The copy ends the file:
            # its start is asked here, not before every tensor: tell() is a system call, #18.)
            start = out.tell() - n
            update = checksums.updater(span.checksum.algorithm)
            if out.readable():
                got = fold_region(out.fileno(), start, n, update)
            else:               # a write-only file object ("wb"): read the copy through its name
                fd = os.open(out.name, os.O_RDONLY)
                try:
                    got = fold_region(fd, start, n, update)
                finally:
                    os.close(fd)
            if got != span.checksum.value:
                raise corrupt(span)
    else:
        arr = dtypes.convert(tensor.load(), tensor.dtype, dtype)
        data = arr.data.cast("B") if arr.size else b""
        out.write(data)
        n = len(data)
    wrote(out, n)
    return n


T = TypeVar("T")


class TensorStream(Generic[T]):
    """The write loop every writer runs: the tensors to write, in order, each one loaded ahead
    (`prefetched`) while the one before is written; byte counts and progress kept here, once.

    Iterating yields (item, piece) for each item; the writer adds its format's framing and calls
    `piece.write(f)` (bytes into an open file: kernel copy or load + convert, checksums verified)
    or `piece.array()` (the converted array, for writers that hand arrays to a library, e.g.
    h5py). `tensor(item)` and `dtype(item)` say what to write for an item; an item whose tensor
    is None (a string entry) is yielded with a piece that holds nothing.

    >>> stream = TensorStream(items, progress=progress)                 # doctest: +SKIP
    >>> for item, piece in stream:                                      # doctest: +SKIP
    ...     f.write(header(item)); piece.write(f)
    >>> stream.bytes                                                    # doctest: +SKIP
    """

    def __init__(self, items: Iterable[T], *, progress=None, tensor: Callable[[T], LazyTensor | None] = operator.attrgetter("tensor"),
                 dtype: Callable[[T], str | None] = operator.attrgetter("dtype")):
        self.items = list(items)
        self.progress = progress
        self.bytes = 0
        self.tensors = 0
        self._tensor = tensor
        self._dtype = dtype

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[T, "Piece"]]:
        wanted = [(self._tensor(it), self._dtype(it)) for it in self.items]
        for item, (_, dtype), tensor in zip(self.items, wanted, prefetched(wanted), strict=True):
            yield item, Piece(self, tensor, dtype)

    def count(self, nbytes: int) -> None:
        self.bytes += nbytes
        self.tensors += 1
        if self.progress is not None:
            self.progress.update(nbytes)


class Piece:
    """One tensor of a TensorStream, ready to write once (`tensor` None: an item stored without
    tensor bytes, such as a string entry)."""

    __slots__ = ("stream", "tensor", "dtype")

    def __init__(self, stream: TensorStream, tensor: LazyTensor | None, dtype: str | None):
        self.stream = stream
        self.tensor = tensor
        self.dtype = dtype or (tensor.dtype if tensor is not None else "")

    def _loaded(self) -> LazyTensor:
        if self.tensor is None:
            raise ValueError("this item has no tensor bytes to write")
        return self.tensor

    @property
    def nbytes(self) -> int:
        if self.tensor is None:
            return 0
        return self.tensor.nbytes // dtypes.itemsize(self.tensor.dtype) * dtypes.itemsize(self.dtype)

    def write(self, out: BinaryIO) -> int:
        """Write the tensor's bytes at the end of `out`; returns their count."""
        n = write_tensor(out, self._loaded(), self.dtype)
        self.stream.count(n)
        return n

    def array(self):
        """The tensor's data as `dtype` (counted as written: the caller stores it)."""
        t = self._loaded()
        arr = dtypes.convert(t.load(), t.dtype, self.dtype)
        self.stream.count(arr.nbytes)
        return arr

    def skip(self) -> None:
        """Count an item the writer stores without its bytes (a string entry)."""
        self.stream.count(0)
