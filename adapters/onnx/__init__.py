"""The ONNX adapter: the initializers of `.onnx` models (inline and external data), read and
written without onnx; writing takes an existing model as template and keeps its graph.
In memory (from_model/to_model) an `onnx.ModelProto`.

>>> from hubfmt.adapters import onnx as onnxa
>>> ckpt = onnxa.read("resnet18.onnx")                      # torch state-dict names  # doctest: +SKIP
>>> onnxa.write(hubfmt.read("ft.pth"), "ft.onnx", template="resnet18.onnx")           # doctest: +SKIP
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from hubfmt.sdk import lazy_exports

from .formats import FORMATS

if TYPE_CHECKING:       # what the names are; at run time each is imported when first used
    from .memory import from_model, to_model
    from .reader import read, sniff
    from .writer import write

# read, write, from_model, to_model load on first use: see lazy_exports
__getattr__ = lazy_exports(__name__, also={"sniff": "reader"})

NAME = "onnx"
FRAMEWORK = "onnx"
FRAMEWORK_MODULE = "onnx"
PIP_NAME = "onnx"

__all__ = ["NAME", "FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model",
           "to_model"]
