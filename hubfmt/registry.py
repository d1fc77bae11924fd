"""The spokes the hub knows: adapters, the native formats they declare, and those formats' options.

The registry holds dotted module names, not modules: importing hubfmt imports no adapter, and an
adapter imports its framework only inside the functions that need it (from_model / to_model).
Built-in adapters live in hubfmt.adapters; third-party adapters register through the entry-point
group `hubfmt.adapters` (name = module), for example in their pyproject.toml:

    [project.entry-points."hubfmt.adapters"]
    paddle = "hubfmt_paddle"

Each adapter module exposes NAME, FRAMEWORK, FRAMEWORK_MODULE, PIP_NAME, FORMATS, sniff, read,
write, from_model and to_model (hubfmt.sdk documents the contract; hubfmt.contract checks it).
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Mapping, NamedTuple

from hubfmt.errors import ConversionError, HubfmtError

HUB = "hub"
ENTRY_POINT_GROUP = "hubfmt.adapters"
# Built-in adapters. Order is the sniffing order for inputs.
BUILTIN = {
    "torch": "hubfmt.adapters.torch",
    "tensorflow": "hubfmt.adapters.tensorflow",
    "keras": "hubfmt.adapters.keras",
    "mxnet": "hubfmt.adapters.mxnet",
    "mindspore": "hubfmt.adapters.mindspore",
    "oneflow": "hubfmt.adapters.oneflow",
    "onnx": "hubfmt.adapters.onnx",
    "flax": "hubfmt.adapters.flax",
}
READ, WRITE = "read", "write"
_TYPES = ("bool", "int", "float", "str", "size", "mapping", "template")


class OptionError(ConversionError):
    """An option a format does not take, or a value of the wrong type."""


@dataclass(frozen=True)
class Option:
    """One reader or writer option of a native format, declared as data.

    `type` is one of bool, int, float, str, size (bytes; "5GB" is accepted), mapping (a dict),
    template (a checkpoint of the destination model in this format, whose native structure the
    writer keeps: the hub passes `--template` here when the template is in this format).
    `flag` names the command-line flag that sets it for every format declaring it
    (`--prefer-ema`); other options are set with -R/-W KEY=VALUE."""

    name: str
    type: str
    default: Any
    doc: str
    side: str = READ
    choices: tuple = ()
    flag: str = ""

    def __post_init__(self):
        if self.type not in _TYPES:
            raise ValueError(f"option {self.name}: unknown type {self.type!r}")
        if self.side not in (READ, WRITE):
            raise ValueError(f"option {self.name}: side is 'read' or 'write', not {self.side!r}")

    @property
    def cli(self) -> str:
        """How a command-line user sets it."""
        return self.flag or f"{'-R' if self.side == READ else '-W'} {self.name}=..."

    def coerce(self, value: Any, owner: str) -> Any:
        """`value` checked against the declared type (raises OptionError naming the option)."""
        def bad(why: str) -> OptionError:
            return OptionError(f"{self.cli}: {why} (the {owner} expects {self.type}: {self.doc})")

        if value is None:
            return None
        t = self.type
        if t == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise bad(f"{value!r} is not true or false")
        elif t in ("int", "size"):
            if t == "size" and isinstance(value, str):
                value = parse_size(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(f"{value!r} is not an integer")
            if t == "size" and value <= 0:
                raise bad(f"{value} is not a positive size")
        elif t == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(f"{value!r} is not a number")
            value = float(value)
        elif t == "str":
            if not isinstance(value, str):
                raise bad(f"{value!r} is not a string")
        elif t == "mapping":
            if not isinstance(value, dict):
                raise bad(f"{value!r} is not a mapping (give JSON: -R {self.name}='{{\"a\": 1}}')")
        if self.choices and value not in self.choices:
            raise bad(f"{value!r} is not one of {', '.join(map(repr, self.choices))}")
        return value


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000, '500MiB' -> 524_288_000; a bare number is bytes.

    >>> parse_size("5GB"), parse_size("1KiB"), parse_size("300")
    (5000000000, 1024, 300)
    """
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    t = str(text).strip().upper()
    num = t.rstrip("KMGTIB")
    try:
        return int(float(num) * units[t[len(num):].strip()])
    except (KeyError, ValueError):
        raise ValueError(f"not a size: {text!r} (e.g. 5GB, 500MiB)") from None


