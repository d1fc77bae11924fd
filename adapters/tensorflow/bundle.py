"""TensorFlow checkpoint bundles (`prefix.index` + `prefix.data-NNNNN-of-MMMMM`), without TensorFlow.

The `.index` is a LevelDB table (see sstable.py). Key "" holds a BundleHeaderProto (num_shards,
endianness, version); every other key is a variable name whose value is a BundleEntryProto
(dtype, shape, shard_id, offset, size, masked CRC-32C of the bytes, slices). Tensor bytes lie raw,
little-endian, C order, in the data shards; strings as varint lengths, a masked CRC of the
lengths (as uint32), then the bytes. Field numbers from tensorflow/core/protobuf/tensor_bundle.proto.

>>> b = open_bundle("/tmp/ckpt/model")          # doctest: +SKIP
>>> b.entries["dense/kernel"].shape, b.tensor("dense/kernel").load().sum()   # doctest: +SKIP
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

from hubfmt import dtypes
from hubfmt.atomic import atomic_output, atomic_outputs
from hubfmt.checkpoint import LazyTensor, read_region, region_tensor
from hubfmt.errors import FormatError
from hubfmt.streaming import write_tensor

from . import sstable, wire
from .crc32c import crc32c, mask, unmask

# tensorflow/core/framework/types.proto DataType -> canonical dtype name
TF_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 8: "complex64",
             9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32", 23: "uint64"}
DT_STRING = 7
TF_DTYPE_CODES = {v: k for k, v in TF_DTYPES.items()}
_TF_DTYPE_NAMES = {7: "string", 11: "qint8", 12: "quint8", 13: "qint32", 15: "qint16", 16: "quint16",
                   18: "complex128", 20: "resource", 21: "variant"}
BUNDLE_VERSION = 1            # kTensorBundleVersion (producer); min_consumer 0
MAX_INDEX_BYTES = 1 << 30     # an index is names and small protos: anything larger is not one
_DATA_RE = re.compile(r"^(.*)\.data-(\d{5})-of-(\d{5})$")


@dataclass
class BundleEntry:
    """One BundleEntryProto. `dtype` is the canonical name, or None for a dtype hubfmt does not
    carry (`tf_dtype` then says which: string, resource, ...)."""

    name: str
    tf_dtype: int
    dtype: str | None
    shape: tuple
    shard: int = 0
    offset: int = 0
    size: int = 0
    crc: int = 0                  # masked CRC-32C as stored
    sliced: bool = False          # a partitioned variable's full-tensor entry

    @property
    def dtype_name(self) -> str:
        return self.dtype or _TF_DTYPE_NAMES.get(self.tf_dtype, f"DataType {self.tf_dtype}")


@dataclass
class Bundle:
    """An opened checkpoint: where it is and what its index says."""

    prefix: str
    num_shards: int
    entries: dict[str, BundleEntry] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)     # what resolving the path involved (e.g. .meta ignored)
    verify_data: bool = True

    @property
    def index_path(self) -> str:
        return self.prefix + ".index"

    def shard_path(self, shard: int) -> str:
        return shard_path(self.prefix, shard, self.num_shards)

    def tensor(self, name: str) -> LazyTensor:
        """The entry's data as a lazy tensor over its shard (kernel-copyable span). When
        verify_data is on, loading it checks the stored CRC."""
        e = self.entries[name]
        if e.dtype is None:
            raise FormatError(f"tensor {name!r} has dtype {e.dtype_name}, not a numeric tensor", self.index_path)
        path = self.shard_path(e.shard)
        t = region_tensor(path, e.offset, e.dtype, e.shape)
        if not self.verify_data:
            return t

        def load(path=path, e=e):
            arr = read_region(path, e.offset, e.dtype, e.shape)
            if e.size and unmask(e.crc) != crc32c(arr):
                raise FormatError(f"checksum mismatch in tensor {e.name!r} (offset {e.offset}): corrupt data", path)
            return arr
        return LazyTensor(t.shape, t.dtype, load, t.span)

    def strings(self, name: str) -> list[bytes]:
        """A string tensor's elements (e.g. the TF2 object graph), checked against its CRC."""
        e = self.entries[name]
        if e.tf_dtype != DT_STRING:
            raise FormatError(f"tensor {name!r} is not a string tensor", self.index_path)
        path = self.shard_path(e.shard)
        raw = read_region(path, e.offset, "uint8", (e.size,)).tobytes()
        try:
            values = decode_strings(raw, _count(e.shape))
        except wire.Malformed as err:
            raise FormatError(f"string tensor {name!r}: {err}", path) from None
        if unmask(e.crc) != _strings_crc(values)[1]:
            raise FormatError(f"checksum mismatch in string tensor {name!r}: corrupt data", path)
        return values


