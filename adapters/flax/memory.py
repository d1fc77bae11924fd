"""In-memory Flax variables (a pytree of nested dicts: {'params': ..., 'batch_stats': ...} or a
bare params tree) <-> canonical Checkpoint. Needs jax only for to_model's arrays."""
from __future__ import annotations

import numpy as np

from hubfmt.sdk import Checkpoint, ConversionError, LazyTensor, MissingFrameworkError, Report, SourceInfo, dtypes

from . import names
from .reader import get, to_checkpoint
from .writer import match


def _shape(value):
    return tuple(value.shape) if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, dict) \
        else None


def _as_tensor(value) -> LazyTensor:
    arr = np.asarray(value)
    if arr.dtype.name == "bfloat16":         # ml_dtypes' bfloat16: carried as its bits
        return LazyTensor.from_array(np.ascontiguousarray(arr).view(np.uint16), "bfloat16")
    return LazyTensor.from_array(np.ascontiguousarray(arr))


def _unfreeze(variables):
    if hasattr(variables, "unfreeze"):
        return variables.unfreeze()
    return variables


def from_model(variables) -> Checkpoint:
    """A Linen variables tree (or params tree) as a Checkpoint.

    >>> ckpt = from_model(model.init(key, x))          # doctest: +SKIP
    """
    tree = _unfreeze(variables)
    if not isinstance(tree, dict):
        raise ConversionError(f"expected a dict of variables, got {type(variables).__name__}")
    ckpt = to_checkpoint(tree, _shape, _as_tensor, SourceInfo("flax", "", type(variables).__name__, "flax-variables"))
    ckpt.extra = {"flax": {"collections": names.is_variables(tree)}}
    return ckpt


def to_model(ckpt: Checkpoint, variables, *, strict: bool = True) -> Report:
    """Put `ckpt`'s tensors into the variables tree `variables` (nested dicts, changed in place:
    each array replaced by a jax array of the same shape and dtype).

    >>> variables = model.init(key, x); to_model(hubfmt.read("ft.pth"), variables)   # doctest: +SKIP
    """
    try:
        import jax.numpy as jnp
    except ImportError:
        raise MissingFrameworkError("jax", "jax", "Flax variables") from None
    if not isinstance(variables, dict):
        raise ConversionError("to_model needs a mutable dict of variables (unfreeze a FrozenDict first)")
    report = Report(stage="write")
    pairs, _ = match(ckpt, names.leaves(variables, _shape), report, strict)
    n = 0
    for leaf, src in pairs:
        if src is None:
            continue
        old = get(variables, leaf.path)
        arr = names.from_canonical(ckpt[src].tensor.load(), leaf)
        if ckpt[src].tensor.dtype == "bfloat16":
            arr = dtypes.convert(arr, "bfloat16", "float32")
        parent = get(variables, leaf.path[:-1])
        parent[leaf.path[-1]] = jnp.asarray(arr, dtype=old.dtype)
        n += 1
        if src != "/".join(leaf.path):
            report.renamed(src, "/".join(leaf.path))
    report.tensors_in = len(ckpt)
    report.tensors_out = n
    return report
