"""Reading MindSpore checkpoints without MindSpore: `.ckpt` (protobuf) and MindSpore's safetensors
files (`save_checkpoint(..., format="safetensors")`: plain safetensors, metadata {"format": "ms"}).

Both are read lazily: tensors are LazyTensors over the file's bytes, loaded one at a time.
"""
from __future__ import annotations

import os
import zlib
from collections import Counter

import numpy as np

from hubfmt.sdk import dtypes, safetensors
from hubfmt.sdk import Checkpoint, LayerInfo, LazyTensor, TensorInfo, pread_into, read_region, region_tensor
from hubfmt.sdk import FormatError, check_input_file
from hubfmt.sdk import fold_file

from . import names, proto
from .formats import CKPT, SAFETENSORS



def _pieces_tensor(path: str, pieces, dtype: str, shape) -> LazyTensor:
    """A tensor whose content MindSpore split into several Values (> 512 MiB): read piece by piece."""
    def load():
        # Straight into one buffer: the tensor is in memory once, never piece + copy.
        out = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=dtypes.storage_dtype(dtype))
        raw = memoryview(out).cast("B")
        pos = 0
        fd = os.open(path, os.O_RDONLY)
        try:
            for off, n in pieces:
                pread_into(fd, raw[pos:pos + n], off, path)
                pos += n
        finally:
            os.close(fd)
        return out.reshape(shape)
    return LazyTensor(shape, dtype, load)


def ckpt_tensors(path: str) -> tuple[list[tuple[str, LazyTensor | str]], bool]:
    """[(tag, LazyTensor or the text of a string entry)] of a .ckpt in file order, checked; and
    whether a CRC trailer was present. Map parameters are returned as (tag, None)."""
    records, has_crc = proto.scan(path)
    out: list = []
    seen = set()
    for r in records:
        if r.tag in seen:
            raise FormatError(f"tensor {r.tag!r} appears twice, not as consecutive slices", path)
        seen.add(r.tag)
        if r.is_map:
            out.append((r.tag, None))
            continue
        if r.tensor_type == names.STRING_TYPE:
            raw = b"".join(bytes(read_region(path, off, "uint8", (n,))) for off, n in r.pieces)
            if len(raw) % 4:
                raise FormatError(f"string entry {r.tag!r}: {len(raw)} bytes is not UTF-32 text", path)
            try:
                out.append((r.tag, raw.decode("utf-32-le").rstrip("\x00")))
            except UnicodeDecodeError:
                raise FormatError(f"string entry {r.tag!r} is not valid UTF-32 text", path) from None
            continue
        dt = names.TENSOR_TYPES.get(r.tensor_type)
        if dt is None:
            raise FormatError(f"tensor {r.tag!r}: unsupported tensor_type {r.tensor_type!r}", path)
        if any(d < 0 for d in r.dims):
            raise FormatError(f"tensor {r.tag!r}: negative dimension in dims {r.dims}", path)
        shape = tuple(r.dims)
        problem = dtypes.shape_problem(shape, dt)
        if problem:
            raise FormatError(f"tensor {r.tag!r}: {problem}", path)
        item = dtypes.itemsize(dt)
        # MindSpore's loader reads dims [0] as a scalar; an empty [0] tensor has no bytes.
        if shape == (0,) and r.nbytes == item:
            shape = ()
        count = int(np.prod(shape, dtype=object))
        if count * item != r.nbytes:
            raise FormatError(f"tensor {r.tag!r}: {r.nbytes} content bytes, but dims {list(r.dims)} of "
                              f"{r.tensor_type} need {count * item}", path)
        if len(r.pieces) == 1:
            t = region_tensor(path, r.pieces[0][0], dt, shape)
        else:
            t = _pieces_tensor(path, r.pieces, dt, shape)
        out.append((r.tag, t))
    return out, has_crc


def safetensors_tensors(path: str) -> tuple[list[tuple[str, LazyTensor]], dict]:
    """[(name, LazyTensor)] of a MindSpore safetensors file, and its metadata."""
    meta, items = safetensors.read_tensors(path)
    for name, _ in items:
        if name in meta:        # MindSpore marks qint4x2 (Int4) tensors in the metadata
            raise FormatError(f"tensor {name!r}: unsupported MindSpore type {meta[name]!r}", path)
    return items, meta


def _crc_ok(path: str, fmt: str, items, meta: dict) -> bool:
    """Check MindSpore's crc_num: .ckpt, CRC32 of everything before the trailer; safetensors,
    CRC32 over (name, tensor bytes) in sorted name order. Streams; one tensor in memory at most."""
    crc = 0
    if fmt == CKPT:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            # one pass over the whole file, CPU bound: split over the cores (hubfmt.sdk.fold_file)
            crc = fold_file(f.fileno(), 0, max(size - proto.CRC_TRAILER_SIZE, 0), "crc32")
            f.seek(size - proto.CRC_TRAILER_SIZE + len(proto.CRC_TRAILER))
            return crc == int.from_bytes(f.read(10), "big")
    for name, t in sorted(items, key=lambda kv: kv[0]):
        # zlib reads the loaded array's buffer: no bytes copy of the tensor
        crc = zlib.crc32(t.load(), zlib.crc32(name.encode("utf-8"), crc))
    return str(crc) == meta.get("crc_num")


