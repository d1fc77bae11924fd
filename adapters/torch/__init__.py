"""The PyTorch adapter: torch.save files (zip and legacy) read and written without torch, and
in-memory nn.Modules / state dicts with it.

- read(path, prefer_ema=False): bare state dicts, training checkpoints nesting them (state_dict,
  model, module, ema, model_ema...), pickled nn.Modules (YOLOv5 style) rebuilt without their source
  and without running the pickle, fp16/bf16, tied and non-contiguous tensors.
- write(ckpt, path, layout="state_dict"|"training", restore_dtype=True): a zip file that
  torch.load(path, weights_only=True) loads and load_state_dict(strict=True) accepts.

>>> from hubfmt.adapters import torch as pt
>>> ckpt = pt.read("model.pth")                 # doctest: +SKIP
>>> pt.write(ckpt, "copy.pth")                  # doctest: +SKIP
"""
from __future__ import annotations

import os

from hubfmt.registry import NativeFormat

from .loading import sniff_bytes
from .memory import from_model, to_model
from .reader import read
from .writer import write
from .zipformat import is_torch_zip

FRAMEWORK = "torch"
FRAMEWORK_MODULE = "torch"
PIP_NAME = "torch"
FORMATS = (
    # .ckpt is MindSpore's suffix for output; Lightning .ckpt zips are still read (sniffed by content).
    NativeFormat("torch-zip", (".pt", ".pth", ".bin"), "torch.save zip archive (data.pkl + raw storages)"),
    NativeFormat("torch-legacy", (), "torch.save legacy format (_use_new_zipfile_serialization=False)", writes=False),
)


def sniff(path: str | os.PathLike) -> str | None:
    """'torch-zip' for a zip with a <dir>/data.pkl member, 'torch-legacy' for the legacy magic."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return None
    kind = sniff_bytes(head)
    if kind == "zip":
        return "torch-zip" if is_torch_zip(path) else None
    return kind


__all__ = ["FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model", "to_model"]
