"""The JAX/Flax adapter: flax.serialization msgpack state files (`to_bytes`, `flax_model.msgpack`),
read and written with msgpack + numpy only; Linen variables pytrees in memory (from_model/to_model).

>>> from hubfmt.adapters import flax as fa
>>> ckpt = fa.read("flax_model.msgpack")                                   # doctest: +SKIP
>>> fa.write(hubfmt.read("ft.pth"), "ft.msgpack", template="init.msgpack")  # doctest: +SKIP
"""
from __future__ import annotations

from .formats import FORMATS
from .memory import from_model, to_model
from .reader import read, sniff
from .writer import write

NAME = "flax"
FRAMEWORK = "flax"
FRAMEWORK_MODULE = "flax"
PIP_NAME = "flax"

__all__ = ["NAME", "FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model",
           "to_model"]
