"""Writing `oneflow.save` directories without OneFlow.

The output is what `flow.save(state_dict, dir)` writes: `tensor_<i>/out` (raw little-endian bytes,
streamed by write_tensor, kernel-copied when the source bytes already lie in a file), `tensor_<i>/meta`
(protobuf text) and `pickled_data`, written last. The directory is built under a temporary name
beside the destination and renamed into place: it appears whole or not at all.

Non-tensor content (ckpt.extra: epoch, best_fitness, names, yaml, ...) has two homes:

- layout="state_dict" (default): `pickled_data` holds the state dict alone, so
  `module.load_state_dict(flow.load(dir), strict=True)` works as for any OneFlow state dict; the
  extra goes to `dir/hubfmt_extra/`, itself a tensor-free oneflow.save directory that
  `flow.load(dir)` never opens and `flow.load(dir + "/hubfmt_extra")` returns as a dict.
- layout="training": `pickled_data` holds {'model': state_dict, **extra}, the shape of a YOLOv5
  training checkpoint: `ckpt = flow.load(dir); model.load_state_dict(ckpt["model"])`.

Either way values are plain data (hubfmt.extra.to_plain: numpy arrays as {"__ndarray__": ...}).
"""
from __future__ import annotations

import os

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import atomic_output
from hubfmt.sdk import Checkpoint, LazyTensor
from hubfmt.sdk import ConversionError
from hubfmt.sdk import to_plain
from hubfmt.sdk import Report
from hubfmt.sdk import Progress, prefetched, write_tensor

from . import meta as meta_codec
from . import pickled
from .reader import EXTRA_DIR
from .names import BUFFER_ROLES

LAYOUTS = ("state_dict", "training")


def output_dtype(tensor_dtype: str, original_dtype: str, restore_dtype: bool) -> str:
    """The dtype written for a tensor: the source's own dtype by default (an fp16 YOLOv5 weight
    goes back to fp16; OneFlow's load_state_dict casts it into an fp32 parameter), float32 for
    floating tensors when restore_dtype=False. bfloat16 is written as float32 (exact): OneFlow 0.9
    saves it as float32 bytes under a kBFloat16 meta that its own flow.load then refuses."""
    dt = (original_dtype or tensor_dtype) if restore_dtype else tensor_dtype
    if dt == "bfloat16" or (not restore_dtype and dt in dtypes.FLOATING):
        return "float32"          # OneFlow 0.9's flow.load cannot read bfloat16 back from disk
    return dt


def _missing_bn_counters(ckpt: Checkpoint) -> dict[str, str]:
    """batch_norm layers without num_batches_tracked (sources other than torch/OneFlow have none,
    but OneFlow's strict load_state_dict wants it): running_var name -> counter name to create."""
    out = {}
    for name, e in ckpt.entries.items():
        if e.info.kind == "batch_norm" and e.info.role == "running_var":
            counter = f"{e.info.layer}.num_batches_tracked" if e.info.layer else "num_batches_tracked"
            if counter not in ckpt.entries:
                out[name] = counter
    return out


def write(ckpt: Checkpoint, path: str | os.PathLike, *, overwrite: bool = False, progress: Progress | None = None,
          restore_dtype: bool = True, layout: str = "state_dict") -> Report:
    """Write `ckpt` as a oneflow.save directory at `path` (see the module docstring for layouts).

    >>> write(hubfmt.read("yolov5s.safetensors"), "yolov5s.oneflow")      # doctest: +SKIP
    >>> # in OneFlow: model.load_state_dict(flow.load("yolov5s.oneflow"), strict=True)
    """
    path = os.fspath(path)
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown OneFlow layout {layout!r} (known: {', '.join(LAYOUTS)})", path)
    report = Report(stage="write")
    extra = to_plain(ckpt.extra) if ckpt.extra else {}
    if layout == "training" and "model" in extra:
        raise ConversionError("-W layout=training stores the weights under 'model', but the checkpoint's "
                              "non-tensor content has a 'model' entry too", path)

    # Plan: (name, tensor, dtype to write, pickled as Parameter?) in checkpoint order, with created
    # BatchNorm counters right after their layer's running_var.
    counters = _missing_bn_counters(ckpt)
    plan = []
    for name in ckpt.stored_names():
        e = ckpt.entries[name]
        dt = output_dtype(e.tensor.dtype, e.info.original_dtype, restore_dtype)
        try:
            meta_codec.enum_name(dt)
        except KeyError:
            raise ConversionError(f"tensor {name!r}: OneFlow 0.9 cannot load {dt} tensors", path) from None
        if dt != e.tensor.dtype:
            why = " (restored source dtype)" if dt == e.info.original_dtype else ""
            report.add("cast", name, f"{e.tensor.dtype}->{dt}{why}")
        else:
            report.add("matched", name)
        plan.append((name, e.tensor, dt, e.info.role not in BUFFER_ROLES and dt in dtypes.FLOATING))
        if name in counters:
            zero = LazyTensor.from_array(np.zeros((), dtype="<i8"))
            plan.append((counters[name], zero, "int64", False))
            report.add("created", counters[name], "OneFlow BatchNorm counter the source lacks (0)")

    total = 0
    with atomic_output(path, overwrite=overwrite) as tmp:
        os.mkdir(tmp)
        slots = {}
        tensors = prefetched((tensor, dt) for _, tensor, dt, _ in plan)
        for i, ((name, _, dt, parameter), tensor) in enumerate(zip(plan, tensors, strict=True)):
            folder = f"tensor_{i}"
            os.mkdir(os.path.join(tmp, folder))
            with open(os.path.join(tmp, folder, "out"), "wb") as f:
                n = write_tensor(f, tensor, dt)
            with open(os.path.join(tmp, folder, "meta"), "wb") as f:
                f.write(meta_codec.render(tensor.shape, dt))
            slots[name] = pickled.TensorSlot(folder, parameter)
            total += n
            if progress:
                progress.update(n)
        items = []
        for name, e in ckpt.entries.items():
            if e.info.tied_to:
                report.add("tied", name, f"stored once, as {e.info.tied_to}")
            items.append((name, slots[e.info.tied_to or name]))
            if name in counters:      # after its running_var, as in a OneFlow module's state dict
                items.append((counters[name], slots[counters[name]]))
        state_dict = pickled.StateDict(items)
        if layout == "training":
            data = {"model": state_dict, **extra}
            for k in extra:
                report.add("stored", f"extra[{k!r}]", "in pickled_data beside 'model' (-W layout=training)")
        else:
            data = state_dict
            for k in extra:
                report.add("stored", f"extra[{k!r}]", f"in {os.path.basename(path)}/{EXTRA_DIR}/, a tensor-free "
                                                      f"oneflow.save directory: flow.load(dir + '/{EXTRA_DIR}')")
            if extra:
                os.mkdir(os.path.join(tmp, EXTRA_DIR))
                with open(os.path.join(tmp, EXTRA_DIR, pickled.PICKLE_FILENAME), "wb") as f:
                    f.write(pickled.dumps(extra))
        with open(os.path.join(tmp, pickled.PICKLE_FILENAME), "wb") as f:
            f.write(pickled.dumps(data))
    report.tensors_in = len(ckpt)
    report.tensors_out = len(items)
    report.bytes_out = total
    return report
