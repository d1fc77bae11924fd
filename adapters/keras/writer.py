"""Canonical -> Keras 3 `.weights.h5` / `.keras`, streaming and atomic, without Keras.

The h5 skeleton (groups, `name` attributes, datasets) is laid out first with h5py, every dataset
contiguous and allocated up front; then each tensor's bytes are streamed to its dataset's offset
with write_tensor (a kernel copy when the source bytes already lie raw in a file), one tensor at a
time. A `.keras` archive stores config.json, metadata.json and that h5 file, uncompressed, as
Keras does; its config comes from the template or from the checkpoint (read from a .keras).
"""
from __future__ import annotations

import datetime
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import atomic_output
from hubfmt.sdk import Checkpoint, LazyTensor
from hubfmt.sdk import ConversionError, HubfmtError
from hubfmt.sdk import Report
from hubfmt.sdk import prefetched, write_tensor

from . import files, plan


@dataclass
class _Dataset:
    path: str             # "layers/conv2d/vars/0"
    tensor: LazyTensor
    dtype: str            # dtype written
    source: str           # canonical name(s)


def write(ckpt: Checkpoint, path, *, overwrite: bool = False, progress=None, restore_dtype: bool = True,
          template=None, strict: bool = True) -> Report:
    """Write `ckpt` as a Keras 3 weights file that `model.load_weights(path)` accepts.

    `path` ending in `.keras` writes an archive (needs a config: a .keras or live-model template,
    or a checkpoint read from a .keras). `template` (a .keras, a .weights.h5 of the destination
    model, or a live Keras model) fixes the Keras paths and classes; layers match by name, else by
    order. Without one, layers go where they were read from, else to Keras's default names for a
    flat model in checkpoint order. strict=False writes what matches and reports the rest.

    >>> write(read("torch_twin.safetensors"), "m.weights.h5", template=keras_model)   # doctest: +SKIP
    """
    path = os.fspath(path)
    archive = path.endswith(".keras")
    if not (archive or path.endswith(".weights.h5")):
        raise HubfmtError("Keras 3 loads weights from *.weights.h5 or *.keras files: name the output so "
                          "(legacy Keras 2 .h5 is read, not written)", path)
    report = Report(stage="write")
    layers = plan.canonical_layers(ckpt, report, strict=strict)
    config = metadata = None
    names: dict[str, str] = {}
    if template is not None:
        targets, config, metadata, names = plan.template_targets(template)
        separable = {t.module for t in targets if t.class_name == "SeparableConv2D"}
        layers = plan.merge_separable(layers, ckpt, separable)
        pairs = plan.match(layers, targets, report, strict=strict)
    else:
        layers = plan.merge_separable(layers, ckpt, None)
        pairs = plan.rule_targets(layers, ckpt)
    if archive:
        config = config or ckpt.extra.get("keras_config")
        metadata = metadata or ckpt.extra.get("keras_metadata")
        if not isinstance(config, dict):
            raise HubfmtError("a .keras archive needs the model's config.json: pass --template (a .keras file or a "
                              "Keras model), or write a .weights.h5 instead", path)
    plan.attr_warnings(ckpt, pairs, report)
    datasets, parents = _datasets(ckpt, pairs, report, restore_dtype)
    parents = {**names, **parents}      # the template's layer names, then the matched layers' own
    total = 0
    with atomic_output(path, overwrite=overwrite) as tmp:
        h5_path = tmp + ".h5" if archive else tmp
        try:
            total = _write_h5(h5_path, datasets, parents, progress)
            if archive:
                _write_archive(tmp, h5_path, config, metadata)
        finally:
            if archive and os.path.exists(h5_path):
                os.unlink(h5_path)
    report.tensors_in = len(ckpt)
    report.tensors_out = len(datasets)
    report.bytes_out = total
    return report


def _datasets(ckpt: Checkpoint, pairs, report: Report, restore_dtype: bool):
    datasets: list[_Dataset] = []
    parents: dict[str, str] = {}
    for target, index, src_name, tensor, events in plan.exports(ckpt, pairs):
        h5path = f"{target.vars_path}/{index}"
        entry = ckpt.entries.get(src_name)
        want = tensor.dtype
        if restore_dtype and entry is not None and entry.info.original_dtype in dtypes.DTYPES:
            want = entry.info.original_dtype
        if want != tensor.dtype:
            report.add("cast", h5path, f"{tensor.dtype}->{want} (original dtype restored)")
        report.renamed(src_name, h5path)
        for action, detail in events:
            report.add(action, h5path, detail)
        datasets.append(_Dataset(h5path, tensor, want, src_name))
    for _, target in pairs:
        parents[target.vars_path] = target.layer_name
        parents.update({f"{obj}/vars": name for obj, name in target.parents.items()})
    return datasets, parents


def _write_h5(h5_path: str, datasets: list[_Dataset], names: dict[str, str], progress) -> int:
    """Lay out the file with h5py (datasets allocated, not filled), then stream the bytes in."""
    h5py = files.h5py_module()
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)     # offsets known now; bytes come later
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)        # no zeros written first
    offsets = []
    with h5py.File(h5_path, "w") as h5:
        for vars_path, name in names.items():
            g = h5.require_group(vars_path)
            if name:
                g.attrs["name"] = name
        for d in datasets:
            np_dtype = np.dtype("V2") if d.dtype == "bfloat16" else dtypes.storage_dtype(d.dtype)
            ds = h5.create_dataset(d.path, shape=d.tensor.shape, dtype=np_dtype, dcpl=dcpl)
            if d.dtype == "bfloat16":
                ds.attrs["dtype"] = "bfloat16"     # how Keras marks bfloat16 (opaque 2-byte elements)
            offsets.append(ds.id.get_offset())
    total = 0
    late = []       # datasets HDF5 keeps in its object header (tiny/scalar): written through h5py
    sizes = [dtypes.itemsize(d.dtype) * int(np.prod(d.tensor.shape, dtype=np.int64)) for d in datasets]
    loaded = prefetched((d.tensor if n and off is not None else None, d.dtype) for d, n, off in zip(datasets, sizes, offsets, strict=True))
    with open(h5_path, "r+b") as f:
        for d, off, n, tensor in zip(datasets, offsets, sizes, loaded, strict=True):
            if n and off is None:
                late.append(d)
                continue
            if n:
                f.seek(off)
                written = write_tensor(f, tensor, d.dtype)
                if written != n:
                    raise ConversionError(f"{d.source}: wrote {written} bytes for {d.path}, expected {n}")
                total += n
            if progress:
                progress.update(n)
    if late:
        with h5py.File(h5_path, "r+") as h5:
            for d in late:
                a = dtypes.convert(d.tensor.load(), d.tensor.dtype, d.dtype)
                h5[d.path][()] = a.view("V2") if d.dtype == "bfloat16" else a
                total += a.nbytes
                if progress:
                    progress.update(a.nbytes)
    return total


def _write_archive(tmp: str, h5_path: str, config: dict, metadata: dict | None) -> None:
    meta = dict(metadata or {})
    meta.setdefault("keras_version", "3")
    meta["date_saved"] = datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(files.METADATA_MEMBER, json.dumps(meta))
        z.writestr(files.CONFIG_MEMBER, json.dumps(config))
        z.write(h5_path, files.WEIGHTS_MEMBER)
