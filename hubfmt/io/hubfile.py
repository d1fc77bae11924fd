"""Reading and writing hub files: safetensors with the hubfmt manifest (spec/hubfmt-v1.md).

Reading is lazy: the header is parsed and checked, tensors are read one at a time when asked for.
Writing streams: the header is laid out from shapes and dtypes, then each tensor's bytes follow.
Either way the whole model is never in memory. A hub file may be sharded: `NAME.safetensors.index.json`
maps tensor names to shard files (the common Hugging Face layout) and carries the manifest.
"""
from __future__ import annotations

import json
import os
import re
import struct

from hubfmt.codecs import safetensors
from hubfmt.format import dtypes
from hubfmt.format import manifest
from hubfmt.io.atomic import atomic_outputs
from hubfmt.format.checkpoint import Checkpoint, Entry, SourceInfo, TensorInfo
import numpy as np

from hubfmt.format.tensor import LazyTensor, region_tensor
from hubfmt.errors import ConversionError, FormatError
from hubfmt.report import Report
from hubfmt.io.inputs import check_input_file
from hubfmt.io.progress import Progress
from hubfmt.io.stream import TensorStream

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
    try:
        with open(index, "rb") as f:
            doc = json.load(f)
        weight_map = doc["weight_map"]
        meta = doc.get("metadata", {})
        files = list(dict.fromkeys(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
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
    parsed = None
    foreign_meta: dict = {}
    layout: list[tuple[str, str, int, int, dict]] = []
    for shard in files:
        header, data_start, _ = safetensors.read_header(shard)
        meta = header.pop("__metadata__", {}) or {}
        if not index_meta and manifest.KEY_VERSION in meta and manifest.KEY_MANIFEST not in meta:
            # A shard carries the version but not the manifest (spec 1.3): alone, it is part of a model.
            m = re.match(r"^(.+)-\d{5}-of-\d{5}\.safetensors$", os.path.basename(shard))
            index = os.path.join(os.path.dirname(path), f"{m.group(1)}.safetensors{INDEX_SUFFIX}") if m else "its index"
            raise FormatError(f"one shard of a sharded hub file: pass {index}, which names every shard", path)
        if parsed is None:
            parsed = manifest.parse(index_meta or meta, path)
            foreign_meta = {} if parsed else dict(meta)
        for name, d in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            layout.append((name, shard, data_start + int(d["data_offsets"][0]), 0, d))
    infos, layers, source, extra = parsed if parsed else ({}, {}, SourceInfo(), {})
    stored = {name: (shard, off, d) for name, shard, off, _, d in layout}
    # Manifest order is the checkpoint's order; stored tensors the manifest lacks come after.
    order = [n for n in infos if n in stored or infos[n].tied_to] + [n for n in stored if n not in infos]
    for name in order:
        info = infos.get(name) or TensorInfo()
        if info.tied_to:
            if info.tied_to not in stored:
                raise FormatError(f"tensor {name!r} is tied to {info.tied_to!r}, which the file does not store", path)
            shard, off, d = stored[info.tied_to]
        elif name in stored:
            shard, off, d = stored[name]
        else:
            raise FormatError(f"manifest lists tensor {name!r}, which the file does not store", path)
        dt = dtypes.from_safetensors(d["dtype"])
        assert dt is not None         # read_header refused unknown dtypes
        tensor = region_tensor(shard, off, dt, d["shape"])
        ckpt.add(name, tensor, info)
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
    names, out_dtypes, meta, report = plan(ckpt, keep_dtype, path)
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


def plan(ckpt: Checkpoint, keep_dtype: bool = False, path: str | None = None) -> tuple[list[str], dict[str, str], dict, Report]:
    """What a hub file of `ckpt` at `path` stores: the tensor names, each one's stored dtype, the
    file's metadata (manifest included) and the write report's events so far (casts, ties, extras)."""
    report = Report(stage="write")
    names = ckpt.stored_names()
    out_dtypes: dict[str, str] = {}
    for name in names:
        e = ckpt.entries[name]
        out_dtypes[name] = stored_dtype(e, keep_dtype)
        src = e.tensor.dtype
        if out_dtypes[name] != src:
            action = "cast"
            detail = f"{src}->{out_dtypes[name]}" + (" (narrowing: values rounded)" if src == "float64" else "")
            report.add(action, name, detail)
        else:
            report.add("matched", name)
    stored = set(names)
    for name, e in ckpt.entries.items():
        if e.info.tied_to:
            if e.info.tied_to not in stored:
                # the reader refuses a tie to a name the file does not store (itself, an alias, nothing)
                raise ConversionError(f"tensor {name!r} is tied to {e.info.tied_to!r}, which is not a stored tensor "
                                      "(a tie to itself, to another alias or to nothing)", path)
            report.add("tied", name, f"stored once, as {e.info.tied_to}")
    meta = manifest.build(ckpt)
    for k in ckpt.extra:
        report.add("stored", f"extra[{k!r}]", "in the manifest (hubfmt.extra)")
    # Its layouts are torch's: loaders that check safetensors' "format" convention accept it.
    return names, out_dtypes, {"format": "pt", **meta}, report


def shard_name(path: str, i: int, n: int) -> str:
    """The file name of shard `i` (0-based) of `n` for a sharded hub file at `path`."""
    stem = path[: -len(".safetensors")] if path.endswith(".safetensors") else path
    return f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors"


def write_shard(ckpt: Checkpoint, shard_path: str, names: list[str], out_dtypes: dict[str, str], *,
                overwrite: bool = False, progress: Progress | None = None) -> int:
    """One shard of a sharded hub file on its own (atomically): tensors `names` of `ckpt`. Returns
    the bytes of tensor data written. hubfmt.batch writes the shards of one file in parallel, then
    the index (write_index) once every shard is published."""
    with atomic_outputs([shard_path], overwrite=overwrite) as out:
        head, _ = safetensors.header_bytes(SHARD_METADATA, [(n, out_dtypes[n], ckpt.entries[n].tensor.shape)
                                                            for n in names])
        with open(out.path(shard_path), "wb") as f:
            f.write(head)
            stream = TensorStream(names, progress=progress, tensor=lambda n: _source(ckpt, n, out_dtypes[n], shard_path),
                                  dtype=out_dtypes.__getitem__)
            for _, piece in stream:
                piece.write(f)
    return stream.bytes


def write_index(path: str, metadata: dict, weight_map: dict[str, str], total: int, *, overwrite: bool = False) -> str:
    """The index `path + ".index.json"` of a sharded hub file whose shards are already published."""
    index_path = path + INDEX_SUFFIX
    with atomic_outputs([index_path], overwrite=overwrite) as out:
        with open(out.path(index_path), "w") as f:
            json.dump({"metadata": {**metadata, "total_size": str(total)}, "weight_map": weight_map}, f, indent=1)
    return index_path


def write_safetensors(ckpt: Checkpoint, path: str, names: list[str], out_dtypes: dict[str, str], metadata: dict,
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
            shard_meta = metadata if len(groups) == 1 else dict(shard_metadata or {})
            head, _ = safetensors.header_bytes(shard_meta, [(n, out_dtypes[n], ckpt.entries[n].tensor.shape) for n in group])
            if len(head) - 8 > safetensors.MAX_HEADER:
                hint = ("; --max-shard-size puts the manifest in the shard index and fewer tensors in each "
                        "shard's header" if len(groups) == 1 and len(group) > 1 else "")
                raise ConversionError(f"the safetensors header would be {len(head) - 8} bytes, more than the "
                                      f"{safetensors.MAX_HEADER} readers accept (a source header this large, or "
                                      f"names this long, cannot be written as a hub file{hint})", path)
            with open(out.path(shard_path), "wb") as f:
                f.write(head)
                stream = TensorStream(group, progress=progress, tensor=lambda n: _source(ckpt, n, out_dtypes[n], path),
                                      dtype=out_dtypes.__getitem__)
                for name, piece in stream:
                    piece.write(f)
                    weight_map[name] = os.path.basename(shard_path)
                total += stream.bytes
        if len(groups) > 1:
            index = {"metadata": {**metadata, "total_size": str(total)}, "weight_map": weight_map}
            with open(out.path(finals[-1]), "w") as f:
                json.dump(index, f, indent=1)
    report.tensors_in = len(ckpt)
    report.tensors_out = len(names)
    report.bytes_out = total
    report.files = finals
    return report


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
