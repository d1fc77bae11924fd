"""What each `hubfmt` subcommand does, given its parsed arguments; returns the exit status."""
from __future__ import annotations

import json
import os


def cmd_dry_run(a) -> int:
    from hubfmt.errors import HubfmtError

    if not (a.rules or a.template):
        raise HubfmtError("--dry-run shows a rename/alignment table: give --rules and/or --template")
    return _show_alignment(a, prefer_ema=a.prefer_ema)


def _show_alignment(a, *, prefer_ema: bool = False, save_rules: str | None = None, as_json: bool = False) -> int:
    """Print the rules table and/or the alignment table; exit status 1 when a problem is not allowed."""
    from hubfmt.alignment import load_rules
    from hubfmt.pipeline import align, read, rename

    ckpt = read(a.src, framework=a.src_fw, **({"prefer_ema": True} if prefer_ema else {}))
    if a.rules:
        rules = load_rules(a.rules)
        if not as_json:
            print(rules.plan(ckpt).to_text())
        ckpt, _ = rename(ckpt, rules=rules)
    if not a.template:
        return 0
    alignment = align(ckpt, a.template, source_label=a.src, template_framework=a.template_fw)
    print(alignment.dumps() if as_json else alignment.to_text())
    if save_rules:
        from hubfmt.io.atomic import atomic_output

        with atomic_output(save_rules, overwrite=a.overwrite) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"# hubfmt align {a.src} {a.template}: review before use\n" + alignment.to_rules().dumps())
        if not as_json:
            print(f"rules written to {save_rules}")
    return 1 if alignment.problems(allow_missing=a.allow_missing, allow_unexpected=a.allow_unexpected) else 0


def cmd_align(a) -> int:
    return _show_alignment(a, save_rules=a.save_rules, as_json=a.json)


def cmd_convert(a) -> int:
    from hubfmt.pipeline import convert

    if a.dry_run:
        return cmd_dry_run(a)

    show = False if a.quiet else None
    ro = dict(a.read_option)
    wo = dict(a.write_option)
    if a.prefer_ema:
        ro["prefer_ema"] = True
    if a.keep_dtype:
        wo["keep_dtype"] = True
    if a.max_shard_size:
        wo["max_shard_size"] = a.max_shard_size
    if a.report:
        _check_report_path(a.report, (a.src, a.dst, a.template, a.rules), a.overwrite)
    report = convert(a.src, a.dst, src_framework=a.src_fw, dst_framework=a.dst_fw, overwrite=a.overwrite,
                     show_progress=show, read_options=ro, write_options=wo, rules=a.rules, template=a.template,
                     template_framework=a.template_fw, allow_missing=a.allow_missing,
                     allow_unexpected=a.allow_unexpected)
    if a.report:
        from hubfmt.pipeline import add_output_checksums

        add_output_checksums(report, a.dst, a.dst_fw)
        _write_report(a.report, report.dumps(), a.overwrite)
    if not a.quiet:
        print(report.to_text(verbose=a.verbose))
    return 0


def cmd_convert_many(a) -> int:
    """Exit status 0 when every item is done or skipped, 1 when any failed (said how many)."""
    from hubfmt.batch import convert_many, load_manifest, mirror_tree
    from hubfmt.errors import HubfmtError

    if a.ray and a.jobs:
        raise HubfmtError("--jobs is for local worker processes; with --ray the cluster's CPUs decide")
    wo = dict(a.write_option)
    if a.keep_dtype:
        wo["keep_dtype"] = True
    if a.max_shard_size:
        wo["max_shard_size"] = a.max_shard_size
    if os.path.isdir(a.source):
        if not a.dest or not a.dst_fw:
            raise HubfmtError("a directory SOURCE needs DEST and --to FW (the tree to write and its format)", a.source)
        items = mirror_tree(a.source, a.dest, a.dst_fw, from_=a.src_fw, read_options=dict(a.read_option),
                            write_options=wo)
        if not items:
            raise HubfmtError("no checkpoint found in this directory", a.source)
    else:
        if a.dest or a.dst_fw or a.src_fw or a.read_option or a.write_option:
            raise HubfmtError("a manifest says each item's destination, formats and options: DEST, --to, --from, "
                              "-R and -W are for a directory SOURCE", a.source)
        items = load_manifest(a.source)
        for it in items:
            it.write_options = {**wo, **it.write_options}
    if a.report:
        _check_report_path(a.report, [p for it in items for p in (it.src, it.dst)], a.overwrite)
    executor = None
    if a.ray:
        from hubfmt.batch.ray_executor import RayExecutor

        executor = RayExecutor(a.ray)
    try:
        batch = convert_many(items, executor=executor, jobs=a.jobs, retries=a.retries, ledger=a.ledger,
                             overwrite=a.overwrite, show_progress=False if a.quiet else None)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    if a.report:
        _write_report(a.report, json.dumps(batch.to_json(), indent=2), a.overwrite)
    if not a.quiet:
        print(batch.to_text())
    failed = batch.count("failed")
    if failed:
        import sys

        print(f"hubfmt: error: {failed} of {len(batch.items)} item(s) failed", file=sys.stderr)
        return 1
    return 0


