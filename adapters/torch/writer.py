"""Canonical Checkpoint -> a torch.save zip file, without torch: `torch.load(path, weights_only=True)`
loads it and `load_state_dict(strict=True)` accepts it.

Layout of what is written: data.pkl (our own protocol-2 pickle of an OrderedDict of tensors, or
with layout="training" {'state_dict': ..., **ckpt.extra}), .format_version, .storage_alignment,
byteorder, data/<key> (one STORED, 64-byte aligned member per stored tensor, tied tensors share
one), version. Published atomically.

>>> report = write(ckpt, "model.pth")                                    # doctest: +SKIP
>>> report = write(ckpt, "ckpt.pth", layout="training")                  # doctest: +SKIP
"""
from __future__ import annotations

import os
import re
import uuid

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import atomic_output
from hubfmt.sdk import Checkpoint, LazyTensor
from hubfmt.sdk import ConversionError
from hubfmt.sdk import Report
from hubfmt.sdk import OUTPUT_BUFFER, Progress, prefetched, write_tensor

from .pickler import STORAGE_CLASSES, UNTYPED_DTYPES, StateDict, TensorRecord, emit_parts
from .tensors import c_strides
from .zipwriter import ZipWriter

LAYOUTS = ("state_dict", "training")


def _archive_name(path: str) -> str:
    # torch names the archive directory after the file's stem; keep it to safe characters.
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(path))[0])
    return stem or "archive"


def out_dtype(entry, restore_dtype: bool) -> str:
    want = entry.info.original_dtype if restore_dtype else ""
    return want if want in dtypes.DTYPES else entry.tensor.dtype


_TORCH_DTYPES = frozenset(STORAGE_CLASSES) | frozenset(UNTYPED_DTYPES)
_SHAPES_KEPT = 4096          # distinct shapes whose numel and strides a plan keeps


class _Plan:
    """Which tensors get a storage of their own, in which dtype; which are views of another.
    `state` is the state dict, pickled as it is planned (a record object per tensor cost a
    million-tensor checkpoint ~250 MB); `storages` the tensors written, as prefetched takes them:
    storage i is member data/i, (tensor, dtype), of `nbytes[i]` bytes."""

    def __init__(self, ckpt: Checkpoint, restore_dtype: bool, report: Report):
        state = self.state = StateDict()
        storages: list[tuple[LazyTensor, str]] = []
        nbytes: list[int] = []
        self.storages, self.nbytes = storages, nbytes
        # Only tensors others are tied to are looked up again: their storage key, dtype and numel.
        targets = {e.info.tied_to for e in ckpt.entries.values() if e.info.tied_to}
        stored: dict[str, tuple[str, str, int]] = {}
        sizes: dict[tuple, tuple[int, tuple]] = {}       # shape -> numel, strides: layers repeat shapes
        known = dtypes.DTYPES
        itemsize = dtypes.itemsize
        add = report.add
        for name, entry in ckpt.entries.items():
            tensor, info = entry.tensor, entry.info
            want = info.original_dtype if restore_dtype else ""     # out_dtype, inline: once per tensor
            dt = want if want in known else tensor.dtype
            if dt not in _TORCH_DTYPES:
                raise ConversionError(f"tensor {name!r}: torch has no dtype {dt}", None)
            shape = tensor.shape
            size = sizes.get(shape)
            if size is None:
                numel = 1
                for d in shape:                     # not np.prod: ~10 us a call (#18)
                    numel *= int(d)
                size = (numel, c_strides(shape))
                if len(sizes) < _SHAPES_KEPT:
                    sizes[shape] = size
            numel, strides = size
            target = info.tied_to
            if target:
                tie = stored.get(target)
                if tie is None:
                    add("warning", name, f"tied to {target}, which is not stored before it: stored separately")
                elif tie[1] != dt or tie[2] != numel:
                    tie = None
                    add("warning", name, f"tied to {target} but with another dtype/size: stored separately")
                if tie is not None:
                    key = tie[0]
                    add("tied", name, f"shares {target}'s storage")
                    state.add(name, key, dt, numel, shape, strides)
                    if name in targets:
                        stored[name] = (key, dt, numel)
                    continue
            key = str(len(storages))
            storages.append((tensor, dt))
            nbytes.append(numel * itemsize(dt))
            state.add(name, key, dt, numel, shape, strides)
            if name in targets:
                stored[name] = (key, dt, numel)
            if dt != tensor.dtype:
                add("cast", name, f"{tensor.dtype}->{dt}" + (" (original dtype restored)" if restore_dtype else ""))
            else:
                report.matched(name)


