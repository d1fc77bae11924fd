"""Non-tensor checkpoint content (epoch, config, class names, hyper-parameters): normalised to
plain data and stored msgpack-encoded (spec: Non-tensor content)."""
from __future__ import annotations

import base64
from typing import Any

import msgpack
import numpy as np

# Markers for values msgpack has no type for. Plain dicts with one of these keys are decoded back.
NDARRAY = "__ndarray__"
OBJECT = "__object__"


def to_plain(value: Any, _depth: int = 0) -> Any:
    """Turn `value` into msgpack-able plain data. Tuples become lists; numpy scalars Python
    numbers; small arrays {"__ndarray__": ...}; objects we only know by class name (e.g. from a
    restricted unpickler) {"__object__": "module.Class", "state": ...}."""
    if _depth > 100:
        raise ValueError("non-tensor content nested more than 100 levels deep")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        # msgpack holds 64-bit integers only; a pickle can carry any size.
        return {OBJECT: "builtins.int", "repr": str(value)}
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            return [to_plain(v, _depth + 1) for v in value.tolist()]
        a = np.ascontiguousarray(value).reshape(value.shape)
        return {NDARRAY: {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v, _depth + 1) for v in value]
    if isinstance(value, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): to_plain(v, _depth + 1) for k, v in value.items()}
    plain = getattr(value, "__hubfmt_plain__", None)
    if plain is not None:
        return to_plain(plain(), _depth + 1)
    return {OBJECT: f"{type(value).__module__}.{type(value).__qualname__}", "repr": repr(value)[:200]}


def from_plain(value: Any) -> Any:
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {NDARRAY} and isinstance(value[NDARRAY], dict):
            d = value[NDARRAY]
            return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()
        return {k: from_plain(v) for k, v in value.items()}
    return value


def encode(extra: dict) -> str:
    """Plain data -> base64 text for a safetensors metadata value (values must be strings)."""
    return base64.b64encode(msgpack.packb(to_plain(extra), use_bin_type=True)).decode("ascii")


def decode(text: str) -> dict:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    return from_plain(msgpack.unpackb(raw, raw=False, strict_map_key=False))
