"""The TensorFlow adapter: TF1 name-based and TF2 object-based checkpoint bundles (prefix.index +
prefix.data-*), read and written without TensorFlow; in-memory TF variables with it. Keras files
and models are the keras adapter's (hubfmt.adapters.keras); `--from/--to tensorflow` covers both.

>>> from hubfmt.adapters import tensorflow as tfa
>>> ckpt = tfa.read("train/model.ckpt-1000", prefer_ema=True)         # doctest: +SKIP
>>> tfa.write(ckpt, "export/model.ckpt", template="target/ckpt-1")   # doctest: +SKIP
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from hubfmt.sdk import lazy_exports

from .formats import FORMATS, FRAMEWORK, FRAMEWORK_MODULE, NAME, PIP_NAME, sniff

if TYPE_CHECKING:       # what the names are; at run time each is imported when first used
    from .memory import from_model, to_model
    from .reader import from_listing, read
    from .writer import write

# read, write, from_model, to_model load on first use: see lazy_exports
__getattr__ = lazy_exports(__name__, also={"from_listing": "reader"})

__all__ = ["NAME", "FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model",
           "to_model", "from_listing"]
