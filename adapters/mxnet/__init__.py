"""The MXNet adapter: `.params` NDArray-list files (Gluon save_parameters, export / save_checkpoint
with `-symbol.json`), read and written without MXNet; Gluon Blocks in memory (from_model/to_model).

>>> from hubfmt.adapters import mxnet as mxa
>>> ckpt = mxa.read("dpn68-0000.params")                 # takes dpn68-symbol.json beside it  # doctest: +SKIP
>>> mxa.write(ckpt, "resnet-0000.params", template="resnet_mx-symbol.json")               # doctest: +SKIP
"""
from __future__ import annotations

from hubfmt.registry import NativeFormat

from .memory import from_model, to_model
from .reader import read, sniff
from .writer import write

FRAMEWORK = "mxnet"
FRAMEWORK_MODULE = "mxnet"
PIP_NAME = "mxnet"
FORMATS = (
    NativeFormat("mxnet-params", (".params",),
                 "NDArray list (mx.nd.save): Gluon save_parameters, or export/save_checkpoint arg:/aux: with "
                 "prefix-symbol.json (written when a graph is known)"),
)

__all__ = ["FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model", "to_model"]
