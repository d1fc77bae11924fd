"""The conversion pipeline: source adapter -> canonical Checkpoint -> destination adapter.

Everything is lazy until the destination writer pulls tensors one at a time, so native-to-native
conversion through the hub never holds the model in memory.

A template plays two parts here. As the alignment target (hubfmt.alignment) it says which names
and shapes the destination expects; any format or a names+shapes listing will do. When it is a
file in the destination's own format and that format declares a `template` writer option, it is
also the native template: the writer keeps its exact native names, order and structure (an
MXNet symbol graph, a TF2 object graph, a Keras config).
"""
from __future__ import annotations

import os

from hubfmt import registry
from hubfmt.alignment import Alignment, RuleSet, align_checkpoints, load_rules, load_target
from hubfmt.alignment.target import is_listing
from hubfmt.errors import ConversionError, HubfmtError, OutputError
from hubfmt.format.checkpoint import Checkpoint
from hubfmt.io import flatten, hubfile, malloc
from hubfmt.io.collect import fewer_collections
from hubfmt.io.progress import Busy, Progress
from hubfmt.registry import READ, WRITE
from hubfmt.report import Report, end_to_end, stage


def read(path: str | os.PathLike, *, framework: str | None = None, **options) -> Checkpoint:
    """Read any supported checkpoint (native or hub) as a canonical, lazy Checkpoint.

    `framework` (an adapter, framework or format name) skips detection; `options` are the
    reader options the format declares (`hubfmt formats` lists them).

    >>> ckpt = hubfmt.read("resnet-0000.params")       # doctest: +SKIP
    """
    path = os.fspath(path)
    name, fmt = registry.detect_input(path, framework)
    options = fmt.check_options(READ, options)
    if name == registry.HUB:
        return hubfile.read(path, **options)
    return registry.adapter(name).read(path, **options)


def write(ckpt: Checkpoint, path: str | os.PathLike, *, framework: str | None = None,
          overwrite: bool = False, progress: Progress | None = None, **options) -> Report:
    """Write `ckpt` to `path` in `framework`'s format (default: from the path's suffix).

    `options` are the writer options the format declares (`hubfmt formats` lists them).

    >>> hubfmt.write(hubfmt.read("model.pth"), "model-0000.params")   # doctest: +SKIP
    """
    path = os.fspath(path)
    name, fmt = registry.detect_output(path, framework)
    options = fmt.check_options(WRITE, options)
    _check_dtypes_held(ckpt, fmt, path)
    flatten.check_decided(ckpt)     # a Dense's row order after a Flatten the reader could not tell
    writer = hubfile.write if name == registry.HUB else getattr(registry.adapter(name), fmt.writer)
    return writer(ckpt, path, overwrite=overwrite, progress=progress, **options)


def _check_dtypes_held(ckpt: Checkpoint, fmt: registry.NativeFormat, path: str) -> None:
    held_not: dict[str, list[str]] = {}
    if not fmt.dtypes_not_held:
        return
    for n, e in ckpt.entries.items():
        dt = e.tensor.dtype
        if dt in fmt.dtypes_not_held and not e.info.tied_to:
            held_not.setdefault(dt, []).append(n)
    if held_not:
        dt, names = next(iter(held_not.items()))
        raise ConversionError(f"{fmt.name} cannot hold {dt} tensors ({len(names)}, e.g. {names[0]}); a hub file, a "
                              f"torch file or an HF directory keeps them (`hubfmt formats` says which formats do)", path)


