"""Writing MindSpore checkpoints without MindSpore: `.ckpt` (protobuf, streamed) and MindSpore's
safetensors files (any other path ending in `.safetensors`).

The protobuf is streamed: every size is known from shapes and dtypes, so each Value's field headers
and length varints are written first and the tensor bytes follow through hubfmt.streaming.write_tensor
(file-to-file copies when the bytes already lie in a file). Like mindspore.save_checkpoint, a tensor
larger than `max_slice_bytes` (512 MiB) is written as consecutive Values with the same tag, so
MindSpore's protobuf parser never sees one huge bytes field. Outputs are published atomically and
get ordinary permissions (0644 under the usual umask), unlike MindSpore's own read-only 0400 files.
"""
from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import atomic_output
from hubfmt.sdk import Checkpoint, LazyTensor, part_of, span_tensor
from hubfmt.sdk import ConversionError, Report
from hubfmt.sdk import OUTPUT_BUFFER, BehindWriter, Progress, combine_checksums, fold_region, prefetched, write_tensor

from . import names, proto
from .formats import SLICE_BYTES
from .template import Item, plan



def _slices(item: Item, nbytes: int, max_slice: int) -> list[LazyTensor]:
    """The tensor's output bytes as pieces of at most `max_slice` bytes (uint8 tensors)."""
    span = item.tensor.span
    bounds = [(k, min(k + max_slice, nbytes)) for k in range(0, nbytes, max_slice)]
    if span is not None and item.dtype == item.tensor.dtype and span.nbytes == nbytes:
        # Each slice still answers for the whole tensor's checksum (a TF CRC-32C, a zip member's CRC).
        return [span_tensor(part_of(span, a, b - a), "uint8", (b - a,)) for a, b in bounds]
    # One tensor in memory (the same bound as every writer), cut into views, not copies.
    raw = dtypes.convert(item.tensor.load(), item.tensor.dtype, item.dtype).reshape(-1).view(np.uint8)
    return [LazyTensor.from_array(raw[a:b]) for a, b in bounds]


def _nbytes(shape, dtype: str) -> int:
    n = dtypes.itemsize(dtype)
    for d in shape:
        n *= int(d)
    return n


def _extra_items(ckpt: Checkpoint, taken: set[str], report: Report, *, strings: bool) -> list[tuple[str, object]]:
    """Non-tensor content MindSpore can hold, as save_checkpoint(append_dict=...) stores it:
    str -> a "str" entry, int -> Int64 scalar, float -> Float32 scalar, bool -> Bool scalar."""
    out = []
    for key, value in ckpt.extra.items():
        if key in taken:
            report.add("dropped", key, "non-tensor content named like a parameter")
        elif isinstance(value, str):
            if strings:
                out.append((key, value))
            else:
                report.add("dropped", key, "text cannot be stored in a safetensors file")
        elif isinstance(value, (bool, int, float)):
            kind = "bool" if isinstance(value, bool) else "int64" if isinstance(value, int) else "float32"
            if kind == "int64" and not -2**63 <= value < 2**63:
                report.add("dropped", key, "integer does not fit int64")
                continue
            out.append((key, LazyTensor.from_array(np.asarray(value, dtype=dtypes.storage_dtype(kind)))))
        else:
            report.add("dropped", key, f"non-tensor content of type {type(value).__name__} has no MindSpore form")
    return out


