"""The conversion pipeline: source adapter -> canonical Checkpoint -> destination adapter.

Everything is lazy until the destination writer pulls tensors one at a time, so native-to-native
conversion through the hub never holds the model in memory.
"""
from __future__ import annotations

import os

from . import hubfile, registry
from .checkpoint import Checkpoint
from .errors import HubfmtError, OutputError
from .report import Report
from .streaming import Progress


def read(path: str | os.PathLike, *, framework: str | None = None, **options) -> Checkpoint:
    """Read any supported checkpoint (native or hub) as a canonical, lazy Checkpoint.

    >>> ckpt = hubfmt.read("resnet-0000.params")       # doctest: +SKIP
    """
    path = os.fspath(path)
    fw = framework or registry.detect_input(path)[0]
    if fw == registry.HUB:
        ckpt = hubfile.read(path)
    else:
        ckpt = registry.adapter(fw).read(path, **options)
    return ckpt


def write(ckpt: Checkpoint, path: str | os.PathLike, *, framework: str | None = None,
          overwrite: bool = False, progress: Progress | None = None, **options) -> Report:
    """Write `ckpt` to `path` in `framework`'s format (default: from the path's suffix)."""
    path = os.fspath(path)
    fw = framework or registry.detect_output(path)[0]
    if fw == registry.HUB:
        return hubfile.write(ckpt, path, overwrite=overwrite, progress=progress, **options)
    return registry.adapter(fw).write(ckpt, path, overwrite=overwrite, progress=progress, **options)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, src_framework: str | None = None,
            dst_framework: str | None = None, overwrite: bool = False, show_progress: bool | None = None,
            read_options: dict | None = None, write_options: dict | None = None) -> Report:
    """Convert checkpoint `src` to `dst` through the hub; returns the full report.

    >>> report = hubfmt.convert("model.pth", "model.safetensors")   # doctest: +SKIP
    >>> print(report.to_text())                                     # doctest: +SKIP
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if _same_file(src, dst) or os.path.abspath(src) == os.path.abspath(dst):
        raise OutputError("destination is the source; write to another path", dst)
    src_fw = src_framework or registry.detect_input(src)[0]
    dst_fw = dst_framework or registry.detect_output(dst)[0]
    ckpt = read(src, framework=src_fw, **(read_options or {}))
    report = Report(source=f"{src} ({src_fw})", destination=f"{dst} ({dst_fw})")
    report.extend(ckpt.report)
    progress = Progress(ckpt.total_bytes(), len(ckpt.stored_names()), enabled=show_progress)
    try:
        out = write(ckpt, dst, framework=dst_fw, overwrite=overwrite, progress=progress, **(write_options or {}))
    finally:
        progress.close()
    report.extend(out)
    report.tensors_in = len(ckpt)
    report.tensors_out = out.tensors_out
    report.bytes_out = out.bytes_out
    return report


__all__ = ["read", "write", "convert", "HubfmtError"]
