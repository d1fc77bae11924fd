"""The MXNet adapter: `.params` NDArray-list files (Gluon save_parameters, export / save_checkpoint
with `-symbol.json`), read and written without MXNet; Gluon Blocks in memory (from_model/to_model).

>>> from hubfmt.adapters import mxnet as mxa
>>> ckpt = mxa.read("dpn68-0000.params")                 # takes dpn68-symbol.json beside it  # doctest: +SKIP
>>> mxa.write(ckpt, "resnet-0000.params", template="resnet_mx-symbol.json")               # doctest: +SKIP
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