def write(ckpt: Checkpoint, path: str | os.PathLike, *, overwrite: bool = False, progress: Progress | None = None,
          restore_dtype: bool = True, template=None, strict: bool = True, max_slice_bytes: int = SLICE_BYTES,
          write_extra: bool = True) -> Report:
    """Write `ckpt` as a MindSpore checkpoint at `path`: `.safetensors` -> MindSpore safetensors,
    anything else -> `.ckpt` protobuf. Floating tensors get their original dtype back unless
    `restore_dtype=False`. `template` makes the output follow a target's names, order, shapes
    and dtypes (see template.plan). Scalar `ckpt.extra` values are appended like append_dict.

    >>> write(hubfmt.read("effnet.safetensors"), "effnet.ckpt", template="ms_effnet.ckpt")   # doctest: +SKIP
    """
    path = os.fspath(path)
    items, report = plan(ckpt, template, strict=strict, restore_dtype=restore_dtype, path=path)
    safetensors = path.endswith(".safetensors")
    extras = _extra_items(ckpt, {it.name for it in items}, report, strings=not safetensors) if write_extra else []
    report.destination = path
    if not safetensors:
        for key in [it.name for it in items] + [k for k, _ in extras]:
            # An ASCII name (the flag is kept by Python) is as many bytes as characters: not encoded.
            if (len(key) > proto.MAX_STRING or not key.isascii()) and len(key.encode("utf-8")) > proto.MAX_STRING:
                raise ConversionError(f"tensor name {key[:40]!r}... is {len(key.encode('utf-8'))} bytes, more than the "
                                      f"{proto.MAX_STRING} a .ckpt tag read by hubfmt may hold", path)
        for it in items:
            if it.tensor.shape == (0,):
                report.add("warning", it.name, "empty [0] tensor: MindSpore's loader reads dims [0] as a scalar "
                                               "(hubfmt reads it back as [0]; save_checkpoint skips empty tensors)")
    total = 0
    # w+b: the crc_num is folded over the bytes read back
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "w+b", buffering=OUTPUT_BUFFER) as f:
        if safetensors:
            total = _write_safetensors(f, items, extras, progress)
        else:
            total = _write_ckpt(f, items, extras, progress, max(int(max_slice_bytes), 1))
    report.tensors_in = len(ckpt)
    report.tensors_out = len(items)
    report.bytes_out = total
    return report


# Written bytes folded into the crc_num at once: a flush and a hand-off to the fold thread per
# tiny tensor cost more than the tensor's own write (#18). A larger tensor is folded right after it.
_FOLD_BATCH = 4 << 20
_SMALL_TENSOR = 64 << 10          # safetensors: tensors up to this size are checksummed in batches


def _read_back(fd: int, offset: int, n: int) -> memoryview:
    """Bytes [offset, offset+n) of the output, just written (from the page cache)."""
    buf = bytearray(n)
    view = memoryview(buf)
    done = 0
    while done < n:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise OSError(f"file shorter than the {n} bytes written at offset {offset}")
        done += got
    return view


class _Crc:
    """MindSpore's crc_num: CRC-32 of every byte before the trailer. Folded over what was just
    written (read back while it is in the page cache: kernel copies never pass through Python),
    on a second thread while the next tensors are written (hubfmt.sdk.BehindWriter), a batch of
    at least _FOLD_BATCH bytes at a time."""

    def __init__(self, f):
        self.f = f
        self.fold = BehindWriter(f.fileno(), "crc32")
        self.done = 0

    def update(self, end: int) -> None:
        """The file now holds `end` bytes: fold them once a batch is waiting."""
        if end - self.done >= _FOLD_BATCH:
            self.f.flush()
            self.fold.advance(end)
            self.done = end

    def trailer(self, end: int) -> bytes:
        self.f.flush()
        if self.f.tell() != end:         # the position kept by the writer is the file's
            raise AssertionError(f"the checkpoint holds {self.f.tell()} bytes, {end} were written")
        self.fold.advance(end)
        self.done = end
        value = self.fold.value()
        self.fold.close()
        return proto.CRC_TRAILER + value.to_bytes(10, "big")

    def close(self) -> None:
        self.fold.close()


def _write_ckpt(f, items: list[Item], extras, progress, max_slice: int) -> int:
    # The crc_num trailer save_checkpoint(crc_check=True) writes and load_checkpoint checks: a
    # file truncated on a record boundary would otherwise read as a smaller, valid model.
    crc = _Crc(f)
    try:
        return _write_records(f, crc, items, extras, progress, max_slice)
    finally:
        crc.close()


