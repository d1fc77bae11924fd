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

from hubfmt.sdk import dtypes, protowire
from hubfmt.sdk import LazyTensor, read_region, region_tensor
from hubfmt.sdk import FormatError, check_input_file

from . import sstable
from .sstable import crc32c, mask, unmask

# tensorflow/core/framework/types.proto DataType -> canonical dtype name
TF_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 8: "complex64",
             9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32", 23: "uint64"}
DT_STRING = 7
TF_DTYPE_CODES = {v: k for k, v in TF_DTYPES.items()}
_TF_DTYPE_NAMES = {7: "string", 11: "qint8", 12: "quint8", 13: "qint32", 15: "qint16", 16: "quint16",
                   18: "complex128", 20: "resource", 21: "variant"}
BUNDLE_VERSION = 1            # kTensorBundleVersion (producer); min_consumer 0
MAX_INDEX_BYTES = 1 << 30     # an index is names and small protos: anything larger is not one
# CRC each span of an opened bundle must have. Bytes copied file-to-file are never loaded, so the
# loader cannot check them; the bundle writer checks the CRC it computes anyway against this.
_EXPECTED_CRC: dict = {}
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
    sliced: bool = False          # a partitioned variable's full-tensor entry (no bytes of its own)
    slices: list = field(default_factory=list)   # its TensorSliceProtos: [(start, length or -1 = all)] per dim

    @property
    def dtype_name(self) -> str:
        return self.dtype or _TF_DTYPE_NAMES.get(self.tf_dtype, f"DataType {self.tf_dtype}")


@dataclass
class Bundle:
    """An opened checkpoint: where it is and what its index says."""

    prefix: str
    num_shards: int
    entries: dict[str, BundleEntry] = field(default_factory=dict)
    slice_entries: dict[bytes, BundleEntry] = field(default_factory=dict)   # partition pieces, by encoded key
    notes: list[str] = field(default_factory=list)     # what resolving the path involved (e.g. .meta ignored)
    verify_data: bool = True

    @property
    def index_path(self) -> str:
        return self.prefix + ".index"

    def shard_path(self, shard: int) -> str:
        return shard_path(self.prefix, shard, self.num_shards)

    def tensor(self, name: str) -> LazyTensor:
        """The entry's data as a lazy tensor over its shard (kernel-copyable span). When
        verify_data is on, loading it checks the stored CRC. Partitioned variables are assembled."""
        return self.tensor_of(self.entries[name])

    def tensor_of(self, e: BundleEntry) -> LazyTensor:
        if e.dtype is None:
            raise FormatError(f"tensor {e.name!r} has dtype {e.dtype_name}, not a numeric tensor", self.index_path)
        if e.sliced:
            from .partitioned import assemble
            return assemble(self, e)
        path = self.shard_path(e.shard)
        t = region_tensor(path, e.offset, e.dtype, e.shape)
        if not self.verify_data:
            return t
        if t.span is not None:
            _EXPECTED_CRC[t.span] = unmask(e.crc)

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
        except protowire.Malformed as err:
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


def _is_table(path: str) -> bool:
    """Does the file end with the LevelDB table magic?"""
    try:
        size = os.path.getsize(path)
        if not os.path.isfile(path) or size < sstable.FOOTER_SIZE:
            return False
        with open(path, "rb") as f:
            f.seek(size - 8)
            return struct.unpack("<Q", f.read(8))[0] == sstable.MAGIC
    except OSError:
        return False


def is_bundle(path: str) -> bool:
    """Cheap sniff: does `path` designate a checkpoint? Its .index ends with the table magic, or
    (a damaged one, which read() then explains) it has data shards beside it, or it is a V1
    single-file checkpoint (a table itself), which read() refuses with a clear message."""
    try:
        prefix, _ = resolve_prefix(path)
        if _is_table(prefix + ".index"):
            return True
        if not os.path.exists(prefix + ".index") and _is_table(path):
            return True
        directory, base = os.path.split(os.path.abspath(prefix))
        return any(f.startswith(base + ".data-") for f in os.listdir(directory))
    except (OSError, FormatError):
        return False


# ------------------------------------------------------------------------------------- reading

def _parse_header(value: bytes) -> tuple[int, int]:
    num_shards, endian = 1, 0
    for num, wt, v in protowire.fields(value):
        if num == 1 and wt == 0:
            num_shards = protowire.signed64(v)
        elif num == 2 and wt == 0:
            endian = v
    return num_shards, endian