def _extra_value(value, name: str, report: Report, depth: int = 0):
    """ckpt.extra as values torch.load(weights_only=True) accepts: arrays become tensors later
    (returned as ('array', ndarray)), anything else unknown is dropped and reported."""
    if depth > 60:
        report.add("dropped", name, "nested too deeply")
        return None
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US":
            # torch tensors hold numbers only: text arrays (YOLO class names...) become lists
            report.add("warning", name, f"a numpy {value.dtype.str} text array is stored as a list of strings")
            return value.tolist()
        try:
            dtypes.name_of(value.dtype)
        except ValueError:
            report.add("dropped", name, f"a numpy array of dtype {value.dtype.str} has no torch tensor form")
            return None
        return value
    if isinstance(value, (list, tuple)):
        items = [_extra_value(v, f"{name}[{i}]", report, depth + 1) for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, (set, frozenset)):
        return [_extra_value(v, f"{name}[{i}]", report, depth + 1) for i, v in enumerate(sorted(value, key=repr))]
    if isinstance(value, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): _extra_value(v, f"{name}[{k!r}]", report, depth + 1)
                for k, v in value.items()}
    report.add("dropped", name, f"a {type(value).__name__} cannot be stored in a weights_only torch file")
    return None


def _arrays_to_records(value, arrays: list, depth: int = 0):
    """Replace numpy arrays by TensorRecords (collected in `arrays`) throughout `value`."""
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        dt = dtypes.name_of(arr.dtype)
        rec = TensorRecord(f"x{len(arrays)}", dt, int(arr.size), tuple(arr.shape), c_strides(arr.shape))
        arrays.append((rec, arr.astype(dtypes.storage_dtype(dt))))
        return rec
    if isinstance(value, list):
        return [_arrays_to_records(v, arrays, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_arrays_to_records(v, arrays, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: _arrays_to_records(v, arrays, depth + 1) for k, v in value.items()}
    return value


def write(ckpt: Checkpoint, path: str | os.PathLike, *, overwrite: bool = False, progress: Progress | None = None,
          restore_dtype: bool = True, layout: str = "state_dict", max_shard_size: int | None = None) -> Report:
    """Write `ckpt` as a torch zip file at `path`, one tensor at a time.

    layout="state_dict" (default) writes a bare OrderedDict state dict (ckpt.extra is dropped and
    reported); layout="training" writes {'state_dict': ..., **ckpt.extra}. `restore_dtype` writes
    each tensor in its original dtype (info.original_dtype); every cast is reported. Past
    `max_shard_size` bytes, state dict shards `stem-0000k-of-0000n.bin` and the index
    `path + ".index.json"` (the pytorch_model.bin layout transformers loads), the index last.
    """
    path = os.fspath(path)
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown torch layout {layout!r} (choose from {', '.join(LAYOUTS)})", path)
    if max_shard_size:
        groups = _shard_groups(ckpt, max_shard_size)
        if len(groups) > 1:
            if layout != "state_dict":
                raise ConversionError("-W layout=training cannot be sharded: shards hold state dicts only", path)
            return _write_shards(ckpt, path, groups, overwrite=overwrite, progress=progress,
                                 restore_dtype=restore_dtype)
    report = Report(stage="write")
    plan = _Plan(ckpt, restore_dtype, report)
    state = plan.state.pickled()
    arrays: list = []
    if layout == "training":
        if "state_dict" in ckpt.extra:
            raise ConversionError("non-tensor content has its own 'state_dict' key; cannot nest the weights under it", path)
        extra = _arrays_to_records(_extra_value(dict(ckpt.extra), "extra", report), arrays)
        obj = {"state_dict": state, **extra}
        for k in ckpt.extra:
            report.add("stored", f"extra[{k!r}]", "beside 'state_dict' (-W layout=training)")
    else:
        obj = state
        for k in ckpt.extra:
            report.add("dropped", f"extra[{k!r}]", "non-tensor content: a bare state dict cannot hold it (-W layout=training keeps it)")
    if any(li.attrs for li in ckpt.layers.values()):
        report.add("warning", path, "layer attributes (eps, momentum, stride...) are not part of a torch state dict")
    try:
        pickle_parts = emit_parts(obj)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"cannot pickle the checkpoint: {e}", path) from None
    del obj, state, plan.state      # the parts hold the state dict's opcodes: no other copy
    root = _archive_name(path) + "/"
    total = 0
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "w+b", buffering=OUTPUT_BUFFER) as f:  # read back for CRC-32
        z = ZipWriter(f)
        z.add_parts(root + "data.pkl", pickle_parts)
        del pickle_parts
        z.add(root + ".format_version", b"1")
        z.add(root + ".storage_alignment", str(64).encode())
        z.add(root + "byteorder", b"little")
        tensors = prefetched(plan.storages)
        data = root + "data/"
        for i, ((_, dt), nbytes, tensor) in enumerate(zip(plan.storages, plan.nbytes, tensors, strict=True)):
            z.begin(f"{data}{i}", nbytes)
            n = z.end(write_tensor(f, tensor, dt))
            total += n
            if progress:
                progress.update(n)
        for rec, arr in arrays:
            z.add(f"{root}data/{rec.key}", arr.tobytes())
        z.add(root + "version", b"3\n")
        z.add(root + ".data/serialization_id", uuid.uuid4().hex.encode().ljust(40, b"0"))
        z.close()
    report.tensors_in = len(ckpt)
    report.tensors_out = len(plan.storages)
    report.bytes_out = total
    return report


