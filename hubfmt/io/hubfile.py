"""Reading and writing hub files: safetensors with the hubfmt manifest (spec/hubfmt-v1.md).

Reading is lazy: the header is parsed and checked, tensors are read one at a time when asked for.
Writing streams: the header is laid out from shapes and dtypes, then each tensor's bytes follow.
Either way the whole model is never in memory. A hub file may be sharded: `NAME.safetensors.index.json`
maps tensor names to shard files (the common Hugging Face layout) and carries the manifest.
"""
from __future__ import annotations

import json
import operator
import os
import re
import struct
from collections.abc import Mapping

from hubfmt.codecs import safetensors
from hubfmt.format import jsonstream
from hubfmt.format import dtypes
from hubfmt.format import manifest
from hubfmt.io.atomic import atomic_outputs
from hubfmt.format.checkpoint import Checkpoint, Entry, SourceInfo, TensorInfo
import numpy as np

from hubfmt.format.tensor import LazyTensor
from hubfmt.errors import ConversionError, FormatError
from hubfmt.report import Report
from hubfmt.io.inputs import check_input_file
from hubfmt.io.progress import Progress
from hubfmt.io.stream import OUTPUT_BUFFER, TensorStream

INDEX_SUFFIX = ".index.json"


# ---- reading ------------------------------------------------------------------------------

is_safetensors = safetensors.is_safetensors


def is_hub_file(path: str) -> bool:
    """True for a safetensors file (or shard index) carrying hubfmt's manifest."""
    try:
        if path.endswith(INDEX_SUFFIX):
            with open(path, "rb") as f:
                return manifest.KEY_VERSION in json.load(f).get("metadata", {})
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > safetensors.MAX_HEADER:
                return False
            return f'"{manifest.KEY_VERSION}"'.encode() in f.read(n)
    except (OSError, ValueError, AttributeError):
        return False


def shards(path: str) -> tuple[list[str], dict]:
    """Shard files and the index metadata for a sharded hub file ({} when unsharded)."""
    index = path if path.endswith(INDEX_SUFFIX) else path + INDEX_SUFFIX
    if not os.path.exists(index) or (path != index and os.path.exists(path)):
        return [path], {}
    named: dict = {}      # the shard files, in the index's order (a dict: distinct, ordered)
    try:
        with open(index, "rb") as f:
            raw = f.read()
        text = raw.decode(json.detect_encoding(raw))
        del raw                 # the index of a million tensors is ~200 MB: one copy at a time
        # The weight_map streamed: a million names -> shard entries are never all kept (#13).
        doc = jsonstream.loads(text, {"weight_map": lambda _name, shard: named.setdefault(shard)})
        del text
        if not isinstance(doc, dict) or doc.get("weight_map") is not jsonstream.STREAMED:
            raise ValueError("no weight_map object")
        meta = doc.get("metadata", {})
        files = list(named)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise FormatError(f"malformed shard index: {e}", index) from None
    base = os.path.dirname(index)
    for f in files:
        if not isinstance(f, str) or os.path.basename(f) != f or f in ("", ".", ".."):
            raise FormatError(f"shard index names a file outside its directory: {f!r}", index)
        check_input_file(os.path.join(base, f), "a shard", inside=base or ".")
    return [os.path.join(base, f) for f in files], {k: str(v) for k, v in meta.items() if isinstance(v, str)}


