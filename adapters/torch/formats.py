"""The formats the PyTorch adapter reads and writes without torch, with their options."""
from __future__ import annotations

import os

from hubfmt.sdk import PREFER_EMA, RESTORE_DTYPE, WRITE, NativeFormat, Option

NAME = "torch"
FRAMEWORK = "torch"
FRAMEWORK_MODULE = "torch"
PIP_NAME = "torch"

from .loading import sniff_bytes
from .zipformat import is_torch_zip

LAYOUT = Option("layout", "str", "state_dict", "state_dict: a bare state dict; training: "
                "{'state_dict': ..., **non-tensor content}", WRITE, choices=("state_dict", "training"))

FORMATS = (
    # .ckpt is MindSpore's suffix for output; Lightning .ckpt zips are still read (sniffed by content).
    NativeFormat("torch-zip", (".pt", ".pth", ".bin"), "torch.save zip archive (data.pkl + raw storages)",
                 options=(PREFER_EMA, RESTORE_DTYPE, LAYOUT)),
    NativeFormat("torch-legacy", (), "torch.save legacy format (_use_new_zipfile_serialization=False)", writes=False,
                 options=(PREFER_EMA,)),
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