def _shard_groups(ckpt: Checkpoint, max_shard_size: int) -> list[list[str]]:
    """Tensor names in consecutive groups of at most `max_shard_size` stored bytes (a tensor larger
    than that is a group of its own); a tied alias goes with the tensor it shares storage with."""
    groups: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for name, e in ckpt.entries.items():
        if e.info.tied_to:
            continue
        n = e.tensor.nbytes
        if cur and size + n > max_shard_size:
            groups.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    groups.append(cur)
    where = {n: i for i, g in enumerate(groups) for n in g}
    for name, e in ckpt.entries.items():
        if e.info.tied_to:
            groups[where[e.info.tied_to]].append(name)
    return groups


def _write_shards(ckpt: Checkpoint, path: str, groups: list[list[str]], *, overwrite: bool, progress,
                  restore_dtype: bool) -> Report:
    import json

    from hubfmt.sdk import atomic_outputs

    stem = path[: -len(os.path.splitext(path)[1])] if os.path.splitext(path)[1] in (".bin", ".pt", ".pth") else path
    ext = os.path.splitext(path)[1] or ".bin"
    shard_files = [f"{stem}-{i + 1:05d}-of-{len(groups):05d}{ext}" for i in range(len(groups))]
    finals = shard_files + [path + ".index.json"]
    report = Report(stage="write")
    weight_map: dict[str, str] = {}
    total = 0
    with atomic_outputs(finals, overwrite=overwrite) as out:
        for shard, group in zip(shard_files, groups, strict=True):
            part = Checkpoint(entries={n: ckpt.entries[n] for n in group}, layers=ckpt.layers)
            sub = write(part, out.path(shard), overwrite=True, progress=progress, restore_dtype=restore_dtype)
            report.events.extend(e for e in sub.events if e.action != "warning")
            total += sub.bytes_out
            weight_map.update(dict.fromkeys(group, os.path.basename(shard)))
        with open(out.path(finals[-1]), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    for k in ckpt.extra:
        report.add("dropped", f"extra[{k!r}]", "non-tensor content: state dict shards cannot hold it")
    report.tensors_in = len(ckpt)
    report.tensors_out = sum(1 for n in ckpt.entries if not ckpt.entries[n].info.tied_to)
    report.bytes_out = total
    report.files = finals
    return report