def read(path: str | os.PathLike) -> Checkpoint:
    """Open a hub file (or any safetensors file, or a shard index) lazily.

    >>> ckpt = read("model.safetensors")            # doctest: +SKIP
    >>> ckpt["fc.weight"].tensor.shape              # doctest: +SKIP
    (10, 64)
    """
    path = os.fspath(path)
    if not os.path.exists(path) and not os.path.exists(path + INDEX_SUFFIX):
        raise FormatError("no such file", path)
    if os.path.exists(path):
        check_input_file(path, "a hub file")
    files, index_meta = shards(path)
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    in_index = bool(index_meta)         # the metadata (a hub file's manifest) is the index's
    # An index's manifest first, so its text (~150 bytes a tensor) is gone before any shard's
    # header is parsed.
    parsed = manifest.parse(index_meta, path) if in_index else None
    del index_meta
    foreign_meta: dict = {}
    # name -> its tensor, shard by shard in file order: each parsed header is dropped once its
    # entries are lazy tensors (a million entries' JSON objects are not kept alive together, #13).
    stored: dict[str, LazyTensor] = {}
    for shard in files:
        meta, tensors = safetensors.read_tensors(shard)
        if not in_index and manifest.KEY_VERSION in meta and manifest.KEY_MANIFEST not in meta:
            # A shard carries the version but not the manifest (spec 1.3): alone, it is part of a model.
            m = re.match(r"^(.+)-\d{5}-of-\d{5}\.safetensors$", os.path.basename(shard))
            index = os.path.join(os.path.dirname(path), f"{m.group(1)}.safetensors{INDEX_SUFFIX}") if m else "its index"
            raise FormatError(f"one shard of a sharded hub file: pass {index}, which names every shard", path)
        if shard is files[0]:
            if not in_index:
                parsed = manifest.parse(meta, path)
            foreign_meta = {} if parsed else dict(meta)
        for name, tensor in tensors:
            if stored.setdefault(name, tensor) is not tensor:
                raise FormatError(f"tensor {name!r} is stored in more than one shard", path)
        del tensors
    infos, layers, source, extra = parsed if parsed else ({}, {}, SourceInfo(), {})
    # Manifest order is the checkpoint's order; stored tensors the manifest lacks come after.
    add = ckpt.add
    for name, info in infos.items():
        if info.tied_to:
            tied = stored.get(info.tied_to)
            if tied is None:
                raise FormatError(f"tensor {name!r} is tied to {info.tied_to!r}, which the file does not store", path)
            add(name, _alias(tied), info)
        else:
            own = stored.get(name)
            if own is None:
                raise FormatError(f"manifest lists tensor {name!r}, which the file does not store", path)
            add(name, own, info)
    for name, tensor in stored.items():
        if name not in infos:
            add(name, tensor, TensorInfo())
    if parsed:
        ckpt.layers = layers
        ckpt.source = source
        ckpt.extra = extra
    else:
        ckpt.source.format = "safetensors"
        ckpt.source.file = os.path.basename(path)
        if foreign_meta:
            ckpt.extra = {"safetensors_metadata": foreign_meta}
        ckpt.report.add("warning", os.path.basename(path), "plain safetensors without a hubfmt manifest: layer kinds unknown")
    ckpt.report.tensors_in = len(ckpt)
    return ckpt


# ---- writing ------------------------------------------------------------------------------

def _alias(t: LazyTensor) -> LazyTensor:
    """Another LazyTensor over the same stored bytes (a tied name gets its own object, as it did
    when each name's tensor was made from the header)."""
    return LazyTensor(t.shape, t.dtype, None, t.span)


class StoredDtypes(Mapping):
    """Each stored tensor's dtype in the hub file: its own, except the casts (float16 -> float32
    ...). A mapping over the checkpoint rather than a dict of a million entries (#13)."""

    __slots__ = ("ckpt", "casts")

    def __init__(self, ckpt: Checkpoint, casts: dict[str, str]):
        self.ckpt, self.casts = ckpt, casts

    def __getitem__(self, name: str) -> str:
        return self.casts.get(name) or self.ckpt.entries[name].tensor.dtype

    def __iter__(self):
        return iter(self.ckpt.stored_names())

    def __len__(self) -> int:
        return len(self.ckpt.stored_names())


def stored_dtype(entry: Entry, keep_dtype: bool) -> str:
    """The dtype a hub file stores for `entry` (spec: dtype policy)."""
    dt = entry.tensor.dtype
    if dt in dtypes.FLOATING and not keep_dtype:
        return "float32"
    return dt


