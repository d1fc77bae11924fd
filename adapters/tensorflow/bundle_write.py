"""Writing TensorFlow checkpoint bundles: data shards streamed tensor by tensor (write_tensor:
kernel copies where the bytes already lie right), each tensor's CRC-32C computed from the bytes
written, then the `.index` table; published atomically, shards first and the index last; and the
directory's `checkpoint` state file pointed at the new prefix, as tf.train.Saver does.

>>> write_bundle("out/model.ckpt", [OutTensor("dense/kernel", tensor)])    # doctest: +SKIP
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from hubfmt.sdk import protowire
from hubfmt.sdk import atomic_output, atomic_outputs
from hubfmt.sdk import LazyTensor
from hubfmt.sdk import FormatError
from hubfmt.sdk import OUTPUT_BUFFER, dtypes, fold_region, kernel_copyable, prefetched, write_tensor

from . import sstable
from .bundle import _EXPECTED_CRC, BUNDLE_VERSION, DT_STRING, TF_DTYPE_CODES, _strings_crc, shard_path
from .sstable import crc32c, mask

@dataclass
class OutTensor:
    """One tensor to write: numeric (tensor + dtype) or a string tensor (strings)."""

    name: str
    tensor: LazyTensor | None = None
    dtype: str | None = None
    strings: list[bytes] | None = None
    shape: tuple = ()


def _encode_shape(shape) -> bytes:
    return b"".join(protowire.field_bytes(2, protowire.field_varint(1, int(d))) for d in shape)


def _encode_entry(tf_dtype: int, shape, shard: int, offset: int, size: int, crc: int) -> bytes:
    out = protowire.field_varint(1, tf_dtype) + protowire.field_bytes(2, _encode_shape(shape))
    if shard:
        out += protowire.field_varint(3, shard)
    if offset:
        out += protowire.field_varint(4, offset)
    if size:
        out += protowire.field_varint(5, size)
    return out + protowire.field_fixed32(6, mask(crc))


def _check_copied(t: OutTensor, crc: int) -> None:
    span = t.tensor.span
    want = _EXPECTED_CRC.get(span) if span is not None and (t.dtype or t.tensor.dtype) == t.tensor.dtype else None
    if want is not None and want != crc:
        raise FormatError(f"checksum mismatch in the tensor at offset {span.offset}: corrupt data", span.path)


def _with_crc(t: OutTensor, j: int, crcs: dict[int, int]) -> LazyTensor:
    """t's tensor, or, when it is loaded rather than copied in the kernel, the same converted to
    its output dtype with its CRC-32C folded over the array on load: in the prefetch thread,
    while the tensor before is written, and without reading the written bytes back."""
    tensor = t.tensor
    assert tensor is not None
    dtype = t.dtype or tensor.dtype
    if kernel_copyable(tensor, dtype):
        return tensor

    def load():
        arr = dtypes.convert(tensor.load(), tensor.dtype, dtype)
        crcs[j] = crc32c(arr) if arr.size else 0
        return arr
    return LazyTensor(tensor.shape, dtype, load)


def bundle_files(prefix: str, num_shards: int) -> list[str]:
    """Output files of a bundle, in publishing order (data shards first, the index last)."""
    return [shard_path(prefix, i, num_shards) for i in range(num_shards)] + [prefix + ".index"]


def write_bundle(prefix: str, tensors: list[OutTensor], *, overwrite: bool = False, progress=None,
                 max_shard_size: int | None = None) -> int:
    """Write `tensors` as a checkpoint bundle at `prefix` (atomic: shards first, index last).
    Returns the number of data bytes written."""
    shards = _plan_shards(tensors, max_shard_size)
    finals = bundle_files(prefix, len(shards))
    records: list[tuple[bytes, bytes]] = []
    total = 0
    with atomic_outputs(finals, overwrite=overwrite) as out:
        for i, group in enumerate(shards):
            tmp = out.path(finals[i])
            with open(tmp, "w+b", buffering=OUTPUT_BUFFER) as f:       # read back: the CRC of kernel-copied bytes
                crcs: dict[int, int] = {}
                loaded = prefetched((None if t.strings is not None else _with_crc(t, j, crcs), t.dtype)
                                    for j, t in enumerate(group))
                for j, (t, tensor) in enumerate(zip(group, loaded, strict=True)):
                    offset = f.tell()
                    if t.strings is not None:
                        data, crc = _strings_crc(t.strings)
                        f.write(data)
                        n, code, shape = len(data), DT_STRING, t.shape
                    else:
                        n = write_tensor(f, tensor, t.dtype)
                        if j in crcs:             # loaded: its CRC was taken from the bytes written
                            crc = crcs.pop(j)
                        else:                     # copied in the kernel: read back
                            f.flush()
                            crc = fold_region(f.fileno(), offset, n, crc32c)
                            _check_copied(t, crc)
                        code, shape = TF_DTYPE_CODES[t.dtype or t.tensor.dtype], t.tensor.shape
                    records.append((t.name.encode("utf-8"), _encode_entry(code, shape, i, offset, n, crc)))
                    total += n
                    if progress is not None:
                        progress.update(n)
        header = protowire.field_varint(1, len(shards)) + protowire.field_bytes(3, protowire.field_varint(1, BUNDLE_VERSION))
        records.sort()
        with open(out.path(finals[-1]), "wb") as f:
            f.write(sstable.write_table([(b"", header)] + records))
    return total


def _plan_shards(tensors: list[OutTensor], max_shard_size: int | None) -> list[list[OutTensor]]:
    names = [t.name for t in tensors]
    if len(set(names)) != len(names) or "" in names:
        raise ValueError("bundle tensor names must be unique and non-empty")
    if not max_shard_size:
        return [list(tensors)]
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        n = t.tensor.nbytes if t.tensor is not None else sum(len(s) for s in t.strings or [])
        if shards[-1] and size + n > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += n
    return shards


def update_state_file(prefix: str) -> str:
    """Point the directory's `checkpoint` state file at `prefix` (as tf.train.Saver does), keeping
    the other still-existing checkpoints it lists. Returns the state file's path."""
    directory, base = os.path.split(os.path.abspath(prefix))
    state = os.path.join(directory, "checkpoint")
    paths: list[str] = []
    if os.path.isfile(state):
        with open(state, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
        for p in re.findall(r'^all_model_checkpoint_paths:\s*"((?:[^"\\]|\\.)*)"', text, re.M):
            full = p if os.path.isabs(p) else os.path.join(directory, p)
            if p != base and os.path.exists(full + ".index"):
                paths.append(p)
    paths.append(base)
    body = f'model_checkpoint_path: "{_escape(base)}"\n' + "".join(
        f'all_model_checkpoint_paths: "{_escape(p)}"\n' for p in paths)
    with atomic_output(state, overwrite=True) as tmp:
        with open(tmp, "w") as f:
            f.write(body)
    return state


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')