@dataclass(frozen=True)
class NativeFormat:
    """A native checkpoint format an adapter reads and/or writes without its framework."""

    name: str                       # e.g. "torch-zip"
    extensions: tuple[str, ...]     # output-path suffixes that select it, longest match wins
    description: str
    reads: bool = True
    writes: bool = True
    layout: str = "file"            # "file", "directory" or "prefix" (TF: prefix.index + shards)
    options: tuple[Option, ...] = ()
    # Manifest roles the format has no place for (MXNet keeps no num_batches_tracked): its writer
    # drops them, reported, and `hubfmt diff` does not count their absence as a difference.
    cannot_hold: tuple[str, ...] = ()
    # The adapter function that writes this format, when not `write` (an adapter with several
    # writable formats names one per format; the registry, not the path, decides which is called).
    writer: str = "write"
    # dtypes the format has no way to store: a checkpoint holding them is refused before anything
    # is written (float8 unless the format says it keeps it).
    dtypes_not_held: tuple[str, ...] = ("float8_e4m3fn", "float8_e5m2")
    # the writer writes only into a template (an existing file of the destination model, e.g. an
    # ONNX model whose graph is kept): without --template, writing is an error
    template_required: bool = False

    def options_for(self, side: str) -> dict[str, Option]:
        return {o.name: o for o in self.options if o.side == side}

    def check_options(self, side: str, given: dict) -> dict:
        """`given` validated against the options this format declares for `side`: an unknown
        option or a value of the wrong type is an OptionError that names the flag and lists
        what the format takes. Returns the options with values coerced to their types."""
        known = self.options_for(side)
        owner = f"{self.name} {'reader' if side == READ else 'writer'}"
        out = {}
        for key, value in given.items():
            opt = known.get(key)
            if opt is None:
                flag = COMMON.get(key)
                how = flag.cli if flag is not None else f"{'-R' if side == READ else '-W'} {key}"
                listed = ", ".join(o.cli for o in known.values()) or "none"
                hint = difflib.get_close_matches(key, known, n=1)
                maybe = f"; did you mean {known[hint[0]].cli}?" if hint else ""
                raise OptionError(f"{how}: the {owner} has no such option (its options: {listed}){maybe}")
            out[key] = opt.coerce(value, owner)
        return out


# Options several formats share: declared once, so a flag means the same everywhere.
PREFER_EMA = Option("prefer_ema", "bool", False, "take EMA weights when the checkpoint has them",
                    READ, flag="--prefer-ema")
KEEP_DTYPE = Option("keep_dtype", "bool", False, "store float16/bfloat16/float64 as they are instead of float32",
                    WRITE, flag="--keep-dtype")
MAX_SHARD_SIZE = Option("max_shard_size", "size", None, "split the output into shards of at most this many bytes",
                        WRITE, flag="--max-shard-size")
RESTORE_DTYPE = Option("restore_dtype", "bool", True, "write each tensor in the dtype the source had "
                       "(false: the dtype it has now, float32 after a hub file)", WRITE)
TEMPLATE = Option("template", "template", None, "a checkpoint of the destination model in this format: "
                  "the output keeps its native names, order and structure", WRITE, flag="--template")
STRICT_READ = Option("strict", "bool", True, "a tensor that cannot be mapped is an error (false: kept as it is, reported)")
STRICT_WRITE = Option("strict", "bool", True, "a tensor that has no place in the output is an error "
                      "(false: dropped, reported)", WRITE)
VERIFY_CHECKSUMS = Option("verify_checksums", "bool", True, "check the checksums the format stores "
                          "(false: skip them, for damaged files you want to salvage)")
COMMON = {o.name: o for o in (PREFER_EMA, KEEP_DTYPE, MAX_SHARD_SIZE, TEMPLATE)}

HUB_FORMAT = NativeFormat(
    "hub", (".safetensors", ".safetensors.index.json"),
    "the neutral format: safetensors with the hubfmt manifest (spec/hubfmt-v1.md); sharded with an index",
    options=(KEEP_DTYPE, MAX_SHARD_SIZE), dtypes_not_held=())


class Detected(NamedTuple):
    adapter: str                # adapter name, or "hub"
    format: NativeFormat


# ---- adapters -----------------------------------------------------------------------------------

_plugins: dict[str, str] | None = None


def _entry_points() -> dict[str, str]:
    """Third-party adapters: entry-point name -> module (read once per process)."""
    global _plugins
    if _plugins is None:
        from importlib.metadata import entry_points

        found = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in BUILTIN or ep.name == HUB:
                continue     # a plugin cannot replace a built-in adapter
            found[ep.name] = ep.value.split(":")[0]
        _plugins = found
    return _plugins