def _narrowed(t: LazyTensor, dst: str, name: str, path: str) -> LazyTensor:
    """`t` (float64) as float32, refusing values the narrowing would lose (not merely round)."""
    def load() -> np.ndarray:
        src = t.load()
        out = dtypes.convert(src, "float64", dst)
        n = dtypes.narrowing_changes(src, out)
        if n:
            raise ConversionError(f"tensor {name!r}: float64 -> {dst} would change {n} of its {src.size} values "
                                  "(overflow to inf, non-zero to 0, or a NaN payload lost); --keep-dtype keeps "
                                  "float64", path)
        return out
    return LazyTensor(t.shape, dst, load)


def write(ckpt: Checkpoint, path: str | os.PathLike, *, keep_dtype: bool = False, overwrite: bool = False,
          max_shard_size: int | None = None, progress: Progress | None = None) -> Report:
    """Write `ckpt` as a hub file at `path`, streaming one tensor at a time.

    Floating tensors are stored as float32 unless `keep_dtype`; every cast is reported. With
    `max_shard_size` (bytes) a larger output is split into `stem-0000i-of-0000n.safetensors` files
    plus `path + ".index.json"`, which is published last.

    >>> write(ckpt, "model.safetensors")            # doctest: +SKIP
    """
    path = os.fspath(path)
    if not max_shard_size:
        _refuse_a_header_too_large(ckpt, path)
    # The manifest is made text only where it is written: streamed into a shard index, or once
    # into the header of a single file.
    names, out_dtypes, meta, report = plan(ckpt, keep_dtype, path, deferred_manifest=True)
    return write_safetensors(ckpt, path, names, out_dtypes, meta, report, overwrite=overwrite,
                             max_shard_size=max_shard_size, progress=progress, shard_metadata=SHARD_METADATA)


def _refuse_a_header_too_large(ckpt: Checkpoint, path: str) -> None:
    """Refuse, before the manifest of a million tensors is built, a hub file whose header cannot
    fit the read limit: each tensor's header entry is at least its name and 45 bytes, each
    manifest entry (escaped inside a JSON string) at least its name twice (key, original_name)
    and 40 bytes. write_safetensors checks the exact size once the header is built."""
    at_least = sum(2 * len(n) + 40 for n in ckpt.entries) + sum(len(n) + 45 for n in ckpt.stored_names())
    if at_least > safetensors.MAX_HEADER:
        raise ConversionError(f"the safetensors header would be at least {at_least} bytes for {len(ckpt)} tensors, "
                              f"more than the {safetensors.MAX_HEADER} readers accept; --max-shard-size puts the "
                              "manifest in the shard index and fewer tensors in each shard's header", path)


# What every shard of a sharded hub file carries (the manifest lives in the index).
SHARD_METADATA = {"format": "pt", manifest.KEY_VERSION: manifest.FORMAT_VERSION}


def plan(ckpt: Checkpoint, keep_dtype: bool = False, path: str | None = None, *,
         deferred_manifest: bool = False) -> tuple[list[str], Mapping[str, str], dict, Report]:
    """What a hub file of `ckpt` at `path` stores: the tensor names, each one's stored dtype, the
    file's metadata (manifest included; with `deferred_manifest` a manifest.ManifestText that
    write_safetensors makes text where it writes it) and the write report's events so far (casts,
    ties, extras)."""
    report = Report(stage="write")
    names = ckpt.stored_names()
    casts: dict[str, str] = {}
    entries = ckpt.entries
    for name in names:
        e = entries[name]
        dt = stored_dtype(e, keep_dtype)
        src = e.tensor.dtype
        if dt != src:
            casts[name] = dt
            report.add("cast", name, f"{src}->{dt}" + (" (narrowing: values rounded)" if src == "float64" else ""))
        else:
            report.matched(name)
    out_dtypes = StoredDtypes(ckpt, casts)
    stored = set(names)
    for name, e in ckpt.entries.items():
        if e.info.tied_to:
            if e.info.tied_to not in stored:
                # the reader refuses a tie to a name the file does not store (itself, an alias, nothing)
                raise ConversionError(f"tensor {name!r} is tied to {e.info.tied_to!r}, which is not a stored tensor "
                                      "(a tie to itself, to another alias or to nothing)", path)
            report.add("tied", name, f"stored once, as {e.info.tied_to}")
    meta = manifest.build(ckpt, deferred=deferred_manifest)
    for k in ckpt.extra:
        report.add("stored", f"extra[{k!r}]", "in the manifest (hubfmt.extra)")
    # Its layouts are torch's: loaders that check safetensors' "format" convention accept it.
    return names, out_dtypes, {"format": "pt", **meta}, report


