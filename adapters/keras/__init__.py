"""The Keras adapter: Keras 3 `.weights.h5` files and `.keras` archives (read and written) and
legacy Keras 2 `.h5` files (read), without Keras (h5py and numpy only); live Keras models with it.
Its FRAMEWORK is tensorflow: `--from/--to tensorflow` covers these files and TF checkpoints.

Canonical names: list items of Functional/Sequential models (and nested models) are named by
their layer names (`head.d1.weight`), attributes of subclassed models by attribute (`conv1.weight`);
an RNN's cell belongs to its layer (`lstm.weight_ih_l0`). `original_name` keeps the h5 path of
each variable (`layers/conv2d/vars/0`), which the writer follows when it can.

>>> from hubfmt.adapters import keras as ka
>>> ckpt = ka.read("model.weights.h5", template="model.keras")        # doctest: +SKIP
>>> ka.write(ckpt, "out.weights.h5", template="target.keras")         # doctest: +SKIP
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
