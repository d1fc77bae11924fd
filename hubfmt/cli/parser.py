"""The command line's arguments. Long options are never abbreviated (`--overwr` is an error, not
`--overwrite`), and a mistyped command or option gets the command's usage and a suggestion."""
from __future__ import annotations

import argparse
import difflib
import json
import sys

FW_HELP = "an adapter (torch, tensorflow, keras, mxnet, mindspore, oneflow, hub), a framework or a format name"


class Parser(argparse.ArgumentParser):
    """argparse with exact option names and 'did you mean' on errors."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._subcommands: dict[str, Parser] = {}

    def error(self, message: str):
        hint = self._suggestion(message)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")

    def parse_args(self, args=None, namespace=None):
        # Unknown options are reported by the subcommand's parser, with its usage.
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            sub = self._subcommands.get(getattr(ns, "command", None) or "")
            (sub or self).error(f"unrecognized arguments: {' '.join(extra)}")
        return ns

    def _suggestion(self, message: str) -> str:
        words: list[str] = []
        known: list[str] = []
        if message.startswith("unrecognized arguments:"):
            words = message.split(":", 1)[1].split()
            known = [s for a in self._actions for s in a.option_strings]
        elif "invalid choice:" in message:
            words = [message.split("'")[1]] if "'" in message else []
            known = [c for a in self._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices]
        for w in words:
            close = difflib.get_close_matches(w.split("=")[0], known, n=1)
            if close:
                return f" (did you mean {close[0]}?)"
        return ""


def _size(text: str) -> int:
    from hubfmt.registry import parse_size

    if text.strip().replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"give a unit: {text}GB, {text}MiB, ... ({text} alone would be {text} bytes; "
                                         f"write {text}B if you mean that)")
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(text)


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE parsed as JSON when it is JSON (true, 3, {"a": 1}), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def build() -> Parser:
    from hubfmt.version import __version__
    from hubfmt.format.manifest import FORMAT_VERSION

    p = Parser(prog="hubfmt", description="Move trained weights between frameworks through one neutral safetensors file.")
    p.add_argument("--version", action="version", version=f"hubfmt {__version__} (hub format {FORMAT_VERSION})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    p._subcommands = sub.choices

    c = sub.add_parser("convert", help="convert a checkpoint (native or hub) to another format")
    c.add_argument("src", help="the checkpoint to read: a file, a directory (OneFlow) or a TF prefix")
    c.add_argument("dst", help="the output; its suffix picks the format (.safetensors, .pth, .ckpt, .params, "
                               ".index, .weights.h5, .keras, .oneflow) unless --to says")
    c.add_argument("--from", dest="src_fw", metavar="FW", help=f"source format (default: from its content): {FW_HELP}")
    c.add_argument("--to", dest="dst_fw", metavar="FW", help=f"destination format (default: from DST's suffix): {FW_HELP}")
    c.add_argument("--overwrite", action="store_true", help="replace DST (and the --report file) if it exists")
    c.add_argument("--keep-dtype", action="store_true", help="hub output: keep fp16/bf16/fp64 instead of storing float32")
    c.add_argument("--prefer-ema", action="store_true", help="take EMA weights when the checkpoint has them")
    c.add_argument("--max-shard-size", type=_size, metavar="SIZE",
                   help="split the output into shards of at most SIZE (e.g. 5GB, 500MiB)")
    c.add_argument("--report", metavar="FILE.json", help="also write the full report as JSON")
    c.add_argument("-R", "--read-option", action="append", default=[], metavar="KEY=VALUE", type=_option,
                   help="an option of the source format's reader (hubfmt formats lists them); repeatable")
    c.add_argument("-W", "--write-option", action="append", default=[], metavar="KEY=VALUE", type=_option,
                   help="an option of the destination format's writer (e.g. -W layout=training); repeatable")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress, no report on stdout")
    c.add_argument("--verbose", "-v", action="store_true", help="list every tensor in the report")
    _alignment_options(c)
    c.add_argument("--dry-run", action="store_true", help="show the rename/alignment table; write nothing")

    m = sub.add_parser("convert-many", help="convert every item of a manifest, or a directory tree into another, "
                                            "in parallel (exit 1 when any item failed)")
    m.add_argument("source", help="a manifest (.jsonl: one JSON object per line; .csv: a header line) of src, dst "
                                  "and optional to, from, template, rules, options; or a directory of checkpoints")
    m.add_argument("dest", nargs="?", help="with a directory SOURCE: the directory tree to write (mirrors SOURCE)")
    m.add_argument("--to", dest="dst_fw", metavar="FW", help=f"with a directory SOURCE: the output format: {FW_HELP}")
    m.add_argument("--from", dest="src_fw", metavar="FW", help=f"with a directory SOURCE: every source's format: {FW_HELP}")
    m.add_argument("--jobs", "-j", type=_positive, metavar="N", help="worker processes (default: the CPU count)")
    m.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: an address (ray://host:10001, host:6379), "
                                                    "auto (the one `ray start` made here) or local (start one)")
    m.add_argument("--retries", type=_count, default=2, metavar="N", help="retry a failed item N times (default 2)")
    m.add_argument("--ledger", metavar="FILE.json", help="the job ledger (default DEST/.hubfmt-ledger.json, DEST the "
                                                         "directory holding every output)")
    m.add_argument("--overwrite", action="store_true", help="replace outputs the ledger does not know (and the --report file)")
    m.add_argument("--keep-dtype", action="store_true", help="hub output: keep fp16/bf16/fp64 instead of storing float32")
    m.add_argument("--max-shard-size", type=_size, metavar="SIZE", help="split each output into shards of at most SIZE")
    m.add_argument("-R", "--read-option", action="append", default=[], metavar="KEY=VALUE", type=_option,
                   help="with a directory SOURCE: a reader option for every item; repeatable")
    m.add_argument("-W", "--write-option", action="append", default=[], metavar="KEY=VALUE", type=_option,
                   help="with a directory SOURCE: a writer option for every item; repeatable")
    m.add_argument("--report", metavar="FILE.json", help="write every item's status and conversion report as JSON")
    m.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no table")

    al = sub.add_parser("align", help="show (and optionally save as rules) how SRC's tensors map onto template T's names "
                                      "(exit 1 when anything is unmatched)")
    al.add_argument("src", help="the checkpoint to rename")
    al.add_argument("template", metavar="T", help="the destination's expected parameters: a checkpoint of any format, "
                                                  "or a names+shapes listing (.json, .txt)")
    al.add_argument("--from", dest="src_fw", metavar="FW", help=f"source format (default: from its content): {FW_HELP}")
    al.add_argument("--template-from", dest="template_fw", metavar="FW", help=f"template format: {FW_HELP}")
    al.add_argument("--rules", metavar="R.toml", help="apply these rename rules before aligning")
    al.add_argument("--allow-missing", action="store_true", help="template tensors absent from SRC are not an error")
    al.add_argument("--allow-unexpected", action="store_true", help="SRC tensors the template lacks are not an error")
    al.add_argument("--save-rules", metavar="R.toml", help="write the proposed mapping as an editable rules file")
    al.add_argument("--overwrite", action="store_true", help="replace the --save-rules file if it exists")
    al.add_argument("--json", action="store_true", help="print the alignment as JSON")

    i = sub.add_parser("inspect", help="what a checkpoint holds: a summary, then its tensors by module")
    i.add_argument("file", help="a checkpoint of any format")
    i.add_argument("--from", dest="fw", metavar="FW", help=FW_HELP)
    i.add_argument("--json", action="store_true", help="everything as JSON, for programs")

    d = sub.add_parser("diff", help="compare two checkpoints tensor by tensor (exit 1 when they differ)")
    d.add_argument("a", help="a checkpoint of any format")
    d.add_argument("b", help="another one, e.g. A's conversion")
    d.add_argument("--from-a", dest="fw_a", metavar="FW", help=FW_HELP)
    d.add_argument("--from-b", dest="fw_b", metavar="FW", help=FW_HELP)
    d.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for values (default 0: bit-equal)")
    d.add_argument("--atol", type=float, default=0.0, help="absolute tolerance for values")
    d.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="leave out tensors whose name matches this glob ('*' any text); repeatable")
    d.add_argument("--strict", action="store_true", help="also count what one side's format cannot hold "
                                                         "(num_batches_tracked in MXNet, ...) as a difference")
    d.add_argument("--json", action="store_true", help="the comparison as JSON")
    d.add_argument("--verbose", "-v", action="store_true", help="list equal tensors too")

    v = sub.add_parser("validate", help="check a hub file against the spec (exit 1 when it does not conform)")
    v.add_argument("file", help="a hub file (.safetensors) or shard index")

    sub.add_parser("formats", help="list adapters, their formats and options, and what works here")
    return p


def _alignment_options(c) -> None:
    c.add_argument("--template", metavar="T", help="align tensors to the names of T (the destination's expected "
                                                    "parameters: a checkpoint of any format or a names+shapes listing)")
    c.add_argument("--template-from", dest="template_fw", metavar="FW", help=f"template format: {FW_HELP}")
    c.add_argument("--rules", metavar="R.toml", help="rename tensors with these rules (before --template)")
    c.add_argument("--allow-missing", action="store_true", help="template tensors absent from SRC are not an error")
    c.add_argument("--allow-unexpected", action="store_true", help="SRC tensors the template lacks are not an error (dropped)")
