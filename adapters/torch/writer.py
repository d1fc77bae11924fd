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

import collections
import os
import re
import uuid

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import atomic_output
from hubfmt.sdk import Checkpoint
from hubfmt.sdk import ConversionError
from hubfmt.sdk import Report
from hubfmt.sdk import Progress, prefetched, write_tensor

from .pickler import STORAGE_CLASSES, UNTYPED_DTYPES, TensorRecord, emit
from .tensors import c_strides
from .zipwriter import ZipWriter

LAYOUTS = ("state_dict", "training")


def _archive_name(path: str) -> str:
    # torch names the archive directory after the file's stem; keep it to safe characters.
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(path))[0])
    return stem or "archive"


def _out_dtype(entry, restore_dtype: bool) -> str:
    want = entry.info.original_dtype if restore_dtype else ""
    return want if want in dtypes.DTYPES else entry.tensor.dtype


class _Plan:
    """Which tensors get a storage of their own, in which dtype; which are views of another."""

    def __init__(self, ckpt: Checkpoint, restore_dtype: bool, report: Report):
        self.records: dict[str, TensorRecord] = {}
        self.storages: list[tuple[str, str, str]] = []       # key, tensor name, dtype
        key_of: dict[str, str] = {}
        for name, entry in ckpt.entries.items():
            dt = _out_dtype(entry, restore_dtype)
            if dt not in STORAGE_CLASSES and dt not in UNTYPED_DTYPES:
                raise ConversionError(f"tensor {name!r}: torch has no dtype {dt}", None)
            shape = entry.tensor.shape
            numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
            target = entry.info.tied_to
            tied = bool(target) and target in self.records
            if target and not tied:
                report.add("warning", name, f"tied to {target}, which is not stored before it: stored separately")
            elif tied and (self.records[target].dtype != dt or self.records[target].numel != numel):
                tied = False
                report.add("warning", name, f"tied to {target} but with another dtype/size: stored separately")
            if tied:
                key = key_of[target]
                report.add("tied", name, f"shares {target}'s storage")
            else:
                key = str(len(self.storages))
                self.storages.append((key, name, dt))
                if dt != entry.tensor.dtype:
                    report.add("cast", name, f"{entry.tensor.dtype}->{dt}" + (" (original dtype restored)" if restore_dtype else ""))
                else:
                    report.add("matched", name)
            key_of[name] = key
            self.records[name] = TensorRecord(key, dt, numel, shape, c_strides(shape))


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
          restore_dtype: bool = True, layout: str = "state_dict") -> Report:
    """Write `ckpt` as a torch zip file at `path`, one tensor at a time.

    layout="state_dict" (default) writes a bare OrderedDict state dict (ckpt.extra is dropped and
    reported); layout="training" writes {'state_dict': ..., **ckpt.extra}. `restore_dtype` writes
    each tensor in its original dtype (info.original_dtype); every cast is reported.
    """
    path = os.fspath(path)
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown torch layout {layout!r} (choose from {', '.join(LAYOUTS)})", path)
    report = Report(stage="write")
    plan = _Plan(ckpt, restore_dtype, report)
    state = collections.OrderedDict((n, plan.records[n]) for n in ckpt.entries)
    arrays: list = []
    if layout == "training":
        if "state_dict" in ckpt.extra:
            raise ConversionError("non-tensor content has its own 'state_dict' key; cannot nest the weights under it", path)
        extra = _arrays_to_records(_extra_value(dict(ckpt.extra), "extra", report), arrays)
        obj = {"state_dict": state, **extra}
        report.add("warning", path, f"training-checkpoint layout: weights under 'state_dict', "
                                     f"{len(ckpt.extra)} non-tensor fields beside them")
    else:
        obj = state
        for k in ckpt.extra:
            report.add("dropped", f"extra[{k!r}]", "non-tensor content: a bare state dict cannot hold it (-W layout=training keeps it)")
    if any(li.attrs for li in ckpt.layers.values()):
        report.add("warning", path, "layer attributes (eps, momentum, stride...) are not part of a torch state dict")
    try:
        pickle_bytes = emit(obj)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"cannot pickle the checkpoint: {e}", path) from None
    root = _archive_name(path) + "/"
    total = 0
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "w+b") as f:  # read back for CRC-32
        z = ZipWriter(f)
        z.add(root + "data.pkl", pickle_bytes)
        z.add(root + ".format_version", b"1")
        z.add(root + ".storage_alignment", str(64).encode())
        z.add(root + "byteorder", b"little")
        tensors = prefetched((ckpt.entries[name].tensor, dt) for _, name, dt in plan.storages)
        for (key, _, dt), tensor in zip(plan.storages, tensors, strict=True):
            z.begin(f"{root}data/{key}", tensor.nbytes // dtypes.itemsize(tensor.dtype) * dtypes.itemsize(dt))
            write_tensor(f, tensor, dt)
            n = z.end()
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
