"""The checksums native formats store beside tensor bytes, computed the same way everywhere.

A `Checksum` travels with a tensor's byte range (FileSpan.checksum): whichever way the bytes
leave the source (loaded into memory, or copied file to file in the kernel), the engine verifies
them against it once, so a corrupt or substituted source fails every writer alike.

    crc32   zlib's CRC-32 (zip members: torch files, .keras archives; MindSpore's crc_num)
    crc32c  CRC-32C, Castagnoli (TensorFlow bundles, LevelDB tables), by google-crc32c's C extension

>>> hex(compute("crc32c", b"123456789")), hex(compute("crc32", b"123456789"))
('0xe3069283', '0xcbf43926')
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import google_crc32c
import numpy as np


def _crc32c(data, value: int = 0) -> int:
    # The extension takes bytes or a contiguous array; its argument parser refuses memoryview and
    # bytearray (a writable buffer it would have to release), so those go as a free uint8 view.
    if not isinstance(data, bytes):
        arr = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
        data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return google_crc32c.extend(value, data)


def _crc32(data, value: int = 0) -> int:
    return zlib.crc32(data, value)


ALGORITHMS = {"crc32": _crc32, "crc32c": _crc32c}


@dataclass(frozen=True, slots=True)      # slots: one per stored tensor of a torch or MindSpore file
class Checksum:
    """The checksum a format stores for exactly the bytes of one FileSpan."""

    algorithm: str      # a key of ALGORITHMS
    value: int

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown checksum algorithm {self.algorithm!r}")


def compute(algorithm: str, data, value: int = 0) -> int:
    """The checksum of `data` (any buffer), continuing from `value`."""
    return ALGORITHMS[algorithm](data, value)


def updater(algorithm: str):
    """`update(piece, value) -> value` for folding a checksum over pieces (hubfmt.io.stream.fold_region)."""
    return ALGORITHMS[algorithm]