def _write_records(f, crc: _Crc, items: list[Item], extras, progress, max_slice: int) -> int:
    total = 0
    pos = 0           # bytes in the file: kept here, not asked of it (a system call per tensor)
    sizes = [_nbytes(it.tensor.shape, it.dtype) for it in items]
    # Sliced tensors load piece by piece: not prefetched whole.
    whole = prefetched((it.tensor if n <= max_slice else None, it.dtype) for it, n in zip(items, sizes, strict=True))
    types = names.DTYPE_TO_TYPE
    header = proto.value_header
    write = f.write
    for it, nbytes, tensor in zip(items, sizes, whole, strict=True):
        ttype = types[it.dtype]
        if nbytes <= max_slice:
            head = header(it.name, it.tensor.shape, ttype, nbytes)
            write(head)
            written = write_tensor(f, tensor, it.dtype)
            pos += len(head)
        else:
            written = 0
            for piece in _slices(it, nbytes, max_slice):
                head = header(it.name, it.tensor.shape, ttype, piece.nbytes)
                write(head)
                written += write_tensor(f, piece)
                pos += len(head)
        if written != nbytes:
            raise AssertionError(f"{it.name}: wrote {written} bytes, expected {nbytes}")
        pos += written
        crc.update(pos)
        total += written
        if progress:
            progress.update(written)
    for key, value in extras:
        if isinstance(value, str):
            # numpy's "U" layout, which MindSpore's loader decodes: UTF-32LE, dims [0].
            raw = value.encode("utf-32-le")
            head = proto.value_header(key, [0], names.STRING_TYPE, len(raw)) + raw
            f.write(head)
            pos += len(head)
        else:
            head = proto.value_header(key, [], names.DTYPE_TO_TYPE[value.dtype], value.nbytes)
            f.write(head)
            pos += len(head) + write_tensor(f, value)
    f.write(crc.trailer(pos))
    return total


def _write_safetensors(f, items: list[Item], extras, progress) -> int:
    # The crc_num save_checkpoint(format="safetensors", crc_check=True) stores in the metadata and
    # load_checkpoint checks: CRC-32 over (name, tensor bytes) in sorted name order. Tensors keep
    # their order in the file (it is evidence for a later alignment); each one's CRC is folded as
    # it is written (read back while in the page cache) and the sorted-order value joined from
    # them by CRC combination. The header, written first with room for any 32-bit value, is then
    # patched.
    tensors = [(it.name, it.tensor, it.dtype) for it in items] + [(k, v, v.dtype) for k, v in extras]

    def header_bytes(crc: int, size: int = 0) -> bytes:
        header: dict = {"__metadata__": {"format": "ms", "crc_num": str(crc)}}   # what mindspore writes
        pos = 0
        for name, t, dt in tensors:
            n = _nbytes(t.shape, dt)
            header[name] = {"dtype": dtypes.to_safetensors(dt), "shape": list(t.shape), "data_offsets": [pos, pos + n]}
            pos += n
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        return raw + b" " * ((size - len(raw)) if size else -len(raw) % 8)

    placeholder = header_bytes(2**32 - 1)          # the widest crc_num: the real one fits its room
    f.write(struct.pack("<Q", len(placeholder)) + placeholder)
    pos = 8 + len(placeholder)      # kept here, not asked of the file (a system call per tensor)
    fd = f.fileno()
    total = 0
    parts: list[tuple[str, int, int]] = []         # name, CRC-32 of name + bytes, their length
    # Small tensors are folded in batches, from one read-back of the bytes they span, not a
    # flush and a read each (#18); a larger one is folded on its own, the batch before it first.
    small: list[tuple[str, bytes, int, int]] = []  # name, its UTF-8, offset, length
    small_bytes = 0

    def fold_small() -> None:
        nonlocal small_bytes
        if not small:
            return
        f.flush()
        lo = small[0][2]
        view = _read_back(fd, lo, pos - lo)
        for name, key, start, n in small:
            parts.append((name, zlib.crc32(view[start - lo:start - lo + n], zlib.crc32(key)), len(key) + n))
        small.clear()
        small_bytes = 0

    for (name, _, dt), t in zip(tensors, prefetched([(t, dt) for _, t, dt in tensors]), strict=True):
        start = pos
        n = write_tensor(f, t, dt)
        pos += n
        key = name.encode("utf-8")
        if n <= _SMALL_TENSOR:
            small.append((name, key, start, n))
            small_bytes += n
            if small_bytes >= _FOLD_BATCH:
                fold_small()
        else:
            fold_small()
            f.flush()
            parts.append((name, fold_region(fd, start, n, zlib.crc32, zlib.crc32(key)), len(key) + n))
        total += n
        if progress:
            progress.update(n)
    fold_small()
    f.flush()
    if f.tell() != pos:             # the position kept here is the file's
        raise AssertionError(f"the file holds {f.tell()} bytes, {pos} were written")
    crc = 0
    for _, value, length in sorted(parts):
        crc = combine_checksums("crc32", crc, value, length)
    final = header_bytes(crc, len(placeholder))
    assert len(final) == len(placeholder)
    os.pwrite(f.fileno(), final, 8)
    return total