def shard_name(path: str, i: int, n: int) -> str:
    """The file name of shard `i` (0-based) of `n` for a sharded hub file at `path`."""
    stem = path[: -len(".safetensors")] if path.endswith(".safetensors") else path
    return f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors"


def write_shard(ckpt: Checkpoint, shard_path: str, names: list[str], out_dtypes: Mapping[str, str], *,
                overwrite: bool = False, progress: Progress | None = None) -> int:
    """One shard of a sharded hub file on its own (atomically): tensors `names` of `ckpt`. Returns
    the bytes of tensor data written. hubfmt.batch writes the shards of one file in parallel, then
    the index (write_index) once every shard is published."""
    with atomic_outputs([shard_path], overwrite=overwrite) as out:
        return _write_file(out.path(shard_path), ckpt, names, out_dtypes, SHARD_METADATA, shard_path, progress)


def _write_file(tmp: str, ckpt: Checkpoint, names: list[str], out_dtypes: Mapping[str, str], meta: dict, path: str,
                progress: Progress | None, hint: str = "") -> int:
    """One safetensors file of tensors `names` at `tmp` (the temporary of `path`): its header, then
    each tensor streamed. Returns the bytes of tensor data. A header over the read limit is refused
    (`hint` says how to avoid it)."""
    entries = ckpt.entries
    dts = [out_dtypes[n] for n in names]        # once: StoredDtypes looks each one up
    head = safetensors.header_bytes(meta, [(n, dt, entries[n].tensor.shape) for n, dt in zip(names, dts, strict=True)])[0]
    if len(head) - 8 > safetensors.MAX_HEADER:
        raise ConversionError(f"the safetensors header would be {len(head) - 8} bytes, more than the "
                              f"{safetensors.MAX_HEADER} readers accept (a source header this large, or "
                              f"names this long, cannot be written as a hub file{hint})", path)
    with open(tmp, "wb", buffering=OUTPUT_BUFFER) as f:
        f.write(head)
        del head                # a header of a million tensors is ~100 MB
        stream = TensorStream(zip(names, dts, strict=True), progress=progress,
                              tensor=lambda item: _source(ckpt, item[0], item[1], path), dtype=_second)
        for _, piece in stream:
            piece.write(f)
    return stream.bytes


def write_index(path: str, metadata: dict, weight_map: dict[str, str], total: int, *, overwrite: bool = False) -> str:
    """The index `path + ".index.json"` of a sharded hub file whose shards are already published."""
    index_path = path + INDEX_SUFFIX
    with atomic_outputs([index_path], overwrite=overwrite) as out:
        with open(out.path(index_path), "w") as f:
            write_index_text(f, {**metadata, "total_size": str(total)}, weight_map)
    return index_path


def index_text(metadata: dict, weight_map: dict[str, str]) -> str:
    """json.dumps({"metadata": metadata, "weight_map": weight_map}, indent=1): the index's text."""
    import io

    buf = io.StringIO()
    write_index_text(buf, metadata, weight_map)
    return buf.getvalue()


