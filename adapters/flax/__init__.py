"""The JAX/Flax adapter: flax.serialization msgpack state files (`to_bytes`, `flax_model.msgpack`),
read and written with msgpack + numpy only; Linen variables pytrees in memory (from_model/to_model).

>>> from hubfmt.adapters import flax as fa
>>> ckpt = fa.read("flax_model.msgpack")                                   # doctest: +SKIP
>>> fa.write(hubfmt.read("ft.pth"), "ft.msgpack", template="init.msgpack")  # doctest: +SKIP
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

NAME = "flax"
FRAMEWORK = "flax"
FRAMEWORK_MODULE = "flax"
PIP_NAME = "flax"

__all__ = ["NAME", "FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model",
           "to_model"]
