"""Which adapters exist and which formats they handle. Holds dotted module names, not modules:
importing hubfmt imports no adapter, and an adapter imports its framework only inside the
functions that need it (from_model / to_model).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType

from .errors import HubfmtError

HUB = "hub"
# CLI framework name -> module. Order is the sniffing order for inputs.
ADAPTERS = {
    "torch": "hubfmt.adapters.torch",
    "tensorflow": "hubfmt.adapters.tensorflow",
    "mxnet": "hubfmt.adapters.mxnet",
    "mindspore": "hubfmt.adapters.mindspore",
    "oneflow": "hubfmt.adapters.oneflow",
}


@dataclass(frozen=True)
class NativeFormat:
    """A native checkpoint format an adapter reads and/or writes without its framework."""

    name: str                       # e.g. "torch-zip"
    extensions: tuple[str, ...]     # output-path suffixes that select it, longest match wins
    description: str
    reads: bool = True
    writes: bool = True
    layout: str = "file"            # "file", "directory" or "prefix" (TF: prefix.index + shards)


def adapter(framework: str) -> ModuleType:
    """The adapter module for `framework` (imported now, cheaply)."""
    if framework not in ADAPTERS:
        raise HubfmtError(f"unknown framework {framework!r} (known: {', '.join(ADAPTERS)}, hub)")
    return importlib.import_module(ADAPTERS[framework])


def available() -> list[str]:
    """Frameworks whose adapter module is present in this installation."""
    out = []
    for fw, mod in ADAPTERS.items():
        try:
            spec = importlib.util.find_spec(mod)
        except ImportError:
            continue
        if spec is not None and spec.origin is not None:   # a real package, not an empty folder
            out.append(fw)
    return out


def detect_input(path: str) -> tuple[str, str]:
    """(framework or "hub", format name) of an existing checkpoint, from its content."""
    from . import hubfile

    # A TensorFlow checkpoint is named by its prefix, a sharded hub file by its base name.
    companions = (path, path + hubfile.INDEX_SUFFIX, path + ".index")
    if not any(os.path.exists(p) for p in companions):
        raise HubfmtError("no such file or directory", path)
    if os.path.isfile(path) and hubfile.is_hub_file(path):
        return HUB, "hub"
    if not os.path.exists(path) and os.path.exists(path + hubfile.INDEX_SUFFIX):
        return HUB, "hub"
    for fw in available():
        fmt = adapter(fw).sniff(path)
        if fmt:
            return fw, fmt
    if os.path.isfile(path) and hubfile.is_safetensors(path):
        return HUB, "safetensors"
    raise HubfmtError("cannot tell which framework wrote this checkpoint; pass --from FRAMEWORK", path)


def detect_output(path: str) -> tuple[str, str]:
    """(framework or "hub", format name) for an output path, from its suffix."""
    if path.endswith(".safetensors") or path.endswith(".safetensors.index.json"):
        return HUB, "hub"
    best = None
    for fw in available():
        for fmt in adapter(fw).FORMATS:
            if not fmt.writes:
                continue
            for ext in fmt.extensions:
                if path.endswith(ext) and (best is None or len(ext) > best[2]):
                    best = (fw, fmt.name, len(ext))
    if best is None:
        raise HubfmtError("cannot tell the output format from this path; pass --to FRAMEWORK", path)
    return best[0], best[1]
