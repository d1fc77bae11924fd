"""CRC-32C (Castagnoli), the checksum of LevelDB tables and TensorFlow checkpoint bundles.

Computed by google-crc32c's C extension (hardware CRC32 instructions, several GB/s) when it is
installed, as it is with hubfmt. Without it, a numpy implementation gives the same values at a few
hundred MB/s, so a missing or unbuildable extension costs speed, never correctness.

A CRC is sequential, so one stream runs at Python speed (a table lookup per byte). For long inputs
we cut the data into many equal lanes, run all lanes at once as numpy vectors (slicing-by-4: one
step eats four bytes per lane) and chain the lane CRCs with one precomputed linear map, "shift the
register over L zero bytes", applied as four 256-entry tables. That gives hundreds of MB/s.

>>> hex(crc32c(b"123456789"))
'0xe3069283'
>>> unmask(mask(0x12345678)) == 0x12345678
True
"""
from __future__ import annotations

import numpy as np

_POLY = 0x82F63B78            # reflected Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8
_LANES = 16384                # vector width for long inputs
_LONG = 1 << 16               # inputs from this size use lanes


def _byte_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    return t


_T0 = _byte_table()
# slicing-by-4 tables: _TS[k][b] is the register after byte b followed by k zero bytes
_TS = [_T0]
for _k in range(3):
    _prev = _TS[-1]
    _TS.append((_T0[_prev & 0xFF] ^ (_prev >> 8)).astype(np.uint32))
_T0_LIST = _T0.tolist()
# The same step with two 65536-entry tables: half the gathers (the cost of a vectorised CRC).
_V16 = np.arange(1 << 16, dtype=np.uint32)
_T16_LO = (_TS[3][_V16 & 0xFF] ^ _TS[2][_V16 >> 8]).astype(np.uint32)
_T16_HI = (_TS[1][_V16 & 0xFF] ^ _TS[0][_V16 >> 8]).astype(np.uint32)
del _V16


def _raw_bytes(data: bytes | memoryview, reg: int) -> int:
    """Advance the (unconditioned) register over `data`, one byte at a time."""
    t = _T0_LIST
    for b in bytes(data):
        reg = t[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _shift_tables(nbytes: int) -> list[np.ndarray]:
    """Tables for the linear map reg -> register after `nbytes` zero bytes (from state reg)."""
    images = _lanes(np.zeros((32, nbytes), dtype=np.uint8), np.array([1 << b for b in range(32)], dtype=np.uint32))
    tables = []
    for byte_pos in range(4):
        vals = np.arange(256, dtype=np.uint32)
        acc = np.zeros(256, dtype=np.uint32)
        for b in range(8):
            acc ^= np.where((vals >> b) & 1, images[byte_pos * 8 + b], np.uint32(0)).astype(np.uint32)
        tables.append(acc)
    return tables


def _lanes(block: np.ndarray, regs: np.ndarray) -> np.ndarray:
    """Registers of each row of `block` (uint8 [lanes, L], L % 4 == 0) from starting `regs`."""
    # Transposed so that step j reads one contiguous row (word j of every lane).
    words = np.ascontiguousarray(np.ascontiguousarray(block).view("<u4").T)
    lo, hi = _T16_LO, _T16_HI
    reg = regs.astype(np.uint32).copy()
    low = np.empty_like(reg)
    for row in words:
        reg ^= row
        np.bitwise_and(reg, 0xFFFF, out=low)
        reg >>= 16
        reg = lo.take(low) ^ hi.take(reg)
    return reg


_SHIFT_CACHE: dict[int, list[np.ndarray]] = {}


def _raw(data, reg: int) -> int:
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    n = buf.size
    if n < _LONG:
        return _raw_bytes(buf.tobytes(), reg)
    # Lane length a power of two (so few shift tables are ever built), at least 64 bytes, giving
    # up to 2*_LANES lanes.
    lane_len = 1 << (max(n // _LANES, 64).bit_length() - 1)
    lanes = n // lane_len
    body = lane_len * lanes
    lane_regs = _lanes(buf[:body].reshape(lanes, lane_len), np.zeros(lanes, np.uint32))
    tables = _SHIFT_CACHE.get(lane_len)
    if tables is None:
        tables = _SHIFT_CACHE.setdefault(lane_len, _shift_tables(lane_len))
    s0, s1, s2, s3 = (t.tolist() for t in tables)
    for lr in lane_regs.tolist():
        reg = (s0[reg & 0xFF] ^ s1[(reg >> 8) & 0xFF] ^ s2[(reg >> 16) & 0xFF] ^ s3[reg >> 24]) ^ lr
    return _raw_bytes(buf[body:].tobytes(), reg)


def _numpy_crc32c(data, crc: int = 0) -> int:
    return _raw(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


try:
    # The extension module itself: the package's __init__ would silently fall back to a pure-Python
    # CRC (about 1 MB/s) where ours is far faster.
    from google_crc32c import _crc32c as _c
except ImportError:            # pragma: no cover - exercised where the wheel is missing
    _c = None

IMPLEMENTATION = "c" if _c is not None else "numpy"


def _c_crc32c(data, crc: int = 0) -> int:
    # The extension takes bytes or a contiguous numpy array (its argument parser refuses
    # memoryview and bytearray, which need a buffer release); a uint8 view is free.
    if not isinstance(data, bytes):
        data = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
    return _c.extend(crc, data)


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C of `data` (bytes-like or numpy array), continuing from `crc` (a previous result)."""
    if _c is not None:
        return _c_crc32c(data, crc)
    return _numpy_crc32c(data, crc)


def mask(crc: int) -> int:
    """LevelDB's masked form, stored wherever a CRC may itself be checksummed."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