def _parse_shape(value: bytes) -> tuple:
    dims = []
    for num, wt, v in protowire.fields(value):
        if num == 2 and wt == 2:
            size = -1
            for n2, w2, v2 in protowire.fields(v):
                if n2 == 1 and w2 == 0:
                    size = protowire.signed64(v2)
            if size < 0:
                raise protowire.Malformed(f"unknown or negative dimension {size}")
            dims.append(size)
        elif num == 3 and wt == 0 and v:
            raise protowire.Malformed("shape of unknown rank")
    return tuple(dims)


def _parse_slice(value: bytes) -> list[tuple[int, int]]:
    extents = []
    for num, wt, v in protowire.fields(value):
        if num == 1 and wt == 2:
            start, length = 0, -1
            for n2, w2, v2 in protowire.fields(v):
                if n2 == 1 and w2 == 0:
                    start = protowire.signed64(v2)
                elif n2 == 2 and w2 == 0:
                    length = protowire.signed64(v2)
            extents.append((start, length))
    return extents


def _parse_entry(name: str, value: bytes) -> BundleEntry:
    e = BundleEntry(name, 0, None, ())
    for num, wt, v in protowire.fields(value):
        if num == 1 and wt == 0:
            e.tf_dtype = v
        elif num == 2 and wt == 2:
            e.shape = _parse_shape(v)
        elif num == 3 and wt == 0:
            e.shard = protowire.signed64(v)
        elif num == 4 and wt == 0:
            e.offset = protowire.signed64(v)
        elif num == 5 and wt == 0:
            e.size = protowire.signed64(v)
        elif num == 6 and wt == 5:
            e.crc = v
        elif num == 7 and wt == 2:
            e.sliced = True
            e.slices.append(_parse_slice(v))
    e.dtype = TF_DTYPES.get(e.tf_dtype)
    return e


def open_bundle(path: str, *, verify_data: bool = True) -> Bundle:
    """Open the checkpoint `path` designates (see resolve_prefix); checks every entry against its
    shard's size. Raises FormatError naming the file on any problem."""
    prefix, notes = resolve_prefix(path)
    index = prefix + ".index"
    if not os.path.exists(index) and _is_table(path):
        raise FormatError("a TensorFlow V1 checkpoint (single-file format of TF < 1.0): not supported; "
                          "re-save it with TensorFlow's Saver (V2 format) first", path)
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
            raise protowire.Malformed("no bundle header (key \"\")")
        num_shards, endian = _parse_header(items[0][1])
        if endian != 0:
            raise protowire.Malformed("big-endian bundle: not supported")
        if not 1 <= num_shards <= 1 << 20:
            raise protowire.Malformed(f"bad shard count {num_shards}")
        bundle = Bundle(prefix, num_shards, notes=notes, verify_data=verify_data)
        for key, value in items[1:]:
            name = key.decode("utf-8", "replace")
            if key.startswith(b"\x00"):        # a piece of a partitioned variable (OrderedCode key)
                bundle.slice_entries[key] = _parse_entry(name, value)
            else:
                bundle.entries[name] = _parse_entry(name, value)
    except protowire.Malformed as e:
        raise FormatError(str(e), index) from None
    _check_bounds(bundle)
    return bundle


def _check_bounds(b: Bundle) -> None:
    sizes: dict[int, int] = {}
    for e in [*b.entries.values(), *b.slice_entries.values()]:
        if e.sliced:
            continue           # the full-tensor record of a partitioned variable holds no bytes
        if not 0 <= e.shard < b.num_shards:
            raise FormatError(f"tensor {e.name!r} names shard {e.shard} of {b.num_shards}", b.index_path)
        if e.shard not in sizes:
            p = b.shard_path(e.shard)
            if os.path.lexists(p):
                check_input_file(p, "a data shard", inside=os.path.dirname(b.prefix) or ".")
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
        n, pos = protowire.read_varint(raw, pos)
        lengths.append(n)
    pos += 4                                   # masked CRC of the lengths
    if pos + sum(lengths) > len(raw):
        raise protowire.Malformed("string data runs past its entry")
    out = []
    for n in lengths:
        out.append(raw[pos:pos + n])
        pos += n
    return out


def _strings_crc(values: list[bytes]) -> tuple[bytes, int]:
    """(serialized string tensor, its CRC as the entry stores it before masking)."""
    lengths = b"".join(protowire.encode_varint(len(v)) for v in values)
    crc = crc32c(b"".join(struct.pack("<I" if len(v) <= 0xFFFFFFFF else "<Q", len(v)) for v in values))
    length_crc = struct.pack("<I", mask(crc))
    crc = crc32c(length_crc, crc)
    body = b"".join(values)
    return lengths + length_crc + body, crc32c(body, crc)


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)