def _check_report_path(path: str, others, overwrite: bool) -> None:
    """Before converting: the --report file must not clobber an input or an output (`others`), nor
    (without --overwrite) any existing file."""
    from hubfmt.errors import OutputError
    from hubfmt.io.atomic import check_writable

    report = os.path.realpath(path)
    if any(other and os.path.realpath(other) == report for other in others):
        raise OutputError("the --report file would replace an input or an output; name another file", path)
    check_writable([path], overwrite)


def _write_report(path: str, text: str, overwrite: bool) -> None:
    """The report appears whole or not at all, like every output."""
    from hubfmt.io.atomic import atomic_output

    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def cmd_inspect(a) -> int:
    from hubfmt import registry
    from hubfmt.cli import inspect as describe
    from hubfmt.pipeline import read

    adapter, fmt = registry.detect_input(a.file, a.fw)
    ckpt = read(a.file, framework=adapter)
    if a.json:
        print(json.dumps({"file": a.file, "adapter": adapter, "format": fmt.name} | describe.describe(ckpt), indent=2))
    else:
        print(describe.to_text(ckpt, a.file, adapter, fmt.name))
    return 0


def cmd_diff(a) -> int:
    from hubfmt import registry
    from hubfmt.cli.diff import compare
    from hubfmt.pipeline import read

    held: list[dict[str, str] | None] = []
    for path, fw in ((a.a, a.fw_a), (a.b, a.fw_b)):
        _, fmt = registry.detect_input(path, fw)
        held.append(None if a.strict else {r: f"{fmt.name} ({os.path.basename(path)}) has no place for {r}"
                                           for r in fmt.cannot_hold})
    result = compare(read(a.a, framework=a.fw_a), read(a.b, framework=a.fw_b), rtol=a.rtol, atol=a.atol,
                     ignore=a.ignore, a_cannot_hold=held[0], b_cannot_hold=held[1])
    print(json.dumps(result.to_json(), indent=2) if a.json else result.to_text(verbose=a.verbose))
    return 1 if result.differs else 0


def cmd_validate(a) -> int:
    from hubfmt.io.conformance import validate

    problems = validate(a.file)
    for p in problems:
        print(f"{a.file}: {p}")
    if not problems:
        print(f"{a.file}: conforms to hubfmt format version 1")
    return 1 if problems else 0


def _format_lines(adapter: str, fmt) -> list[str]:
    rw = "+".join(x for x, ok in (("read", fmt.reads), ("write", fmt.writes)) if ok)
    exts = ", ".join(fmt.extensions) or f"({fmt.layout})"
    lines = [f"{adapter:<10} {fmt.name:<22} {exts:<28} {rw:<10} {fmt.description}"]
    if fmt.writes and fmt.template_required:
        lines.append(f"{'':<10}   writes only into a template: --template (an existing file of the destination model)")
    for o in fmt.options:
        default = "" if o.default is None else f" (default {o.default!r})"
        lines.append(f"{'':<10}   {o.side} option {o.cli}: {o.doc}{default}")
    return lines


def cmd_formats(a) -> int:
    import importlib.util

    from hubfmt import registry

    for line in _format_lines(registry.HUB, registry.HUB_FORMAT):
        print(line)
    print(f"{'':<10}   no framework needed")
    for name in registry.adapters():
        try:
            mod = registry.adapter(name)
        except ImportError as e:
            print(f"{name:<10} adapter unavailable: {e}")
            continue
        for fmt in mod.FORMATS:
            for line in _format_lines(name, fmt):
                print(line)
        installed = importlib.util.find_spec(mod.FRAMEWORK_MODULE) is not None
        print(f"{'':<10}   files: no framework needed; in-memory models (from_model/to_model): "
              f"{'available' if installed else 'need pip install ' + mod.PIP_NAME}")
    return 0
