"""The safetensors container: its header, read with every offset checked, and written.

Used by the hub file (hubfmt.io.hubfile) and by every adapter whose format is safetensors with its
own names (MindSpore's, plain Hugging Face files).
"""
from __future__ import annotations

import json
import operator
import os
import struct

from hubfmt.format import jsonstream
from hubfmt.errors import FormatError
from hubfmt.format import dtypes
from hubfmt.format.tensor import FileSpan, LazyTensor

MAX_HEADER = 100 * 2**20      # as the safetensors library: a larger header is an attack or damage


def _load(path: str) -> tuple[str, int, int]:
    """(header text, data start offset, file size): the length field checked, the text decoded."""
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
        return raw.decode("utf-8"), 8 + n, size
    except UnicodeDecodeError as e:
        raise FormatError(f"safetensors header is not valid JSON: {e}", path) from None


def _parse(text: str, path: str, take=None) -> dict:
    """The header JSON object; with `take`, each member goes to take(name, value) as it is parsed
    instead of into the result (a header of a million entries is never a million dicts, #13)."""
    try:
        if take is None:
            header = json.loads(text)
        else:
            header = jsonstream.members(text, take)
    except ValueError as e:
        raise FormatError(f"safetensors header is not valid JSON: {e}", path) from None
    if not isinstance(header, dict):
        raise FormatError("safetensors header is not a JSON object", path)
    return header


_ITEMSIZE = {name: dtypes.itemsize(name) for name in dtypes.DTYPES}


class _Entries:
    """The tensor entries of one header, each checked as it is met (`take`), kept as (begin, end,
    name, canonical dtype, shape); `done()` puts them in offset order and checks that the data
    sections tile [0, end of the last) with no overlap and no hole.

    One pass of plain comparisons per entry (a header may list a million tensors, #18); an entry
    that is not the common well-formed case goes through _entry, which names what is wrong."""

    __slots__ = ("data_start", "size", "path", "out", "names", "meta", "shapes")

    def __init__(self, data_start: int, size: int, path: str):
        self.data_start, self.size, self.path = data_start, size, path
        self.out: list[tuple[int, int, str, str, tuple]] = []
        self.names: set[str] = set()
        self.meta: dict = {}
        self.shapes: dict[tuple, tuple] = {}

    def take(self, name: str, d) -> None:
        path = self.path
        if name in self.names:
            raise FormatError(f"tensor {name!r} appears twice in the header", path)
        self.names.add(name)
        if name == "__metadata__":
            if not isinstance(d, dict) or not all(isinstance(v, str) for v in d.values()):
                raise FormatError("__metadata__ must map strings to strings", path)
            self.meta = d
            return
        try:
            dt = _BY_CODE.get(d["dtype"])
            shape = d["shape"]
            b, end = d["data_offsets"]
        except (KeyError, TypeError, ValueError):
            dt = None
        if dt is None or type(shape) is not list or len(shape) > _MAX_RANK or type(b) is not int or type(end) is not int:
            self.out.append(_entry(name, d, self.data_start, self.size, path))
            return
        count = 1
        extent = itemsize = _ITEMSIZE[dt]
        for x in shape:
            if type(x) is not int or x < 0:
                break
            count *= x
            extent *= x or 1
        else:
            if (0 <= b <= end and end - b == count * itemsize and extent < _MAX_EXTENT
                    and self.data_start + end <= self.size):
                t = tuple(shape)
                # one tuple object per distinct shape (a million (1,)s are 48 MB, #13)
                self.out.append((b, end, name, dt, self.shapes.setdefault(t, t)))
                return
        self.out.append(_entry(name, d, self.data_start, self.size, path))

    def done(self) -> list[tuple[int, int, str, str, tuple]]:
        out = self.out
        self.names, self.shapes = set(), {}
        # By offset, stably: tensors at one offset (empty ones beside another) keep the header's
        # order, as readers have always given them.
        out.sort(key=_begin)
        pos, last = 0, -1       # end of the data so far; where the last non-empty tensor begins
        for b, end, name, _, _ in out:
            if b != pos and not (b == end == last):      # an empty tensor may sit where one begins
                raise FormatError(f"tensor {name!r}: data_offsets overlap or leave a hole at byte {pos}", self.path)
            if end != b:
                pos, last = end, b
        return out


