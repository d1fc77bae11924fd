"""The conversion pipeline: source adapter -> canonical Checkpoint -> destination adapter.

Everything is lazy until the destination writer pulls tensors one at a time, so native-to-native
conversion through the hub never holds the model in memory.
"""
from __future__ import annotations

import inspect
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
        _check_options(hubfile.read, options, "hub reader")
        ckpt = hubfile.read(path)
    else:
        reader = registry.adapter(fw).read
        _check_options(reader, options, f"{fw} reader")
        ckpt = reader(path, **options)
    return ckpt


def write(ckpt: Checkpoint, path: str | os.PathLike, *, framework: str | None = None,
          overwrite: bool = False, progress: Progress | None = None, **options) -> Report:
    """Write `ckpt` to `path` in `framework`'s format (default: from the path's suffix)."""
    path = os.fspath(path)
    fw = framework or registry.detect_output(path)[0]
    writer = hubfile.write if fw == registry.HUB else registry.adapter(fw).write
    _check_options(writer, options, f"{fw} writer")
    return writer(ckpt, path, overwrite=overwrite, progress=progress, **options)


def _check_options(fn, options: dict, what: str) -> None:
    """Unknown options are a clear error, not a TypeError from deep inside an adapter."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return      # the adapter validates its own **options
    known = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise HubfmtError(f"the {what} takes no option {', '.join(map(repr, unknown))} "
                          f"(its options: {', '.join(k for k in known if k not in ('overwrite', 'progress')) or 'none'})")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def rename(ckpt: Checkpoint, *, rules=None, template=None, template_framework: str | None = None,
           allow_missing: bool = False, allow_unexpected: bool = False, source_label: str = "") -> tuple[Checkpoint, str]:
    """Apply rename `rules` (a rules file or RuleSet), then align to `template` (see hubfmt.align).

    Returns the checkpoint to write (lazy; its report holds the renaming events) and the tables
    (rules, alignment). Raises AlignmentError (exit status 1, with the problems table) when the
    alignment has a problem the caller did not allow, so a conversion fails before its output
    is opened.

    >>> ckpt, table = rename(hubfmt.read("dpn.params"), template="dpn_torch.pth")   # doctest: +SKIP
    """
    from .align import align
    from .mapping import apply_mapping
    from .rules import RuleSet, load_rules

    tables = []
    log = Report(stage="align")
    if rules is not None:
        ruleset = rules if isinstance(rules, RuleSet) else load_rules(rules)
        table = ruleset.plan(ckpt)
        tables.append(table.to_text())
        ckpt = apply_mapping(ckpt, table, report=log)
    if template is not None:
        alignment = align(ckpt, template, source_label=source_label, template_framework=template_framework)
        tables.append(alignment.to_text())
        alignment.check(allow_missing=allow_missing, allow_unexpected=allow_unexpected)
        ckpt = alignment.apply(ckpt)
        log.extend(ckpt.report)
    ckpt.report = log
    return ckpt, "\n".join(tables)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, src_framework: str | None = None,
            dst_framework: str | None = None, overwrite: bool = False, show_progress: bool | None = None,
            read_options: dict | None = None, write_options: dict | None = None, rules=None, template=None,
            template_framework: str | None = None, allow_missing: bool = False,
            allow_unexpected: bool = False) -> Report:
    """Convert checkpoint `src` to `dst` through the hub; returns the full report.

    With `rules` (a rules file) and/or `template` (the destination's expected parameters: a
    checkpoint of any format, a Checkpoint, or a names+shapes listing), tensors are renamed and
    aligned to the template's names first (`rename`); nothing is written when that fails.

    >>> report = hubfmt.convert("model.pth", "model.safetensors")   # doctest: +SKIP
    >>> report = hubfmt.convert("dpn-0000.params", "dpn.pth", template="dpn_init.pth")   # doctest: +SKIP
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
    tensors_in = len(ckpt)
    if rules is not None or template is not None:
        ckpt, _ = rename(ckpt, rules=rules, template=template, template_framework=template_framework,
                         allow_missing=allow_missing, allow_unexpected=allow_unexpected, source_label=src)
        report.extend(ckpt.report)
    write_options = _native_template(dict(write_options or {}), template, template_framework, dst_fw)
    progress = Progress(ckpt.total_bytes(), len(ckpt.stored_names()), enabled=show_progress)
    try:
        out = write(ckpt, dst, framework=dst_fw, overwrite=overwrite, progress=progress, **write_options)
    finally:
        progress.close()
    report.extend(out)
    report.tensors_in = tensors_in
    report.tensors_out = out.tensors_out
    report.bytes_out = out.bytes_out
    return report


def _native_template(write_options: dict, template, template_framework: str | None, dst_fw: str) -> dict:
    """A template file in the destination's own format also guides that format's writer (the
    exact native names, an MXNet symbol graph, a TF2 object graph), when the writer takes one."""
    if "template" in write_options or not isinstance(template, (str, os.PathLike)) or dst_fw == registry.HUB:
        return write_options
    t_fw = template_framework
    if t_fw is None:
        try:
            t_fw = registry.detect_input(os.fspath(template))[0]
        except HubfmtError:
            return write_options     # a names+shapes listing: alignment only
    if t_fw == dst_fw and "template" in inspect.signature(registry.adapter(dst_fw).write).parameters:
        write_options["template"] = os.fspath(template)
    return write_options


__all__ = ["read", "write", "convert", "rename", "HubfmtError"]
