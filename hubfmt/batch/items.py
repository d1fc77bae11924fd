"""What a batch converts: items from a manifest (JSONL or CSV) or from a source tree mirrored
into a destination tree with one target format.

A manifest line names `src` and `dst` (relative paths are relative to the manifest's directory)
and optionally `to`, `from`, `template`, `template_from`, `rules`, `read_options`,
`write_options` (`options` is the same as `write_options`), `allow_missing`, `allow_unexpected`.
In CSV the option columns hold JSON objects (`{"keep_dtype": true}`), the flags true/false.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field

from hubfmt import registry
from hubfmt.errors import HubfmtError
from hubfmt.io import hubfile

_KEYS = {"src", "dst", "to", "from", "template", "template_from", "rules", "read_options", "write_options",
         "options", "allow_missing", "allow_unexpected"}


@dataclass
class Item:
    """One conversion: the arguments of hubfmt.convert."""
    src: str
    dst: str
    to: str | None = None
    from_: str | None = None
    template: str | None = None
    template_from: str | None = None
    rules: str | None = None
    read_options: dict = field(default_factory=dict)
    write_options: dict = field(default_factory=dict)
    allow_missing: bool = False
    allow_unexpected: bool = False

    def options(self) -> dict:
        """Everything besides the paths that decides the output (the ledger compares it)."""
        d = dataclasses.asdict(self)
        del d["src"], d["dst"]
        return d

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Item":
        return cls(**d)


def _bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no", ""):
        return value.strip().lower() in ("true", "1", "yes")
    raise HubfmtError(f"not true/false: {value!r}", where)


def _mapping(value, where: str) -> dict:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise HubfmtError(f"options are a JSON object, not {value!r}", where) from None
    if not isinstance(value, dict):
        raise HubfmtError(f"options are a JSON object, not {value!r}", where)
    return value


def item_from_row(row: dict, base: str, where: str) -> Item:
    """An Item from one manifest row (a dict); paths relative to `base`."""
    unknown = set(row) - _KEYS
    if unknown:
        raise HubfmtError(f"unknown manifest field(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_KEYS))})",
                          where)
    for key in ("src", "dst"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise HubfmtError(f"a manifest line needs {key!r}", where)

    def path(v):
        return None if v in (None, "") else os.path.normpath(os.path.join(base, str(v)))

    def text(v):
        return None if v in (None, "") else str(v)
    wo = {**_mapping(row.get("options"), where), **_mapping(row.get("write_options"), where)}
    return Item(src=path(row["src"]), dst=path(row["dst"]), to=text(row.get("to")), from_=text(row.get("from")),
                template=path(row.get("template")), template_from=text(row.get("template_from")),
                rules=path(row.get("rules")), read_options=_mapping(row.get("read_options"), where), write_options=wo,
                allow_missing=_bool(row.get("allow_missing", False), where),
                allow_unexpected=_bool(row.get("allow_unexpected", False), where))


def load_manifest(path: str | os.PathLike) -> list[Item]:
    """Items of a JSONL (one JSON object per line; blank lines and # comments skipped) or CSV
    (a header line naming the fields) manifest. CSV when the name ends with .csv."""
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except OSError as e:
        raise HubfmtError(f"cannot read the manifest: {e.strerror}", path) from None
    items: list[Item] = []
    if path.lower().endswith(".csv"):
        reader = csv.DictReader(text.splitlines())
        for n, row in enumerate(reader, 2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            items.append(item_from_row({k: v for k, v in row.items() if v != ""}, base, f"{path}:{n}"))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise HubfmtError(f"not JSON: {e}", f"{path}:{n}") from None
            if not isinstance(row, dict):
                raise HubfmtError("a manifest line is a JSON object", f"{path}:{n}")
            items.append(item_from_row(row, base, f"{path}:{n}"))
    if not items:
        raise HubfmtError("the manifest lists no conversion", path)
    check_distinct(items)
    return items


def check_distinct(items: list[Item]) -> None:
    seen: dict[str, str] = {}
    for it in items:
        d = os.path.abspath(it.dst)
        if d in seen:
            raise HubfmtError(f"two items write the same output (sources {seen[d]} and {it.src})", it.dst)
        seen[d] = it.src


_TF_DATA = re.compile(r"\.data-\d{5}-of-\d{5}$")


def _strip_ext(name: str, fmt: registry.NativeFormat) -> str:
    for ext in sorted(fmt.extensions, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0] if fmt.layout == "file" else name


def mirror_tree(src_root: str | os.PathLike, dst_root: str | os.PathLike, to: str, **common) -> list[Item]:
    """One Item per checkpoint under `src_root` (a file, a OneFlow or Hugging Face directory, a TF
    prefix, a sharded hub file), written under `dst_root` at the same relative place with the
    `to` format's suffix. Files that are no checkpoint are left out; `common` are Item fields
    (read_options, write_options, ...) every item gets."""
    src_root, dst_root = os.fspath(src_root), os.fspath(dst_root)
    if not os.path.isdir(src_root):
        raise HubfmtError("not a directory", src_root)
    _, out_fmt = registry.detect_output(os.path.join(dst_root, "x"), to)
    out_ext = out_fmt.extensions[0] if out_fmt.extensions else ""
    items: list[Item] = []
    dst_abs = os.path.abspath(dst_root)
    for root, dirs, files in os.walk(src_root):
        dirs.sort()
        if os.path.abspath(root) == dst_abs or os.path.abspath(root).startswith(dst_abs + os.sep):
            dirs[:] = []
            continue
        keep = []
        for d in dirs:
            p = os.path.join(root, d)
            if d.startswith(".") or os.path.abspath(p) == dst_abs:
                continue
            fmt = _detect(p, common.get("from_"))
            # A directory format (OneFlow, Hugging Face) is one checkpoint; a folder a TF reader
            # would take (its `checkpoint` state file names the latest) is a folder of checkpoints.
            if fmt is not None and fmt.layout == "directory":
                items.append(_mirrored(p, src_root, dst_root, fmt, out_ext, to, common))
            else:
                keep.append(d)
        dirs[:] = keep
        in_index: set[str] = set()
        for f in files:
            if f.endswith(hubfile.INDEX_SUFFIX):
                try:
                    shard_files, _ = hubfile.shards(os.path.join(root, f))
                    in_index |= {os.path.basename(s) for s in shard_files}
                except HubfmtError:
                    pass
        for f in sorted(files):
            if f.startswith(".") or f in in_index or _TF_DATA.search(f) or f.endswith("-symbol.json"):
                continue
            p = os.path.join(root, f)
            fmt = _detect(p, common.get("from_"))
            if fmt is not None:
                items.append(_mirrored(p, src_root, dst_root, fmt, out_ext, to, common))
    # model.pth and model.ckpt side by side: each keeps its whole name (model.pth.safetensors).
    by_dst: dict[str, list[Item]] = {}
    for it in items:
        by_dst.setdefault(os.path.abspath(it.dst), []).append(it)
    for same in by_dst.values():
        if len(same) > 1:
            for it in same:
                it.dst = os.path.join(os.path.dirname(it.dst), os.path.basename(it.src.rstrip(os.sep)) + out_ext)
    check_distinct(items)
    return items


def _detect(path: str, framework: str | None = None) -> registry.NativeFormat | None:
    """The format of a checkpoint at `path`, or None for anything else. `framework` (--from) is
    only needed, and only used, for plain safetensors files, whose names say no framework: with
    it, a file no reader recognises would be taken as that framework's and fail."""
    try:
        return registry.detect_input(path).format
    except HubfmtError:
        pass
    if framework and os.path.isfile(path) and hubfile.is_safetensors(path):
        try:
            return registry.detect_input(path, framework).format
        except HubfmtError:
            return None
    return None


def _mirrored(p: str, src_root: str, dst_root: str, fmt: registry.NativeFormat, out_ext: str, to: str,
              common: dict) -> Item:
    rel = os.path.relpath(p, src_root)
    head, name = os.path.split(rel)
    dst = os.path.join(dst_root, head, _strip_ext(name, fmt) + out_ext)
    return Item(src=p, dst=dst, to=to, **common)
