"""The OneFlow adapter: `oneflow.save` directories (read and write without OneFlow) and in-memory
OneFlow modules (from_model / to_model, in OneFlow's Python 3.10 environment).

A OneFlow checkpoint is a DIRECTORY. As an output path hubfmt recognises the `.oneflow` suffix
(`hubfmt convert yolo.pt yolo.oneflow`); any other directory name needs `--to oneflow`.

>>> from hubfmt.adapters import oneflow as of
>>> ckpt = of.read("resnet_oneflow")                       # doctest: +SKIP
>>> of.write(ckpt, "copy.oneflow", layout="training")       # doctest: +SKIP
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