def align(source, template, *, framework: str | None = None, template_framework: str | None = None,
          source_label: str = "") -> Alignment:
    """Align a checkpoint (a Checkpoint or a path of any format) to `template` (a Checkpoint, a
    checkpoint path of any format, or a names+shapes listing). Never raises for unmatched
    tensors: call `.check()`.

    >>> a = hubfmt.align("dpn-0000.params", "dpn_torch.pth")    # doctest: +SKIP
    >>> a.check(); print(a.to_text())                           # doctest: +SKIP
    """
    if not isinstance(source, Checkpoint):
        source_label = source_label or os.fspath(source)
        source = read(source, framework=framework)
    target, label = load_target(template, framework=template_framework, read=read, native_listing=native_listing)
    with Busy(f"aligning {len(source)} tensors onto {len(target)}"):
        return align_checkpoints(source, target, source_label=source_label, template_label=label)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _refuse_source_files(ckpt: Checkpoint, src: str, dst: str) -> None:
    """A destination that is one of the files the source's tensors live in (a hub shard, a TF
    data shard, a OneFlow tensor file), or a directory holding one, is refused even with
    --overwrite: replacing it would destroy the input while it is being read."""
    # The distinct paths first: a checkpoint of 20,000 tensors lives in one file or a few, and
    # realpath walks every component of its argument.
    paths = {span.path for e in ckpt.entries.values() if (span := e.tensor.span) is not None}
    inputs = {os.path.realpath(src)} | {os.path.realpath(p) for p in paths}
    real_dst = os.path.realpath(dst)
    for p in sorted(inputs):
        if p == real_dst or _same_file(p, dst) or p.startswith(real_dst.rstrip(os.sep) + os.sep):
            raise OutputError(f"destination is, or holds, a file of the source ({p}); write to another path", dst)


def rename(ckpt: Checkpoint, *, rules=None, template=None, template_framework: str | None = None,
           allow_missing: bool = False, allow_unexpected: bool = False, source_label: str = "") -> tuple[Checkpoint, str]:
    """Apply rename `rules` (a rules file or RuleSet), then align to `template` (see hubfmt.alignment).

    Returns the checkpoint to write (lazy; its report holds the renaming events) and the tables
    (rules, alignment). Raises AlignmentError (exit status 1, with the problems table) when the
    alignment has a problem the caller did not allow, so a conversion fails before its output
    is opened.

    >>> ckpt, table = rename(hubfmt.read("dpn.params"), template="dpn_torch.pth")   # doctest: +SKIP
    """
    from hubfmt.alignment.table import apply_mapping

    tables = []
    log = Report(stage="align")
    if rules is not None:
        ruleset = rules if isinstance(rules, RuleSet) else load_rules(rules)
        table = ruleset.plan(ckpt)
        tables.append(table.to_text())
        ckpt = apply_mapping(ckpt, table, report=log)
    if template is not None:
        alignment = align(ckpt, template, template_framework=template_framework, source_label=source_label)
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
    with fewer_collections():
        return _convert(src, dst, src_framework=src_framework, dst_framework=dst_framework, overwrite=overwrite,
                        show_progress=show_progress, read_options=read_options, write_options=write_options,
                        rules=rules, template=template, template_framework=template_framework,
                        allow_missing=allow_missing, allow_unexpected=allow_unexpected)


def _convert(src, dst, *, src_framework, dst_framework, overwrite, show_progress, read_options, write_options, rules,
             template, template_framework, allow_missing, allow_unexpected) -> Report:
    src, dst = os.fspath(src), os.fspath(dst)
    if _same_file(src, dst) or os.path.abspath(src) == os.path.abspath(dst):
        raise OutputError("destination is the source; write to another path", dst)
    src_name, src_fmt = registry.detect_input(src, src_framework)
    dst_name, dst_fmt = registry.detect_output(dst, dst_framework)
    read_options = src_fmt.check_options(READ, dict(read_options or {}))
    write_options = dst_fmt.check_options(WRITE, dict(write_options or {}))
    if (dst_fmt.template_required and write_options.get("template") is None
            and not native_template(template, template_framework, dst_name, dst_fmt)):
        # before anything is read: this writer only fills an existing file of the destination model
        raise ConversionError(f"the {dst_fmt.name} writer writes only into an existing model: pass --template "
                              f"with the destination model's own file ({', '.join(dst_fmt.extensions)})", dst)
    ckpt = read(src, framework=src_name, **read_options)
    _refuse_source_files(ckpt, src, dst)
    report = Report(source=f"{src} ({src_name})", destination=f"{dst} ({dst_name})")
    report.extend(ckpt.report, stage="read")
    tensors_in = len(ckpt)
    # Alignment replaces the infos: the source names kept now, where they are not the canonical
    # name (end_to_end takes a missing one as the name itself; a million equal names, #13).
    source_names = {n: o for n, e in ckpt.entries.items() if (o := e.info.original_name) and o != n}
    report.stages.append(stage("read", None, tensors_in, os.path.basename(src)))
    if rules is not None or template is not None:
        names_before = list(ckpt)
        ckpt, _ = rename(ckpt, rules=rules, template=template, template_framework=template_framework,
                         allow_missing=allow_missing, allow_unexpected=allow_unexpected, source_label=src)
        report.extend(ckpt.report, stage="align")
        label = "onto " + os.path.basename(os.fspath(template)) if isinstance(template, (str, os.PathLike)) else ""
        report.stages.append(stage("align", len(names_before), len(ckpt), label or "by rules", names_before))
    if "template" not in write_options and native_template(template, template_framework, dst_name, dst_fmt):
        write_options["template"] = os.fspath(template)
    sizes = [e.tensor.nbytes for e in ckpt.entries.values() if not e.info.tied_to]    # one pass (#13)
    progress = Progress(sum(sizes), len(sizes), enabled=show_progress)
    malloc.for_tensors(max(sizes, default=0))
    del sizes
    try:
        # The format detect_output chose (a --to FORMAT name stays that format).
        out = write(ckpt, dst, framework=dst_framework or dst_name, overwrite=overwrite, progress=progress,
                    **write_options)
    finally:
        progress.close()
    report.extend(out, stage="write")
    owner = registry.suffix_owner(dst, writable_only=False)
    if dst_framework is not None and owner is not None and owner.format.name != dst_fmt.name \
            and owner.adapter != dst_name:
        report.stage = "write"
        report.add("warning", os.path.basename(dst), f"the suffix means {owner.format.name} ({owner.adapter}); "
                   f"written as {dst_fmt.name} because --to {dst_framework} says so (readers detect by content)")
        report.stage = ""
    report.files = list(out.files)
    report.stages.append(stage("write", len(ckpt), out.tensors_out, os.path.basename(dst), list(ckpt)))
    report.tensors_in = tensors_in
    report.tensors_out = out.tensors_out
    report.bytes_out = out.bytes_out
    report.mapping = end_to_end(report, list(ckpt), source_names)
    return report


