"""The `hubfmt` command. Exit status: 0 success, 1 'differs/invalid/unmatched', 2 bad input or
usage. Errors are one line naming the file and the problem; HUBFMT_DEBUG=1 shows tracebacks."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

FW_HELP = "an adapter (torch, tensorflow, keras, mxnet, mindspore, oneflow, hub, ...), framework or format name"


def _size(text: str) -> int:
    from hubfmt.registry import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE parsed as JSON when it is JSON (true, 3, {"a": 1}), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hubfmt", description="Move trained weights between frameworks through one neutral safetensors file.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("convert", help="convert a checkpoint (native or hub) to another format")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--from", dest="src_fw", metavar="FW", help="source framework (default: from the file's content)")
    c.add_argument("--to", dest="dst_fw", metavar="FW", help="destination framework (default: from DST's suffix)")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    c.add_argument("--keep-dtype", action="store_true", help="hub output: keep fp16/bf16/fp64 instead of storing float32")
    c.add_argument("--prefer-ema", action="store_true", help="take EMA weights when the checkpoint has them")
    c.add_argument("--max-shard-size", type=_size, help="hub output: split into shards of at most this size (e.g. 5GB)")
    c.add_argument("--report", metavar="FILE.json", help="also write the full report as JSON")
    c.add_argument("-R", "--read-option", action="append", default=[], metavar="KEY=VALUE", type=_option,
                   help="pass an option to the source adapter's reader (e.g. -R kinds='{\"up\": \"conv_transpose2d\"}'); repeatable")
    c.add_argument("-W", "--write-option", action="append", default=[], metavar="KEY=VALUE", type=_option,
                   help="pass an option to the destination adapter's writer (e.g. -W layout=training, -W style=gluon, "
                        "-W restore_dtype=false); repeatable")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress, no report on stdout")
    c.add_argument("--verbose", "-v", action="store_true", help="list every tensor in the report")
    _alignment_options(c)
    c.add_argument("--dry-run", action="store_true", help="show the rename/alignment table; write nothing")

    al = sub.add_parser("align", help="show (and optionally save as rules) how SRC's tensors map onto template T's names "
                                      "(exit 1 when anything is unmatched)")
    al.add_argument("src")
    al.add_argument("template", metavar="T", help="destination's expected parameters: a checkpoint of any format, "
                                                  "or a names+shapes listing (.json, .txt)")
    al.add_argument("--from", dest="src_fw", metavar="FW", help="source framework (default: from the file's content)")
    al.add_argument("--template-from", dest="template_fw", metavar="FW", help="template framework")
    al.add_argument("--rules", metavar="R.toml", help="apply these rename rules before aligning")
    al.add_argument("--allow-missing", action="store_true", help="template tensors absent from SRC are not an error")
    al.add_argument("--allow-unexpected", action="store_true", help="SRC tensors the template lacks are not an error")
    al.add_argument("--save-rules", metavar="R.toml", help="write the proposed mapping as an editable rules file")
    al.add_argument("--overwrite", action="store_true", help="replace the --save-rules file if it exists")
    al.add_argument("--json", action="store_true", help="print the alignment as JSON")

    i = sub.add_parser("inspect", help="list a checkpoint's tensors and manifest")
    i.add_argument("file")
    i.add_argument("--from", dest="fw", metavar="FW", help=FW_HELP)
    i.add_argument("--json", action="store_true")

    d = sub.add_parser("diff", help="compare two checkpoints tensor by tensor (exit 1 when they differ)")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--from-a", dest="fw_a", metavar="FW", help=FW_HELP)
    d.add_argument("--from-b", dest="fw_b", metavar="FW", help=FW_HELP)
    d.add_argument("--rtol", type=float, default=0.0)
    d.add_argument("--atol", type=float, default=0.0)
    d.add_argument("--json", action="store_true")
    d.add_argument("--verbose", "-v", action="store_true")

    v = sub.add_parser("validate", help="check a hub file against the spec (exit 1 when it does not conform)")
    v.add_argument("file")

    sub.add_parser("formats", help="list adapters, their formats, and what works here")
    return p


def _alignment_options(c) -> None:
    c.add_argument("--template", metavar="T", help="align tensors to the names of T (the destination's expected "
                                                    "parameters: a checkpoint of any format or a names+shapes listing)")
    c.add_argument("--template-from", dest="template_fw", metavar="FW", help="template framework")
    c.add_argument("--rules", metavar="R.toml", help="rename tensors with these rules (before --template)")
    c.add_argument("--allow-missing", action="store_true", help="template tensors absent from SRC are not an error")
    c.add_argument("--allow-unexpected", action="store_true", help="SRC tensors the template lacks are not an error (dropped)")


def _cmd_dry_run(a) -> int:
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


def _cmd_align(a) -> int:
    return _show_alignment(a, save_rules=a.save_rules, as_json=a.json)


def _cmd_convert(a) -> int:
    from hubfmt.pipeline import convert

    if a.dry_run:
        return _cmd_dry_run(a)

    show = False if a.quiet else None
    ro = dict(a.read_option)
    wo = dict(a.write_option)
    if a.prefer_ema:
        ro["prefer_ema"] = True
    if a.keep_dtype:
        wo["keep_dtype"] = True
    if a.max_shard_size:
        wo["max_shard_size"] = a.max_shard_size
    report = convert(a.src, a.dst, src_framework=a.src_fw, dst_framework=a.dst_fw, overwrite=a.overwrite,
                     show_progress=show, read_options=ro, write_options=wo, rules=a.rules, template=a.template,
                     template_framework=a.template_fw, allow_missing=a.allow_missing,
                     allow_unexpected=a.allow_unexpected)
    if a.report:
        with open(a.report, "w") as f:
            f.write(report.dumps())
    if not a.quiet:
        print(report.to_text(verbose=a.verbose))
    return 0


def _cmd_inspect(a) -> int:
    from hubfmt.cli import inspect as describe
    from hubfmt.pipeline import read

    ckpt = read(a.file, framework=a.fw)
    print(json.dumps(describe.describe(ckpt), indent=2) if a.json else describe.to_text(ckpt))
    return 0


def _cmd_diff(a) -> int:
    from hubfmt.cli.diff import compare
    from hubfmt.pipeline import read

    result = compare(read(a.a, framework=a.fw_a), read(a.b, framework=a.fw_b), rtol=a.rtol, atol=a.atol)
    print(json.dumps(result.to_json(), indent=2) if a.json else result.to_text(verbose=a.verbose))
    return 1 if result.differs else 0


def _cmd_validate(a) -> int:
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
    for o in fmt.options:
        default = "" if o.default is None else f" (default {o.default!r})"
        lines.append(f"{'':<10}   {o.side} option {o.cli}: {o.doc}{default}")
    return lines


def _cmd_formats(a) -> int:
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


def main(argv: list[str] | None = None) -> int:
    # A file-size limit (ulimit -f) must give EFBIG, a clear error, not kill us mid-write.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from hubfmt.io.malloc import reuse_freed_memory
    reuse_freed_memory()
    args = _parser().parse_args(argv)
    from hubfmt.errors import AlignmentError, HubfmtError

    try:
        return {"convert": _cmd_convert, "align": _cmd_align, "inspect": _cmd_inspect, "diff": _cmd_diff,
                "validate": _cmd_validate, "formats": _cmd_formats}[args.command](args)
    except AlignmentError as e:
        # The table (with the mismatches) goes to stdout, the one-line error to stderr.
        if os.environ.get("HUBFMT_DEBUG"):
            raise
        print(e.table)
        print(f"hubfmt: error: {e}", file=sys.stderr)
        return e.exit_status
    except HubfmtError as e:
        if os.environ.get("HUBFMT_DEBUG"):
            raise
        print(f"hubfmt: error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("hubfmt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
