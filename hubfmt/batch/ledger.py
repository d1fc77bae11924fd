"""The job ledger: what a batch has converted, so a rerun skips what is complete and current.

A JSON file next to the outputs (default DEST/.hubfmt-ledger.json). Per output (its path relative
to the ledger's directory): the source's files with size, mtime and CRC-32C of their bytes
(streamed; every file of a directory or TF prefix), the hubfmt version, the item's options and
the output files with their sizes. The driver alone writes it, atomically, after each item.

An item is current when its entry names the same source, options and hubfmt version, every output
file exists with its recorded size, and every source file has its recorded size and either its
mtime or (a touched file) its CRC-32C.
"""
from __future__ import annotations

import glob
import json
import os

from hubfmt.format.checksums import compute
from hubfmt.io import hubfile
from hubfmt.io.atomic import atomic_output
from hubfmt.version import __version__

SCHEMA = "hubfmt-ledger/1"
DEFAULT_NAME = ".hubfmt-ledger.json"
_CHUNK = 8 << 20


def source_files(src: str) -> list[str]:
    """Every file a checkpoint at `src` consists of."""
    if os.path.isdir(src):
        out: list[str] = []
        for root, dirs, files in os.walk(src):
            dirs.sort()
            out.extend(os.path.join(root, f) for f in sorted(files))
        return out
    if src.endswith(hubfile.INDEX_SUFFIX) or (not os.path.exists(src) and os.path.exists(src + hubfile.INDEX_SUFFIX)):
        index = src if src.endswith(hubfile.INDEX_SUFFIX) else src + hubfile.INDEX_SUFFIX
        try:
            shards, _ = hubfile.shards(index)
        except Exception:     # noqa: BLE001 - a malformed index: the conversion will say why
            shards = []
        return [index, *shards]
    prefix = src[: -len(".index")] if src.endswith(".index") else src
    if os.path.exists(prefix + ".index") and (src.endswith(".index") or not os.path.exists(src)):
        return [prefix + ".index", *sorted(glob.glob(glob.escape(prefix) + ".data-*"))]
    return [src]


def crc32c_file(path: str) -> str:
    value = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            value = compute("crc32c", chunk, value)
    return f"{value:08x}"


def file_print(path: str) -> dict:
    """Size, mtime (ns) and CRC-32C of one file."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "crc32c": crc32c_file(path)}


def fingerprint(src: str, known: dict[str, dict] | None = None) -> list[dict]:
    """file_print of each file of the source (`known`: prints already taken, by absolute path)."""
    known = known or {}
    return [known.get(os.path.abspath(p)) or file_print(p) for p in source_files(src)]


def _same_source(recorded: list[dict], src: str) -> bool:
    files = [os.path.abspath(p) for p in source_files(src)]
    if files != [r["path"] for r in recorded]:
        return False
    for r in recorded:
        try:
            st = os.stat(r["path"])
        except OSError:
            return False
        if st.st_size != r["size"]:
            return False
        if st.st_mtime_ns != r["mtime_ns"] and crc32c_file(r["path"]) != r["crc32c"]:
            return False
    return True


def output_size(path: str) -> int | None:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    try:
        return os.path.getsize(path)
    except OSError:
        return None


class Ledger:
    """The ledger file at `path` (None: an in-memory ledger that is never saved)."""

    def __init__(self, path: str | None):
        self.path = os.path.abspath(path) if path else None
        self.base = os.path.dirname(self.path) if self.path else os.getcwd()
        self.entries: dict[str, dict] = {}
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    doc = json.load(f)
                if doc.get("schema") == SCHEMA and isinstance(doc.get("items"), dict):
                    self.entries = doc["items"]
            except (OSError, ValueError, AttributeError):
                self.entries = {}     # unreadable: everything is redone, and the ledger rewritten

    def key(self, dst: str) -> str:
        return os.path.relpath(os.path.abspath(dst), self.base)

    def entry(self, dst: str) -> dict | None:
        return self.entries.get(self.key(dst))

    def is_current(self, src: str, dst: str, options: dict) -> bool:
        e = self.entry(dst)
        if not e or e.get("hubfmt_version") != __version__ or e.get("options") != options:
            return False
        if e.get("source") != os.path.abspath(src):
            return False
        for out in e.get("outputs", []):
            if output_size(os.path.join(self.base, out["path"])) != out["size"]:
                return False
        return bool(e.get("outputs")) and _same_source(e.get("source_files", []), src)

    def record(self, src: str, dst: str, options: dict, files: list[str], source_print: list[dict]) -> None:
        outputs = [{"path": os.path.relpath(os.path.abspath(f), self.base), "size": output_size(f)} for f in files]
        self.entries[self.key(dst)] = {"source": os.path.abspath(src), "source_files": source_print,
                                       "hubfmt_version": __version__, "options": options, "outputs": outputs}
        self.save()

    def forget(self, dst: str) -> None:
        if self.entries.pop(self.key(dst), None) is not None:
            self.save()

    def save(self) -> None:
        if not self.path:
            return
        with atomic_output(self.path, overwrite=True) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"schema": SCHEMA, "items": self.entries}, f, indent=1, sort_keys=True)