def read(path: str | os.PathLike, *, keep_optimizer: bool = False, verify_checksums: bool = True) -> Checkpoint:
    """Read a MindSpore .ckpt or safetensors checkpoint as a canonical, lazy Checkpoint.

    Optimizer state (learning_rate, global_step, moments.*, ...) is dropped and reported unless
    `keep_optimizer`; ModelCheckpoint's epoch_num/step_num and string entries go to `ckpt.extra`.
    `verify_checksums` checks the crc_num save_checkpoint(crc_check=True) stores (one extra pass over
    the file); a file without one is read with a warning (a truncated file cannot be told from a whole one).

    >>> ckpt = read("efficientnet.ckpt")                    # doctest: +SKIP
    >>> ckpt["0._bn1.running_var"].info.original_name       # doctest: +SKIP
    '0._bn1.moving_variance'
    """
    path = os.fspath(path)
    check_input_file(path, "a MindSpore checkpoint")
    fmt = SAFETENSORS if safetensors.is_safetensors(path) else CKPT
    meta: dict = {}
    if fmt == SAFETENSORS:
        items, meta = safetensors_tensors(path)
        has_crc = "crc_num" in meta
    else:
        items, has_crc = ckpt_tensors(path)
    if verify_checksums and has_crc and not _crc_ok(path, fmt, [kv for kv in items if isinstance(kv[1], LazyTensor)], meta):
        raise FormatError("crc_num does not match the content: the file is damaged", path)
    ckpt = to_canonical(items, keep_optimizer=keep_optimizer)
    if has_crc and not verify_checksums:
        ckpt.report.add("warning", os.path.basename(path), "carries a crc_num, not checked (-R verify_checksums=false)")
    elif not has_crc:
        ckpt.report.add("warning", os.path.basename(path), "no crc_num: a truncated file cannot be told from a whole one "
                                                           "(save_checkpoint(crc_check=True) writes one)")
    ckpt.source.framework = "mindspore"
    ckpt.source.file = os.path.basename(path)
    ckpt.source.format = fmt
    return ckpt


def _scalar_value(t: LazyTensor):
    return t.load().reshape(()).item() if t.shape in ((), (1,)) else None


def to_canonical(items, *, keep_optimizer: bool = False, extra: dict | None = None,
                 kinds: dict[str, str] | None = None) -> Checkpoint:
    """Native (name, LazyTensor | str | None) pairs -> canonical Checkpoint. `kinds` (layer ->
    kind, from a live Cell) overrides what the file's names and shapes suggest."""
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    ckpt.extra = dict(extra or {})
    tensor_names = {n for n, t in items if isinstance(t, LazyTensor)}
    params = []
    for name, t in items:
        if t is None:
            ckpt.report.add("dropped", name, "MindSpore MapParameter (hash table) is not supported")
        elif isinstance(t, str):
            ckpt.extra[name] = t
        elif name in names.APPEND_INFO and _scalar_value(t) is not None:
            ckpt.extra[name] = _scalar_value(t)
        elif not keep_optimizer and names.is_optimizer_state(name, tensor_names):
            ckpt.report.add("dropped", name, "optimizer state (read with keep_optimizer=True to keep it)")
        else:
            params.append((name, t))
    by_layer: dict[str, dict[str, tuple]] = {}
    for name, t in params:
        layer, _, role = name.rpartition(".")
        by_layer.setdefault(layer, {})[role] = t.shape
    layer_kinds = names.infer_kinds(by_layer)
    layer_kinds.update(kinds or {})
    canon_count = Counter(names.canonical_name(n, layer_kinds.get(n.rpartition('.')[0])) for n, _ in params)
    for name, t in params:
        layer, _, role = name.rpartition(".")
        kind = layer_kinds.get(layer, "tensor")
        canon = names.canonical_name(name, kind)
        if canon_count[canon] > 1:
            canon = name    # e.g. a cell with both `gamma` and `weight`: keep MindSpore's names
            ckpt.report.add("warning", name, "kept its MindSpore name: the canonical name would collide")
        elif canon != name:
            ckpt.report.renamed(name, canon)
        info = TensorInfo(kind=kind, role=canon.rpartition(".")[2], layer=layer, original_name=name,
                          original_dtype=t.dtype, original_shape=t.shape)
        ckpt.add(canon, t, info)
        if kind != "tensor" and layer not in ckpt.layers:
            ckpt.layers[layer] = LayerInfo(kind)
    ckpt.report.tensors_in = len(items)
    return ckpt