def shard_path(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ------------------------------------------------------------------------------- path handling

def resolve_prefix(path: str) -> tuple[str, list[str]]:
    """The checkpoint prefix a user's path designates, and notes on how it was found.

    Accepts the prefix itself, `prefix.index`, `prefix.meta`, a data shard, or a directory (its
    `checkpoint` state file's model_checkpoint_path, else its only `.index`)."""
    notes: list[str] = []
    path = os.fspath(path)
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")
        if os.path.isfile(state):
            latest = latest_from_state(state)
            if latest is None:
                raise FormatError("checkpoint state file has no model_checkpoint_path", state)
            prefix = latest if os.path.isabs(latest) else os.path.join(path, latest)
            if not os.path.exists(prefix + ".index"):
                # TF records absolute paths of the machine that trained; the directory is the truth.
                prefix = os.path.join(path, os.path.basename(latest))
            notes.append(f"directory: took {os.path.basename(prefix)} from its checkpoint file")
            return prefix, notes
        indexes = sorted(f for f in os.listdir(path) if f.endswith(".index"))
        if len(indexes) != 1:
            raise FormatError(f"directory holds {len(indexes)} .index files and no checkpoint state file; "
                              "name the checkpoint prefix", path)
        return os.path.join(path, indexes[0][:-6]), notes
    if path.endswith(".index"):
        return path[:-6], notes
    if path.endswith(".meta"):
        notes.append(".meta graph ignored: weights come from the .index/.data files")
        return path[:-5], notes
    m = _DATA_RE.match(path)
    if m and not os.path.exists(path + ".index"):
        return m.group(1), notes
    if os.path.exists(path + ".meta"):
        notes.append(".meta graph ignored: weights come from the .index/.data files")
    return path, notes


def latest_from_state(state_path: str) -> str | None:
    """model_checkpoint_path from a `checkpoint` state file (a CheckpointState text proto)."""
    with open(state_path, "rb") as f:
        text = f.read(1 << 20).decode("utf-8", "replace")
    m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.M)
    return _unescape(m.group(1)) if m else None


def is_bundle(path: str) -> bool:
    """Cheap sniff: does `path` designate a checkpoint whose .index ends with the table magic?"""
    try:
        prefix, _ = resolve_prefix(path)
        index = prefix + ".index"
        size = os.path.getsize(index)
        if size < sstable.FOOTER_SIZE:
            return False
        with open(index, "rb") as f:
            f.seek(size - 8)
            return struct.unpack("<Q", f.read(8))[0] == sstable.MAGIC
    except (OSError, FormatError):
        return False


# ------------------------------------------------------------------------------------- reading

def _parse_header(value: bytes) -> tuple[int, int]:
    num_shards, endian = 1, 0
    for num, wt, v in wire.fields(value):
        if num == 1 and wt == 0:
            num_shards = wire.signed64(v)
        elif num == 2 and wt == 0:
            endian = v
    return num_shards, endian


