"""The safetensors container: its header, read with every offset checked, and written.

Used by the hub file (hubfmt.io.hubfile) and by every adapter whose format is safetensors with its
own names (MindSpore's, plain Hugging Face files).
"""
from __future__ import annotations

import json
import os
import struct

from hubfmt.errors import FormatError
from hubfmt.format import dtypes
from hubfmt.format.tensor import LazyTensor, region_tensor

MAX_HEADER = 100 * 2**20      # as the safetensors library: a larger header is an attack or damage


def read_header(path: str) -> tuple[dict, int, int]:
    """(header dict, data start offset, file size), every offset checked against the file."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FormatError("not a safetensors file: shorter than its 8-byte header length", path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise FormatError(f"not a safetensors file: header length {n} exceeds the file ({size} bytes)", path)
            raw = f.read(n)
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"safetensors header is not valid JSON: {e}", path) from None
    if not isinstance(header, dict):
        raise FormatError("safetensors header is not a JSON object", path)
    data_start = 8 + n
    spans = []
    for name, d in header.items():
        if name == "__metadata__":
            if not isinstance(d, dict) or not all(isinstance(v, str) for v in d.values()):
                raise FormatError("__metadata__ must map strings to strings", path)
            continue
        try:
            dt = dtypes.from_safetensors(d["dtype"])
            shape = [int(x) for x in d["shape"]]
            b, end = (int(x) for x in d["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"tensor {name!r}: malformed header entry", path) from None
        if dt is None:
            raise FormatError(f"tensor {name!r}: unsupported dtype {d.get('dtype')!r}", path)
        if any(x < 0 for x in shape):
            raise FormatError(f"tensor {name!r}: negative dimension in shape {shape}", path)
        count = 1
        for x in shape:
            count *= x
        if not (0 <= b <= end) or end - b != count * dtypes.itemsize(dt):
            raise FormatError(f"tensor {name!r}: data_offsets {[b, end]} do not fit shape {shape} of {dt}", path)
        problem = dtypes.shape_problem(shape, dt)
        if problem:
            raise FormatError(f"tensor {name!r}: {problem}", path)
        if data_start + end > size:
            raise FormatError(f"tensor {name!r}: data ends at {data_start + end}, past the end of the file ({size} bytes)", path)
        spans.append((b, end, name))
    spans.sort()
    pos = 0
    for b, end, name in spans:
        if b != pos:
            raise FormatError(f"tensor {name!r}: data_offsets overlap or leave a hole at byte {pos}", path)
        pos = end
    return header, data_start, size


def is_safetensors(path: str) -> bool:
    """Whether `path` starts like a safetensors file (cheap: 9 bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        return len(head) == 9 and struct.unpack("<Q", head[:8])[0] <= MAX_HEADER and head[8:9] == b"{"
    except OSError:
        return False


def header_bytes(meta: dict, entries: list[tuple[str, str, tuple]]) -> tuple[bytes, int]:
    """The header of a safetensors file holding `entries` (name, dtype, shape) in that order, and
    the size of its data section. Padded to 8 bytes, as the safetensors library writes it."""
    header: dict = {"__metadata__": meta}
    pos = 0
    for name, dt, shape in entries:
        n = dtypes.itemsize(dt)
        for x in shape:
            n *= x
        header[name] = {"dtype": dtypes.to_safetensors(dt), "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)     # align the data section to 8 bytes, as safetensors does
    return struct.pack("<Q", len(raw)) + raw, pos


def read_metadata(path: str) -> dict:
    """The `__metadata__` of a safetensors file, {} when it has none or is not one (never raises)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER:
                return {}
            meta = json.loads(f.read(n)).get("__metadata__") or {}
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError, struct.error, AttributeError):
        return {}


def tensors(path: str) -> tuple[dict, list[tuple[str, LazyTensor]]]:
    """(metadata, [(name, lazy tensor)] in file order) of a safetensors file, header checked."""
    header, data_start, _ = read_header(path)
    meta = header.pop("__metadata__", {}) or {}
    out = []
    for name, d in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dt = dtypes.from_safetensors(d["dtype"])
        assert dt is not None         # read_header refused unknown dtypes
        out.append((name, region_tensor(path, data_start + int(d["data_offsets"][0]), dt, d["shape"])))
    return meta, out
