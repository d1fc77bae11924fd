"""The MindSpore adapter: `.ckpt` files (protobuf) and MindSpore's safetensors checkpoints, read
and written without MindSpore; in-memory Cells (from_model / to_model) with MindSpore.

Names keep MindSpore's cell path and map only the role (`0._bn1.gamma` <-> `0._bn1.weight`,
`moving_variance` <-> `running_var`). Exports can follow a target's names with `template=`
(a .ckpt, a Cell, or a names/shapes listing). As an output, `.ckpt` selects this adapter;
a `.safetensors` path gives a MindSpore safetensors file only with `--to mindspore`.

>>> from hubfmt.adapters import mindspore as ms_adapter
>>> ckpt = ms_adapter.read("efficientnet.ckpt")                               # doctest: +SKIP
>>> ms_adapter.write(ckpt, "copy.ckpt", template="target_net.ckpt")            # doctest: +SKIP
"""
from __future__ import annotations

from hubfmt.registry import NativeFormat

from .memory import from_model, to_model
from .reader import CKPT, SAFETENSORS, read, sniff
from .writer import write

FRAMEWORK = "mindspore"
FRAMEWORK_MODULE = "mindspore"
PIP_NAME = "mindspore"
FORMATS = (
    NativeFormat(CKPT, (".ckpt",), "mindspore.save_checkpoint protobuf (Checkpoint/Value/TensorProto), incl. "
                 "sliced tensors > 512 MiB and the crc_num trailer; not encrypted files"),
    NativeFormat(SAFETENSORS, (".safetensors",), "save_checkpoint(format=\"safetensors\"): safetensors with "
                 "MindSpore names, metadata {\"format\": \"ms\"}"),
)

__all__ = ["FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model", "to_model"]
