"""Alignment targets: what the destination expects, as a Checkpoint of names and shapes.

A template is one of
- a Checkpoint in memory (an adapter's `from_model(initialised_model)` gives one);
- a checkpoint file of any supported format, read lazily (`hubfmt.read`: names, shapes and infos
  only; no tensor data is read);
- a listing: JSON (the output of `hubfmt inspect --json`, `{"name": [shape...]}`, or a list of
  `{"name":..., "shape": [...]}`), or text with one `name [shape [dtype]]` per line, shape written
  as `64x3x3x3`, `[64, 3, 3, 3]` or `(64,3,3,3)`, a 0-d tensor as `scalar`, `[]` or nothing (what
  `hubfmt inspect` prints); `#` starts a comment.

A listing's tensors carry no data (loading one is an error); kinds are inferred from shapes. Its
names are canonical (torch-style) unless the template's framework is given: then the names are
that framework's own (TF `bert/encoder/layer_0/attention/self/query/kernel` [in, out]) and the
framework's adapter names them, as its reader would name the same variables (kinds, layouts,
canonical shapes); `load_target`'s `native_listing` does that without this package importing an
adapter.
"""
from __future__ import annotations

import json
import os
import re

from hubfmt.format import dtypes
from hubfmt.format.checkpoint import Checkpoint, TensorInfo
from hubfmt.format.tensor import LazyTensor
from hubfmt.errors import ConversionError, FormatError

LISTING_SUFFIXES = (".json", ".txt", ".list")


def _no_data(name: str):
    def load():
        raise ConversionError(f"{name} comes from a names+shapes listing and has no data")
    return load


def _shape(value, where: str, path: str) -> tuple[int, ...]:
    if isinstance(value, str):
        if value.strip() in ("scalar", ""):
            return ()
        text = value.strip().strip("[]()")
        parts = [p for p in re.split(r"[x,\s]+", text) if p]
        value = parts
    try:
        shape = tuple(int(d) for d in value)
    except (TypeError, ValueError):
        raise FormatError(f"{where}: not a shape: {value!r}", path) from None
    if any(d < 0 for d in shape):
        raise FormatError(f"{where}: negative dimension in {list(shape)}", path)
    return shape


def listing_checkpoint(rows, path: str = "<listing>") -> Checkpoint:
    """A data-less Checkpoint from (name, shape, kind, role, dtype) rows (kind/role/dtype may be "")."""
    ckpt = Checkpoint()
    ckpt.source.file = path
    ckpt.source.format = "listing"
    for name, shape, kind, role, dtype in rows:
        if name in ckpt:
            raise FormatError(f"tensor {name!r} is listed twice", path)
        tensor = LazyTensor(shape, dtype or "float32", _no_data(name))
        ckpt.add(name, tensor, TensorInfo(kind=kind or "tensor", role=role))
    return ckpt


def parse_listing(text: str, path: str = "<listing>") -> Checkpoint:
    """Parse a JSON or text listing (see the module docstring).

    >>> parse_listing("fc.weight 10x64\\nfc.bias [10]")["fc.weight"].tensor.shape
    (10, 64)
    """
    stripped = text.lstrip()
    rows = []
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"not a valid JSON listing: {e}", path) from None
        if isinstance(data, dict) and isinstance(data.get("tensors"), list):
            data = data["tensors"]
        if isinstance(data, dict):
            rows = [(str(k), _shape(v, str(k), path), "", "", "") for k, v in data.items()]
        elif isinstance(data, list):
            for i, item in enumerate(data):
                if isinstance(item, dict) and "name" in item and "shape" in item:
                    rows.append((str(item["name"]), _shape(item["shape"], str(item["name"]), path),
                                 str(item.get("kind", "")), str(item.get("role", "")), str(item.get("dtype", ""))))
                elif isinstance(item, list) and len(item) == 2:
                    rows.append((str(item[0]), _shape(item[1], str(item[0]), path), "", "", ""))
                else:
                    raise FormatError(f"entry {i}: expected {{\"name\", \"shape\"}} or [name, shape]", path)
        else:
            raise FormatError("a JSON listing is an object or a list", path)
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, _, rest = line.partition(" ")
            rest = rest.strip()
            dtype = ""
            # A shape in brackets may contain spaces; a trailing dtype (as `inspect` prints) may not.
            head, _, last = rest.rpartition(" ")
            if head and last in dtypes.DTYPES:
                rest, dtype = head.strip(), last
            elif rest in dtypes.DTYPES:
                rest, dtype = "", rest
            rows.append((name, _shape(rest, f"line {n}", path), "", "", dtype))
    for row in rows:
        if row[4] and row[4] not in dtypes.DTYPES:
            raise FormatError(f"{row[0]}: unknown dtype {row[4]!r}", path)
    return listing_checkpoint(rows, path)


def is_listing(path: str) -> bool:
    """Whether a template path is a names+shapes listing (by its suffix), not a checkpoint."""
    return path.endswith(LISTING_SUFFIXES) and not path.endswith(".safetensors.index.json") and os.path.isfile(path)


def load_target(template, *, framework: str | None = None, read=None,
                native_listing=None) -> tuple[Checkpoint, str]:
    """(alignment target as a Checkpoint, a label for reports) from a Checkpoint, a listing file,
    or a checkpoint file of any format (read with `read`, the pipeline's reader: this package
    never imports the pipeline). A listing with a `framework` goes through
    `native_listing(listing, framework)`, which names its native names canonically."""
    if isinstance(template, Checkpoint):
        return template, template.source.file or "(in-memory template)"
    path = os.fspath(template)
    if is_listing(path):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise FormatError(f"cannot read the listing: {e}", path) from None
        listing = parse_listing(text, path)
        if framework is not None and native_listing is not None:
            listing = native_listing(listing, framework)
        return listing, path
    if read is None:
        raise ConversionError("a checkpoint file as a template needs a reader (use hubfmt.align)", path)
    return read(path, framework=framework), path
