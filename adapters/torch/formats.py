"""The formats the PyTorch adapter reads and writes without torch, with their options."""
from __future__ import annotations

import os

from hubfmt.sdk import MAX_SHARD_SIZE, PREFER_EMA, RESTORE_DTYPE, TEMPLATE, WRITE, NativeFormat, Option, safetensors

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
                 options=(PREFER_EMA, RESTORE_DTYPE, LAYOUT, MAX_SHARD_SIZE), dtypes_not_held=()),
    NativeFormat("torch-legacy", (), "torch.save legacy format (_use_new_zipfile_serialization=False)", writes=False,
                 options=(PREFER_EMA,)),
    # Plain safetensors with torch names: read when its "format" metadata or its names say torch;
    # written with --to torch (a bare .safetensors output is a hub file).
    NativeFormat("torch-safetensors", (".safetensors",), "plain safetensors with torch names and layouts "
                 "(safetensors.torch.save_file; \"format\": \"pt\"), sharded with an index past --max-shard-size",
                 options=(RESTORE_DTYPE, MAX_SHARD_SIZE), writer="write_safetensors", dtypes_not_held=()),
    NativeFormat("hf", (), "Hugging Face model directory: config.json + model.safetensors or shards + index "
                 "(read: also pytorch_model.bin[.index.json], or an index file); --to hf",
                 layout="directory", options=(RESTORE_DTYPE, MAX_SHARD_SIZE, TEMPLATE), writer="write_hf",
                 dtypes_not_held=()),
)


def sniff(path: str | os.PathLike) -> str | None:
    """'torch-zip' for a zip with a <dir>/data.pkl member, 'torch-legacy' for the legacy magic,
    'hf' for a Hugging Face model directory or shard index, 'torch-safetensors' for a plain
    safetensors file whose metadata or names say torch."""
    from . import hf

    path = os.fspath(path)
    if hf.model_directory_weights(path) is not None:
        return "hf"
    if os.path.basename(path) in (hf.SAFETENSORS_INDEX, hf.BIN_INDEX) or (
            path.endswith((".safetensors.index.json", ".bin.index.json")) and os.path.isfile(path)):
        return "hf" if _names_torch_index(path) else None
    if os.path.isdir(path):
        return None
    if safetensors.is_safetensors(path):
        try:
            return "torch-safetensors" if hf.flavour(path)[0] == "torch" else None
        except Exception:       # noqa: BLE001 - sniffing never fails: the reader says what is wrong
            return None
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return None
    kind = sniff_bytes(head)
    if kind == "zip":
        return "torch-zip" if is_torch_zip(path) else None
    return kind


def _names_torch_index(path: str) -> bool:
    """An index file whose set is not a hub file (the hub reads its own indexes)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f).get("metadata") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return "hubfmt.version" not in meta
