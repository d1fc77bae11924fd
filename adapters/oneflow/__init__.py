"""The OneFlow adapter: `oneflow.save` directories (read and write without OneFlow) and in-memory
OneFlow modules (from_model / to_model, in OneFlow's Python 3.10 environment).

A OneFlow checkpoint is a DIRECTORY. As an output path hubfmt recognises the `.oneflow` suffix
(`hubfmt convert yolo.pt yolo.oneflow`); any other directory name needs `--to oneflow`.

>>> from hubfmt.adapters import oneflow as of
>>> ckpt = of.read("resnet_oneflow")                       # doctest: +SKIP
>>> of.write(ckpt, "copy.oneflow", layout="training")       # doctest: +SKIP
"""
from __future__ import annotations

from .formats import FORMATS, FRAMEWORK, FRAMEWORK_MODULE, NAME, PIP_NAME, sniff
from .memory import from_model, to_model
from .reader import read
from .writer import write


__all__ = ["NAME", "FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model",
           "to_model"]