def add_output_checksums(report: Report, dst: str | os.PathLike, framework: str | None = None) -> None:
    """Read `dst` back and give each row of `report.mapping` the CRC-32C of its tensor's canonical
    bytes (hub layout, little-endian, C order) under "canonical_crc32c": the same value for the
    same tensor whatever format holds it, so two outputs (or an output and a hub file) can be
    compared without loading either framework. One tensor in memory at a time."""
    import numpy as np

    from hubfmt.format.checksums import compute

    back = read(dst, framework=framework)
    by_native = {back[n].info.original_name or n: n for n in back}
    for row in report.mapping:
        if row["destination"] is None:
            continue
        name = by_native.get(row["destination"], row["destination"] if row["destination"] in back else None)
        if name is None:
            name = row["canonical"] if row["canonical"] in back else None
        if name is None:
            row["canonical_crc32c"] = None
            continue
        data = np.ascontiguousarray(back.array(name))
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("<"))
        row["canonical_crc32c"] = f"{compute('crc32c', data.reshape(-1).view(np.uint8)):08x}"


def native_listing(listing: Checkpoint, framework: str) -> Checkpoint:
    """A names+shapes listing of `framework`'s own names as the canonical Checkpoint its reader
    would make of the same variables (the first adapter of `framework` that declares
    `from_listing`: TF names -> kinds, canonical names and shapes). An adapter without it names
    its tensors canonically already (torch, OneFlow): the listing is kept as it is."""
    for name in registry.select(framework):
        if name == registry.HUB:
            break
        from_listing = getattr(registry.adapter(name), "from_listing", None)
        if from_listing is not None:
            out = from_listing([(n, listing[n].tensor) for n in listing])
            out.source.file, out.source.format = listing.source.file, "listing"
            return out
    return listing


def native_template(template, template_framework: str | None, dst_name: str, dst_fmt: registry.NativeFormat) -> bool:
    """Whether `template` is a file in the destination's own format that the destination writer
    takes as its native template (the writer declares a `template` option)."""
    if not isinstance(template, (str, os.PathLike)) or "template" not in dst_fmt.options_for(WRITE):
        return False
    if is_listing(os.fspath(template)):
        return False     # names+shapes only, even with --template-from naming the destination's framework
    try:
        t_name, _ = registry.detect_input(os.fspath(template), template_framework)
    except HubfmtError:
        return False     # a names+shapes listing: alignment only
    return t_name == dst_name


__all__ = ["read", "write", "align", "convert", "rename", "add_output_checksums"]