_BY_CODE, _MAX_RANK, _MAX_EXTENT = dtypes._BY_CODE, dtypes.MAX_RANK, dtypes.MAX_EXTENT_BYTES
_begin = operator.itemgetter(0)


def _entry(name: str, d, data_start: int, size: int, path: str) -> tuple[int, int, str, str, tuple]:
    """One header entry checked field by field (the uncommon forms: integral floats, strings of
    digits), or the FormatError saying what is wrong with it."""
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
    return b, end, name, dt, tuple(shape)


def read_header(path: str) -> tuple[dict, int, int]:
    """(header dict, data start offset, file size), every offset checked against the file."""
    text, data_start, size = _load(path)
    header = _parse(text, path)
    check = _Entries(data_start, size, path)
    for name, d in header.items():
        check.take(name, d)
    check.done()
    return header, data_start, size


def read_tensors(path: str) -> tuple[dict, list[tuple[str, LazyTensor]]]:
    """(metadata, [(name, lazy tensor)] in file order) of a safetensors file, header checked:
    what readers of whole files use (entries are checked as they are parsed, and kept compact)."""
    text, data_start, size = _load(path)
    check = _Entries(data_start, size, path)
    _parse(text, path, check.take)
    del text
    over = LazyTensor.over_span         # dtype and shape checked by _Entries
    return check.meta, [(name, over(FileSpan(path, data_start + b, end - b), dt, shape))
                        for b, end, name, dt, shape in check.done()]


def is_safetensors(path: str) -> bool:
    """Whether `path` starts like a safetensors file (cheap: 9 bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        return len(head) == 9 and struct.unpack("<Q", head[:8])[0] <= MAX_HEADER and head[8:9] == b"{"
    except OSError:
        return False


_enc = json.encoder.encode_basestring_ascii      # what json.dumps uses for a str (C)


def header_bytes(meta: dict, entries: list[tuple[str, str, tuple]]) -> tuple[bytes, int]:
    """The header of a safetensors file holding `entries` (name, dtype, shape) in that order, and
    the size of its data section. Padded to 8 bytes, as the safetensors library writes it.

    The text is exactly json.dumps({"__metadata__": meta, name: {...}, ...}, separators=(",", ":")),
    written entry by entry: no dict per tensor, and one copy of a large header at a time (#13)."""
    pieces = ['{"__metadata__":' + json.dumps(meta, separators=(",", ":"))]
    pos = 0
    # (dtype, shape) -> its entry's middle and byte count: checkpoints repeat a few shapes over
    # many tensors (bounded: a header of a million distinct shapes keeps no million fragments).
    seen: dict[tuple, tuple[str, int]] = {}
    for name, dt, shape in entries:
        known = seen.get((dt, shape))
        if known is None:
            known = _entry_middle(dt, shape)
            if len(seen) < 65536:
                seen[(dt, shape)] = known
        middle, n = known
        pieces.append(f'{_enc(name)}:{{{middle}"data_offsets":[{pos},{pos + n}]}}')
        pos += n
    text = ",".join(pieces) + "}"
    del pieces
    pad = -len(text) % 8                 # ASCII only (ensure_ascii): characters are bytes
    raw = text.encode("ascii")
    del text
    # the data section starts 8-byte aligned, as safetensors writes it
    return b"".join((struct.pack("<Q", len(raw) + pad), raw, b" " * pad)), pos


def _entry_middle(dt: str, shape: tuple) -> tuple[str, int]:
    """'"dtype":"F32","shape":[2,3],' and the byte count of a `dt` tensor of `shape`."""
    n = _ITEMSIZE[dt]
    for x in shape:
        n *= x
    dims = ",".join(map(str, shape)) if all(type(x) is int for x in shape) else \
        json.dumps(list(shape), separators=(",", ":"))[1:-1]
    return f'"dtype":"{dtypes.to_safetensors(dt)}","shape":[{dims}],', n


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
