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

from typing import TYPE_CHECKING

from hubfmt.sdk import lazy_exports

from .formats import FORMATS, FRAMEWORK, FRAMEWORK_MODULE, NAME, PIP_NAME, sniff

if TYPE_CHECKING:       # what the names are; at run time each is imported when first used
    from .memory import from_model, to_model
    from .reader import read
    from .writer import write

# read, write, from_model, to_model load on first use: see lazy_exports
__getattr__ = lazy_exports(__name__)

__all__ = ["NAME", "FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model",
           "to_model"]
