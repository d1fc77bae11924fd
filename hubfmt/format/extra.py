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
# Nesting of non-tensor content, the same on write (to_plain) and read (from_plain).
MAX_DEPTH = 100


def to_plain(value: Any, _depth: int = 0) -> Any:
    """Turn `value` into msgpack-able plain data. Tuples become lists; numpy scalars Python
    numbers; small arrays {"__ndarray__": ...}; objects we only know by class name (e.g. from a
    restricted unpickler) {"__object__": "module.Class", "state": ...}."""
    if _depth > MAX_DEPTH:
        raise ValueError(f"non-tensor content nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        # msgpack holds 64-bit integers only; a pickle can carry any size. Beyond Python's
        # 4300-digit limit for str(int), hex (which has no limit) keeps it exactly.
        if value.bit_length() > 14_000:
            return {OBJECT: "builtins.int", "hex": hex(value)}
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


def from_plain(value: Any, _depth: int = 0) -> Any:
    """Plain data (as decoded from msgpack) -> values, arrays rebuilt. Nesting is limited as on
    write (MAX_DEPTH levels; ValueError beyond), so what hubfmt reads it can also write."""
    if _depth > MAX_DEPTH:
        raise ValueError(f"non-tensor content nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, list):
        return [from_plain(v, _depth + 1) for v in value]
    if isinstance(value, dict):
        if set(value) == {NDARRAY} and isinstance(value[NDARRAY], dict):
            d = value[NDARRAY]
            dt = np.dtype(d["dtype"])
            if dt.hasobject:
                raise ValueError("an object array in non-tensor content")
            return np.frombuffer(d["data"], dtype=dt).reshape(d["shape"]).copy()
        return {k: from_plain(v, _depth + 1) for k, v in value.items()}
    return value


def encode(extra: dict) -> str:
    """Plain data -> base64 text for a safetensors metadata value (values must be strings)."""
    return base64.b64encode(msgpack.packb(to_plain(extra), use_bin_type=True)).decode("ascii")


def decode(text: str) -> dict:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    # msgpack's own nesting limit is far deeper than MAX_DEPTH; from_plain checks ours
    return from_plain(msgpack.unpackb(raw, raw=False, strict_map_key=False))
