"""Canonical dtype names and the few conversions numpy cannot do by itself (bfloat16).

numpy has no bfloat16: hubfmt carries bfloat16 data as uint16 arrays holding the raw bits, with
the dtype *name* "bfloat16" kept beside them (see LazyTensor.dtype). float8 (e4m3fn, e5m2) rides
the same way in uint8 arrays: it is stored as it is (quantized weights with their scale tensors;
widening adds nothing), and converted only when asked, with ml_dtypes.
"""
from __future__ import annotations

import numpy as np

# canonical name -> (safetensors code, numpy dtype holding the bytes)
_TABLE: dict[str, tuple[str, np.dtype]] = {
    "float64": ("F64", np.dtype("<f8")),
    "float32": ("F32", np.dtype("<f4")),
    "float16": ("F16", np.dtype("<f2")),
    "bfloat16": ("BF16", np.dtype("<u2")),
    "int64": ("I64", np.dtype("<i8")),
    "int32": ("I32", np.dtype("<i4")),
    "int16": ("I16", np.dtype("<i2")),
    "int8": ("I8", np.dtype("i1")),
    "uint64": ("U64", np.dtype("<u8")),
    "uint32": ("U32", np.dtype("<u4")),
    "uint16": ("U16", np.dtype("<u2")),
    "uint8": ("U8", np.dtype("u1")),
    "bool": ("BOOL", np.dtype("?")),
    "complex64": ("C64", np.dtype("<c8")),
    "float8_e4m3fn": ("F8_E4M3", np.dtype("u1")),
    "float8_e5m2": ("F8_E5M2", np.dtype("u1")),
}
# Floating dtypes the hub widens to float32 by default (spec 3.3); float8 is kept as it is.
FLOATING = frozenset({"float64", "float32", "float16", "bfloat16"})
FLOAT8 = frozenset({"float8_e4m3fn", "float8_e5m2"})
_RAW_BITS = {"bfloat16"} | FLOAT8        # never guessed from a numpy dtype
DTYPES = frozenset(_TABLE)
_BY_CODE = {code: name for name, (code, _) in _TABLE.items()}


def storage_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype whose bytes hold a tensor of dtype `name`."""
    return _TABLE[name][1]


def itemsize(name: str) -> int:
    return _TABLE[name][1].itemsize


# What numpy can hold (and so what a reader may promise): at most 32 dimensions, and the product
# of the non-zero ones times the item size below 2**62 bytes, even when another dimension is 0
# (numpy refuses np.zeros((0, 2**62, 2**62)), which an empty tensor's loader would make).
MAX_RANK = 32
MAX_EXTENT_BYTES = 2**62


def shape_problem(shape, name: str) -> str | None:
    """Why a tensor of `shape` and dtype `name` cannot exist in memory, or None."""
    dims = list(shape)
    if len(dims) > MAX_RANK:
        return f"shape {dims[:8]}... has {len(dims)} dimensions, more than {MAX_RANK}"
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        return f"shape {dims} has a negative or non-integer dimension"
    n = itemsize(name)
    for d in dims:
        n *= d or 1
        if n >= MAX_EXTENT_BYTES:
            return f"shape {dims} of {name} spans more than 2**62 bytes (even counting only its non-zero dimensions)"
    return None


def to_safetensors(name: str) -> str:
    return _TABLE[name][0]


def from_safetensors(code: str) -> str | None:
    return _BY_CODE.get(code)


def name_of(dtype: np.dtype) -> str:
    """Canonical name of a numpy dtype (uint16 stays uint16: bfloat16 is never guessed)."""
    dt = np.dtype(dtype)
    for name, (_, st) in _TABLE.items():
        if name not in _RAW_BITS and st.kind == dt.kind and st.itemsize == dt.itemsize:
            return name
    raise ValueError(f"unsupported dtype {dt}")


def narrowing_changes(before: np.ndarray, after: np.ndarray) -> int:
    """How many values a float64 -> float32 narrowing (`before` -> `after`, same shape) changed
    beyond rounding: a finite value become inf, a non-zero become zero, a NaN whose bits do
    not come back (its payload lost)."""
    a = np.asarray(before, dtype="<f8").reshape(-1)
    b = np.asarray(after).reshape(-1)
    if b.dtype != np.dtype("<f4"):
        raise ValueError("narrowing_changes compares float64 with float32")
    overflow = np.isinf(b) & np.isfinite(a)
    flushed = (b == 0) & (a != 0)
    nan = np.isnan(a)
    changed = 0
    if nan.any():
        changed = int(np.count_nonzero(b[nan].astype("<f8").view("<u8") != a[nan].view("<u8")))
    return int(np.count_nonzero(overflow | flushed)) + changed


def convert(array: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert the data of `array` (holding dtype `src`) to dtype `dst`, little-endian.

    float32 -> bfloat16 rounds to nearest even, so a bfloat16 -> float32 -> bfloat16 round trip is
    exact. Returns `array` itself when nothing changes.
    """
    if src == dst:
        return _as_storage(array, dst)
    shape = np.shape(array)
    # 0-d arrays would go through numpy's scalar casting rules (uint32 << 16 -> int64): work 1-d.
    array = np.asarray(array).reshape(-1)
    if src in FLOAT8 or dst in FLOAT8:
        return _convert_float8(array, src, dst).reshape(shape)
    if src == "bfloat16":
        wide = (array.astype("<u4") << 16).view("<f4")
        out = wide if dst == "float32" else wide.astype(storage_dtype(dst))
    elif dst == "bfloat16":
        f32 = np.ascontiguousarray(array, dtype="<f4").view("<u4")
        # round to nearest even; NaN stays NaN: truncated, so a bfloat16 NaN (signalling ones too)
        # comes back bit for bit; the quiet bit is set only when truncation would leave no payload.
        rounded = ((f32 + 0x7FFF + ((f32 >> 16) & 1)) >> 16).astype("<u2")
        nan = np.isnan(f32.view("<f4"))
        if nan.any():
            top = (f32[nan] >> 16).astype("<u2")
            rounded[nan] = np.where(top & 0x007F, top, top | 0x0040)
        out = rounded
    else:
        # float64 -> float32 past the range is inf: the hub writer reports every narrowing cast.
        with np.errstate(over="ignore", invalid="ignore"):   # NaN casts warn "invalid value"
            out = array.astype(storage_dtype(dst), copy=False)
    return _as_storage(out, dst).reshape(shape)


def _as_storage(array: np.ndarray, dtype: str) -> np.ndarray:
    sd = storage_dtype(dtype)
    return array if array.dtype == sd else array.astype(sd)


def _convert_float8(array: np.ndarray, src: str, dst: str) -> np.ndarray:
    try:
        import ml_dtypes
    except ImportError:
        raise ValueError(f"converting {src} to {dst} needs ml_dtypes (pip install ml_dtypes)") from None
    kinds = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2}
    if src in FLOAT8:
        wide = np.asarray(array).view(kinds[src]).astype(np.float32)
        return convert(wide, "float32", dst) if dst != "float32" else wide
    f32 = convert(array, src, "float32") if src != "float32" else np.asarray(array, dtype="<f4")
    return f32.astype(kinds[dst]).view(np.uint8)
