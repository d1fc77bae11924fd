"""The PyTorch adapter: torch.save files (zip and legacy) read and written without torch, and
in-memory nn.Modules / state dicts with it.

- read(path, prefer_ema=False): bare state dicts, training checkpoints nesting them (state_dict,
  model, module, ema, model_ema...), pickled nn.Modules (YOLOv5 style) rebuilt without their source
  and without running the pickle, fp16/bf16, tied and non-contiguous tensors.
- write(ckpt, path, layout="state_dict"|"training", restore_dtype=True): a zip file that
  torch.load(path, weights_only=True) loads and load_state_dict(strict=True) accepts.
- Hugging Face style (hf.py): plain safetensors with torch names, model directories and shard
  indexes (safetensors or pytorch_model.bin) read; write_hf writes a from_pretrained directory,
  write_safetensors a plain torch safetensors file.

>>> from hubfmt.adapters import torch as pt
>>> ckpt = pt.read("model.pth")                 # doctest: +SKIP
>>> pt.write(ckpt, "copy.pth")                  # doctest: +SKIP
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from hubfmt.sdk import lazy_exports

from .formats import FORMATS, FRAMEWORK, FRAMEWORK_MODULE, NAME, PIP_NAME, sniff

if TYPE_CHECKING:       # what the names are; at run time each is imported when first used
    from .hf import write_directory as write_hf
    from .hf import write_plain as write_safetensors
    from .memory import from_model, to_model
    from .reader import read
    from .writer import write

# read, write, from_model, to_model load on first use: see lazy_exports
__getattr__ = lazy_exports(__name__, also={"write_hf": "hf:write_directory", "write_safetensors": "hf:write_plain"})

__all__ = ["NAME", "FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model",
           "to_model", "write_hf", "write_safetensors"]
