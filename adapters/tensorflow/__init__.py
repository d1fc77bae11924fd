"""The TensorFlow adapter: TF1 name-based and TF2 object-based checkpoint bundles (prefix.index +
prefix.data-*), read and written without TensorFlow; in-memory TF variables with it. Keras files
and models are the keras adapter's (hubfmt.adapters.keras); `--from/--to tensorflow` covers both.

>>> from hubfmt.adapters import tensorflow as tfa
>>> ckpt = tfa.read("train/model.ckpt-1000", prefer_ema=True)         # doctest: +SKIP
>>> tfa.write(ckpt, "export/model.ckpt", template="target/ckpt-1")   # doctest: +SKIP
"""
from __future__ import annotations

from .formats import FORMATS, FRAMEWORK, FRAMEWORK_MODULE, NAME, PIP_NAME, sniff
from .memory import from_model, to_model
from .reader import from_listing, read
from .writer import write

__all__ = ["NAME", "FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model",
           "to_model", "from_listing"]
