"""Checking a hub file against the spec (`hubfmt validate`)."""
from __future__ import annotations

import os

from hubfmt.codecs import safetensors
from hubfmt.format import dtypes, manifest
from hubfmt.format.layouts import KINDS
from hubfmt.io import hubfile


def validate(path: str | os.PathLike) -> list[str]:
    """Problems that make `path` a non-conforming hub file (empty list: conforming).

    Structural damage raises FormatError; this lists the spec rules a readable file breaks."""
    path = os.fspath(path)
    files, index_meta = hubfile.shards(path)
    problems = []
    header, _, _ = safetensors.read_header(files[0])
    meta = index_meta or header.get("__metadata__") or {}
    if manifest.KEY_VERSION not in meta:
        return [f"no {manifest.KEY_VERSION} in __metadata__: a plain safetensors file, not a hub file"]
    if manifest.KEY_MANIFEST not in meta:
        problems.append(f"no {manifest.KEY_MANIFEST} in __metadata__")
    ckpt = hubfile.read(path)
    stored = {}
    for shard in files:
        h, _, _ = safetensors.read_header(shard)
        h.pop("__metadata__", None)
        stored.update(h)
    for name, e in ckpt.entries.items():
        info = e.info
        if name not in stored and not info.tied_to:
            problems.append(f"{name}: listed in the manifest but not stored")
        if info.kind not in KINDS:
            problems.append(f"{name}: unknown layer kind {info.kind!r}")
        if not info.original_dtype or info.original_dtype not in dtypes.DTYPES:
            problems.append(f"{name}: original_dtype missing or unknown ({info.original_dtype!r})")
        if info.tied_to and name in stored:
            problems.append(f"{name}: tied to {info.tied_to} but also stored")
        if name in stored:
            code = stored[name]["dtype"]
            if info.original_dtype in dtypes.FLOATING and code not in ("F32", dtypes.to_safetensors(info.original_dtype)):
                problems.append(f"{name}: floating tensor stored as {code}, neither F32 nor its original dtype")
            if info.original_dtype and info.original_dtype not in dtypes.FLOATING and code != dtypes.to_safetensors(info.original_dtype):
                problems.append(f"{name}: non-floating tensor stored as {code}, not its original {info.original_dtype}")
    for name in stored:
        if name not in ckpt.entries:
            problems.append(f"{name}: stored but missing from the manifest")
    for p, li in ckpt.layers.items():
        if li.kind not in KINDS:
            problems.append(f"layer {p}: unknown kind {li.kind!r}")
    return problems