def write_index_text(f, metadata: dict, weight_map: dict[str, str]) -> None:
    """Write json.dumps({"metadata": metadata, "weight_map": weight_map}, indent=1) to the text
    file `f` piece by piece, with json's C string encoder: json.dump with indent runs the
    pure-Python encoder (~3 us a tensor, #18), and the index of a million tensors (its manifest
    string escaped, a line per tensor) is never one string in memory (#13)."""
    def rows(d: dict) -> None:
        if not d:
            f.write("{}")
            return
        f.write("{\n")
        batch: list[str] = []
        for i, (k, v) in enumerate(d.items()):
            lead = "  " if i == 0 else ",\n  "
            if isinstance(v, manifest.ManifestText) or (type(v) is str and len(v) > _SLICE):
                f.write("".join(batch) + lead + _enc(k) + ': "')
                batch = []
                # Escaping is per character: escaped pieces join up to the escaped whole.
                pieces = v.pieces() if isinstance(v, manifest.ManifestText) else \
                    (v[j:j + _SLICE] for j in range(0, len(v), _SLICE))
                for piece in pieces:
                    f.write(_enc(piece)[1:-1])
                f.write('"')
                continue
            batch.append(lead + _enc(k) + ": " + (_enc(v) if type(v) is str else
                                                  json.dumps(v, indent=1).replace("\n", "\n  ")))
            if len(batch) == 4096:
                f.write("".join(batch))
                batch = []
        f.write("".join(batch) + "\n }")
    f.write('{\n "metadata": ')
    rows(metadata)
    f.write(',\n "weight_map": ')
    rows(weight_map)
    f.write("\n}")


_SLICE = 1 << 20
_enc = json.encoder.encode_basestring_ascii


def write_safetensors(ckpt: Checkpoint, path: str, names: list[str], out_dtypes: Mapping[str, str], metadata: dict,
                      report: Report, *, overwrite: bool = False, max_shard_size: int | None = None,
                      progress: Progress | None = None, shard_metadata: dict | None = None) -> Report:
    """Write tensors `names` of `ckpt` (each as `out_dtypes[name]`) as one safetensors file at
    `path` with `metadata`, or, past `max_shard_size` bytes, as `stem-0000i-of-0000n.safetensors`
    shards (each with `shard_metadata`) plus the index `path + ".index.json"` carrying `metadata`,
    published last: the Hugging Face layout. Fills and returns `report`."""
    groups = _plan_shards(ckpt, names, out_dtypes, max_shard_size)
    if len(groups) == 1:
        finals = [path]
    else:
        shard_files = [shard_name(path, i, len(groups)) for i in range(len(groups))]
        finals = shard_files + [path + INDEX_SUFFIX]
    total = 0
    with atomic_outputs(finals, overwrite=overwrite) as out:
        weight_map = {}
        for i, group in enumerate(groups):
            shard_path = finals[i]
            # Every shard carries the version; the manifest lives in the index when sharded.
            shard_meta = manifest.resolved(metadata) if len(groups) == 1 else dict(shard_metadata or {})
            hint = ("; --max-shard-size puts the manifest in the shard index and fewer tensors in each "
                    "shard's header" if len(groups) == 1 and len(group) > 1 else "")
            total += _write_file(out.path(shard_path), ckpt, group, out_dtypes, shard_meta, path, progress, hint)
            weight_map.update(dict.fromkeys(group, os.path.basename(shard_path)))
        if len(groups) > 1:
            with open(out.path(finals[-1]), "w") as f:
                write_index_text(f, {**metadata, "total_size": str(total)}, weight_map)
    report.tensors_in = len(ckpt)
    report.tensors_out = len(names)
    report.bytes_out = total
    report.files = finals
    return report


_second = operator.itemgetter(1)


def _source(ckpt: Checkpoint, name: str, dst: str, path: str) -> LazyTensor:
    t = ckpt.entries[name].tensor
    return _narrowed(t, dst, name, path) if t.dtype == "float64" and dst == "float32" else t


def _plan_shards(ckpt, names, out_dtypes, max_shard_size):
    if not max_shard_size:
        return [names]
    groups: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for name in names:
        t = ckpt.entries[name].tensor
        n = t.nbytes // dtypes.itemsize(t.dtype) * dtypes.itemsize(out_dtypes[name])
        if cur and size + n > max_shard_size:
            groups.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    groups.append(cur)
    return groups