def adapters() -> dict[str, str]:
    """Adapter name -> module name: built-ins, then entry-point plugins."""
    return {**BUILTIN, **_entry_points()}


def adapter(name: str) -> ModuleType:
    """The adapter module called `name` (imported now, cheaply: no framework)."""
    known = adapters()
    if name not in known:
        raise HubfmtError(f"unknown adapter {name!r}{_did_you_mean(name, [*known, HUB])} "
                          f"(known: {', '.join(known)}, {HUB})")
    return importlib.import_module(known[name])


# What every adapter's __init__ re-exports lazily, and from where (hubfmt.sdk's module names).
ADAPTER_EXPORTS = {"read": "reader", "write": "writer", "from_model": "memory", "to_model": "memory"}


def lazy_exports(package: str, also: Mapping[str, str] | None = None) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) for an adapter's `__init__.py`: read, write, from_model and
    to_model (ADAPTER_EXPORTS), and the names in `also`, are each imported from their submodule
    when first asked for, then kept as module attributes. A target is "submodule" or
    "submodule:attribute", relative to `package`.

    Every command asks each adapter what it reads and writes (NAME, FRAMEWORK, FORMATS, sniff:
    `formats.py`, imported eagerly); only the adapters a conversion uses need their reader,
    writer and framework glue. Importing all of them for `--to mxnet` cost 0.1 s a run (#18)."""
    exports = {**ADAPTER_EXPORTS, **(also or {})}

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            # A submodule (`adapter.writer`), as an eagerly imported package would have it.
            if name.startswith("_") or importlib.util.find_spec(f"{package}.{name}") is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            return importlib.import_module(f"{package}.{name}")
        module, _, attribute = target.partition(":")
        value = getattr(importlib.import_module(f"{package}.{module}"), attribute or name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


def _did_you_mean(name: str, options) -> str:
    hint = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def available() -> list[str]:
    """Adapters whose module is present in this installation."""
    out = []
    for name, mod in adapters().items():
        try:
            spec = importlib.util.find_spec(mod)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin is not None:   # a real package, not an empty folder
            out.append(name)
    return out


def select(name: str | None) -> list[str]:
    """Adapters a --from/--to NAME designates: an adapter name, a framework (every adapter whose
    FRAMEWORK it is: "tensorflow" is the bundle and the Keras adapter) or a format name."""
    if name is None:
        return available()
    if name == HUB:
        return [HUB]
    names = available()
    if name in names:
        chosen = [name]
        # a framework name also covers that framework's other adapters (tensorflow -> keras too)
        chosen += [a for a in names if a != name and getattr(adapter(a), "FRAMEWORK", a) == name]
        return chosen
    by_fw = [a for a in names if getattr(adapter(a), "FRAMEWORK", a) == name]
    if by_fw:
        return by_fw
    by_fmt = [a for a in names if any(f.name == name for f in adapter(a).FORMATS)]
    if by_fmt:
        return by_fmt
    every = names + [HUB] + sorted({f.name for a in names for f in adapter(a).FORMATS})
    raise HubfmtError(f"unknown framework or format {name!r}{_did_you_mean(name, every)} (known: {', '.join(names)}, {HUB})")


def needs_template(adapter_name: str) -> bool:
    """Whether every format `adapter_name` writes requires a template (nothing to write without one)."""
    if adapter_name == HUB:
        return False
    fmts = [f for f in adapter(adapter_name).FORMATS if f.writes]
    return bool(fmts) and all(f.template_required for f in fmts)


def format_named(adapter_name: str, fmt: str) -> NativeFormat:
    if adapter_name == HUB:
        return HUB_FORMAT
    for f in adapter(adapter_name).FORMATS:
        if f.name == fmt:
            return f
    raise HubfmtError(f"adapter {adapter_name!r} declares no format {fmt!r}")


def detect_input(path: str, framework: str | None = None) -> Detected:
    """(adapter or "hub", format) of an existing checkpoint, from its content; `framework`
    (a --from NAME) restricts the candidates."""
    from hubfmt.io import hubfile

    # A TensorFlow checkpoint is named by its prefix, a sharded hub file by its base name.
    companions = (path, path + hubfile.INDEX_SUFFIX, path + ".index")
    if not any(os.path.lexists(p) for p in companions):
        raise HubfmtError("no such file or directory", path)
    from hubfmt.io.inputs import check_not_special

    check_not_special(path)
    candidates = select(framework)
    if HUB in candidates or framework is None:
        if (os.path.isfile(path) and hubfile.is_hub_file(path)) or (
                not os.path.exists(path) and os.path.exists(path + hubfile.INDEX_SUFFIX)):
            return Detected(HUB, HUB_FORMAT)
        if candidates == [HUB]:
            if os.path.isfile(path) and hubfile.is_safetensors(path):
                return Detected(HUB, HUB_FORMAT)
            raise HubfmtError("not a hub file (a safetensors file with the hubfmt manifest)", path)
    for name in candidates:
        if name == HUB:
            continue
        mod = adapter(name)
        fmt = mod.sniff(path)
        if fmt:
            return Detected(name, format_named(name, fmt))
    if framework is None and os.path.isfile(path) and hubfile.is_safetensors(path):
        # Plain safetensors that no adapter claimed: its names and layouts are someone's, and
        # taking them as canonical would convert silently wrong (untransposed TF kernels...).
        from hubfmt.codecs import safetensors

        header, _, _ = safetensors.read_header(path)
        flavour = str((header.get("__metadata__") or {}).get("format", "")) or "none"
        raise HubfmtError(f"a plain safetensors file (no hubfmt manifest; \"format\" metadata: {flavour}) whose "
                          f"names do not say whose names and layouts it holds: pass --from torch or --from mindspore "
                          f"when it is theirs, or --from hub to take it as it is (layer kinds unknown)", path)
    if framework is not None:
        # Named but not recognised: that adapter's reader says precisely what is wrong.
        for name in candidates:
            readable = [f for f in adapter(name).FORMATS if f.reads]
            if name != HUB and readable:
                return Detected(name, readable[0])
        raise HubfmtError(f"not a checkpoint {framework} reads", path)
    raise HubfmtError("cannot tell which framework wrote this checkpoint; pass --from FRAMEWORK", path)


def suffix_owner(path: str, *, writable_only: bool = True) -> Detected | None:
    """The (adapter, format) whose extension `path` ends with (longest match), or None."""
    if path.endswith(".safetensors") or path.endswith(".safetensors.index.json"):
        return Detected(HUB, HUB_FORMAT)
    best = None
    for name in available():
        try:
            formats = adapter(name).FORMATS
        except ImportError:
            continue
        for fmt in formats:
            if writable_only and not fmt.writes:
                continue
            for ext in fmt.extensions:
                if path.endswith(ext) and (best is None or len(ext) > best[2]):
                    best = (name, fmt, len(ext))
    return Detected(best[0], best[1]) if best else None


def detect_output(path: str, framework: str | None = None) -> Detected:
    """(adapter or "hub", format) for an output path, from its suffix; `framework` (a --to NAME)
    restricts the candidates and, when only one of its formats is written, needs no suffix."""
    candidates = select(framework)
    if framework is None and (path.endswith(".safetensors") or path.endswith(".safetensors.index.json")):
        return Detected(HUB, HUB_FORMAT)
    if candidates == [HUB]:
        return Detected(HUB, HUB_FORMAT)
    if framework is not None and framework not in available():
        # A format name (--to hf, --to torch-safetensors): exactly that format.
        named = [(a, f) for a in candidates for f in adapter(a).FORMATS if f.name == framework]
        if named:
            if not named[0][1].writes:
                raise HubfmtError(f"{framework} is a format hubfmt reads but does not write", path)
            return Detected(*named[0])
    best = None
    writable = []
    for name in candidates:
        for fmt in adapter(name).FORMATS:
            if not fmt.writes:
                continue
            writable.append((name, fmt))
            for ext in fmt.extensions:
                if path.endswith(ext) and (best is None or len(ext) > best[2]):
                    best = (name, fmt, len(ext))
    if best is not None:
        return Detected(best[0], best[1])
    owner = suffix_owner(path, writable_only=False)
    if owner is not None and not owner[1].writes and framework is None:
        fmt = owner[1]
        others = [f"{e} ({f.name})" for f in adapter(owner[0]).FORMATS if f.writes for e in f.extensions]
        raise HubfmtError(f"{fmt.name} ({', '.join(fmt.extensions)}) is a format hubfmt reads but does not write"
                          + (f"; {owner[0]} writes {', '.join(others)}" if others else ""), path)
    if framework is not None:
        # No suffix of its own: the adapter's first writable format (TF prefix, OneFlow directory).
        if writable:
            return Detected(*writable[0])
        raise HubfmtError(f"{framework} writes no format", path)
    raise HubfmtError("cannot tell the output format from this path; pass --to FRAMEWORK", path)