def _parse_shape(value: bytes) -> tuple:
    dims = []
    for num, wt, v in wire.fields(value):
        if num == 2 and wt == 2:
            size = -1
            for n2, w2, v2 in wire.fields(v):
                if n2 == 1 and w2 == 0:
                    size = wire.signed64(v2)
            if size < 0:
                raise wire.Malformed(f"unknown or negative dimension {size}")
            dims.append(size)
        elif num == 3 and wt == 0 and v:
            raise wire.Malformed("shape of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, value: bytes) -> BundleEntry:
    e = BundleEntry(name, 0, None, ())
    for num, wt, v in wire.fields(value):
        if num == 1 and wt == 0:
            e.tf_dtype = v
        elif num == 2 and wt == 2:
            e.shape = _parse_shape(v)
        elif num == 3 and wt == 0:
            e.shard = wire.signed64(v)
        elif num == 4 and wt == 0:
            e.offset = wire.signed64(v)
        elif num == 5 and wt == 0:
            e.size = wire.signed64(v)
        elif num == 6 and wt == 5:
            e.crc = v
        elif num == 7:
            e.sliced = True
    e.dtype = TF_DTYPES.get(e.tf_dtype)
    return e


def open_bundle(path: str, *, verify_data: bool = True) -> Bundle:
    """Open the checkpoint `path` designates (see resolve_prefix); checks every entry against its
    shard's size. Raises FormatError naming the file on any problem."""
    prefix, notes = resolve_prefix(path)
    index = prefix + ".index"
    try:
        size = os.path.getsize(index)
    except OSError:
        raise FormatError("checkpoint index not found (a TensorFlow checkpoint is prefix.index + prefix.data-*)", index) from None
    if size > MAX_INDEX_BYTES:
        raise FormatError(f"{size} bytes is too large for a checkpoint index", index)
    with open(index, "rb") as f:
        table = f.read()
    try:
        items = sstable.read_table(table)
        if not items or items[0][0] != b"":
            raise wire.Malformed("no bundle header (key \"\")")
        num_shards, endian = _parse_header(items[0][1])
        if endian != 0:
            raise wire.Malformed("big-endian bundle: not supported")
        if not 1 <= num_shards <= 1 << 20:
            raise wire.Malformed(f"bad shard count {num_shards}")
        bundle = Bundle(prefix, num_shards, notes=notes, verify_data=verify_data)
        for key, value in items[1:]:
            name = key.decode("utf-8", "replace")
            bundle.entries[name] = _parse_entry(name, value)
    except wire.Malformed as e:
        raise FormatError(str(e), index) from None
    _check_bounds(bundle)
    return bundle


def _check_bounds(b: Bundle) -> None:
    sizes: dict[int, int] = {}
    for e in b.entries.values():
        if e.sliced:
            continue           # the full-tensor record of a partitioned variable holds no bytes
        if not 0 <= e.shard < b.num_shards:
            raise FormatError(f"tensor {e.name!r} names shard {e.shard} of {b.num_shards}", b.index_path)
        if e.shard not in sizes:
            p = b.shard_path(e.shard)
            try:
                sizes[e.shard] = os.path.getsize(p)
            except OSError:
                raise FormatError("missing data shard of this checkpoint", p) from None
        if e.offset < 0 or e.size < 0 or e.offset + e.size > sizes[e.shard]:
            raise FormatError(f"tensor {e.name!r} lies past the end of the shard (offset {e.offset}, "
                              f"{e.size} bytes, shard has {sizes[e.shard]}): truncated file", b.shard_path(e.shard))
        if e.dtype is not None and e.size != _count(e.shape) * dtypes.itemsize(e.dtype):
            raise FormatError(f"tensor {e.name!r}: {e.size} bytes do not hold {e.dtype} {list(e.shape)}", b.index_path)


def decode_strings(raw: bytes, count: int) -> list[bytes]:
    lengths, pos = [], 0
    for _ in range(count):
        n, pos = wire.read_varint(raw, pos)
        lengths.append(n)
    pos += 4                                   # masked CRC of the lengths
    if pos + sum(lengths) > len(raw):
        raise wire.Malformed("string data runs past its entry")
    out = []
    for n in lengths:
        out.append(raw[pos:pos + n])
        pos += n
    return out


def _strings_crc(values: list[bytes]) -> tuple[bytes, int]:
    """(serialized string tensor, its CRC as the entry stores it before masking)."""
    lengths = b"".join(wire.encode_varint(len(v)) for v in values)
    crc = crc32c(b"".join(struct.pack("<I" if len(v) <= 0xFFFFFFFF else "<Q", len(v)) for v in values))
    length_crc = struct.pack("<I", mask(crc))
    crc = crc32c(length_crc, crc)
    body = b"".join(values)
    return lengths + length_crc + body, crc32c(body, crc)


# ------------------------------------------------------------------------------------- writing

@dataclass
class OutTensor:
    """One tensor to write: numeric (tensor + dtype) or a string tensor (strings)."""

    name: str
    tensor: LazyTensor | None = None
    dtype: str | None = None
    strings: list[bytes] | None = None
    shape: tuple = ()


def _encode_shape(shape) -> bytes:
    return b"".join(wire.field_bytes(2, wire.field_varint(1, int(d))) for d in shape)


def _encode_entry(tf_dtype: int, shape, shard: int, offset: int, size: int, crc: int) -> bytes:
    out = wire.field_varint(1, tf_dtype) + wire.field_bytes(2, _encode_shape(shape))
    if shard:
        out += wire.field_varint(3, shard)
    if offset:
        out += wire.field_varint(4, offset)
    if size:
        out += wire.field_varint(5, size)
    return out + wire.field_fixed32(6, mask(crc))


def _crc_of_region(fd: int, offset: int, nbytes: int) -> int:
    crc, done = 0, 0
    while done < nbytes:
        chunk = os.pread(fd, min(64 << 20, nbytes - done), offset + done)
        if not chunk:
            raise OSError("short read of the data just written")
        crc = crc32c(chunk, crc)
        done += len(chunk)
    return crc


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
            with open(tmp, "w+b") as f:       # read back: the CRC of kernel-copied bytes
                for t in group:
                    offset = f.tell()
                    if t.strings is not None:
                        data, crc = _strings_crc(t.strings)
                        f.write(data)
                        n, code, shape = len(data), DT_STRING, t.shape
                    else:
                        n = write_tensor(f, t.tensor, t.dtype)
                        f.flush()
                        crc = _crc_of_region(f.fileno(), offset, n)
                        code, shape = TF_DTYPE_CODES[t.dtype or t.tensor.dtype], t.tensor.shape
                    records.append((t.name.encode("utf-8"), _encode_entry(code, shape, i, offset, n, crc)))
                    total += n
                    if progress is not None:
                        progress.update(n)
        header = wire.field_varint(1, len(shards)) + wire.field_bytes(3, wire.field_varint(1, BUNDLE_VERSION))
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


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')
