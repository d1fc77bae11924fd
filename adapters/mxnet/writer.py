"""Canonical Checkpoint -> MXNet `.params` (+ `-symbol.json`), streaming and atomic, without MXNet.

Two styles of `.params`:
- "module": `arg:`/`aux:` names, what `mx.model.load_checkpoint` / `mx.mod.Module` / Gluon
  `SymbolBlock.imports` read; the default for `prefix-NNNN.params` outputs. A `prefix-symbol.json`
  is written beside it when a graph is known: the template's, or the one the source came with.
- "gluon": plain names for `Block.load_parameters` (`features.1.gamma`); the default otherwise.

Names follow the template when one is given (a `.params` and/or `-symbol.json` of the target
model), matched by name, else by order with shapes checked; without a template, an MXNet source
keeps its own names and anything else gets module path + MXNet role ('.' -> '_' in module style).
"""
from __future__ import annotations

import copy
import json
import os
import re

import numpy as np

from hubfmt.sdk import atomic_outputs
from hubfmt.sdk import Checkpoint, Entry
from hubfmt.sdk import ConversionError
from hubfmt.sdk import Report
from hubfmt.sdk import OUTPUT_BUFFER, prefetched

from . import names, ndlist, symbol

_MODULE_NAME = re.compile(r"-\d+\.params$")


class _Template:
    """What the target model expects: names (with arg:/aux: when known), shapes, graph."""

    def __init__(self, path: str):
        self.graph = None
        self.shapes: dict[str, tuple] = {}
        self.full: dict[str, str] = {}          # bare name -> name as stored (with arg:/aux:)
        if path.endswith(".json"):
            self.graph = symbol.load(path)
            order = list(self.graph.params)
        else:
            records, stored = ndlist.scan(path)
            order = []
            for rec, name in zip(records, stored, strict=False):   # stored is [] for a plain mx.nd.save list
                _, bare = names.strip_prefix(name)
                self.shapes[bare] = rec.shape
                self.full[bare] = name
                order.append(bare)
            sym = symbol.symbol_path_for(path)
            if os.path.isfile(sym):
                self.graph = symbol.load(sym)
                order = list(self.graph.params) + [n for n in order if n not in self.graph.params]
        self.order = order

    def shape(self, bare: str) -> tuple | None:
        if bare in self.shapes:
            return self.shapes[bare]
        if self.graph and bare in self.graph.params:
            return self.graph.params[bare].shape
        return None

    def is_aux(self, bare: str) -> bool:
        if self.graph and bare in self.graph.params:
            return self.graph.params[bare].aux
        pre, _ = names.strip_prefix(self.full.get(bare, ""))
        return pre == "aux" if pre else names.is_aux(bare)


def _skipped(entry: Entry) -> str:
    return "MXNet BatchNorm keeps no step count" if entry.info.role == "num_batches_tracked" else ""


def _writable(ckpt: Checkpoint) -> list[str]:
    """Every name to write. Tied aliases included: an NDArray list has no ties, and Gluon's
    load_parameters wants a shared parameter under each of its names."""
    return [n for n, e in ckpt.entries.items() if not _skipped(e)]


def _default_name(ckpt: Checkpoint, entry: Entry, style: str) -> str:
    info = entry.info
    if ckpt.source.framework == "mxnet" and info.original_name:
        _, bare = names.strip_prefix(info.original_name)
        if style == "gluon" or "." not in bare:
            return bare
    return names.native(info.layer, info.role, info.kind, style)


def _fits(have: tuple, want: tuple) -> bool:
    return len(have) == len(want) and all(w is None or w == h for h, w in zip(have, want, strict=True))


def target_shape(have: tuple, want: tuple | None) -> tuple | None:
    """The shape to write `have` as, for a template expecting `want` (None dims: any); None when
    they do not fit. A 1x1 conv classifier and a dense layer hold the same numbers:
    [o,i,1,1] <-> [o,i] (DPN's fc6)."""
    if want is None or _fits(have, want):
        return tuple(have)
    if len(have) == 2 and len(want) == 4 and want[2:] == (1, 1) and _fits(have, want[:2]):
        return tuple(have) + (1, 1)
    if len(have) == 4 and have[2:] == (1, 1) and len(want) == 2 and _fits(have[:2], want):
        return tuple(have[:2])
    return None


def _match(ckpt: Checkpoint, tpl: _Template, report: Report, strict: bool) -> list[tuple[str, str, tuple]]:
    """(template bare name, canonical name, shape to write) in template order."""
    usable = _writable(ckpt)
    by_native = {}
    for n in usable:
        e = ckpt[n]
        for cand in (_default_name(ckpt, e, "module"), _default_name(ckpt, e, "gluon"),
                     names.strip_prefix(e.info.original_name)[1]):
            by_native.setdefault(cand, n)
    originals = {names.strip_prefix(ckpt[n].info.original_name)[1]: n for n in usable}
    src_pre, tpl_pre = names.model_prefix(originals), names.model_prefix(tpl.order)
    by_unprefixed = {o[len(src_pre):]: n for o, n in originals.items()}
    if all(t in by_native for t in tpl.order):
        pairs = [(t, by_native[t]) for t in tpl.order]
    elif (src_pre or tpl_pre) and all(t[len(tpl_pre):] in by_unprefixed for t in tpl.order):
        pairs = [(t, by_unprefixed[t[len(tpl_pre):]]) for t in tpl.order]
        report.add("warning", "template", f"matched by name without the model prefixes {src_pre!r} / {tpl_pre!r}")
    else:
        if len(usable) != len(tpl.order):
            raise ConversionError(f"template has {len(tpl.order)} parameters, the checkpoint {len(usable)}; names do "
                                  f"not match (first unmatched template name: "
                                  f"{next(t for t in tpl.order if t not in by_native)!r})")
        # The weakest evidence: both sides must list layers in the same order. Shapes are
        # checked, but two same-shaped layers in swapped order would pass: say so loudly.
        pairs = list(zip(tpl.order, usable, strict=True))
        report.add("warning", "template", "names differ from the template's: matched by order, shapes checked")
    used = {c for _, c in pairs}
    for n in usable:
        if n not in used:
            if strict:
                raise ConversionError(f"tensor {n!r} has no place in the template (-W strict=false drops it)")
            report.add("dropped", n, "not in the template")
    out = []
    for t, c in pairs:
        want = tpl.shape(t)
        have = ckpt[c].tensor.shape
        shape = target_shape(have, want)
        if shape is None:
            shown = ["?" if d is None else d for d in want]
            raise ConversionError(f"template parameter {t!r} has shape {shown}, the checkpoint's {c!r} {list(have)}")
        out.append((t, c, shape))
    return out


def _patch_symbol(graph: symbol.Graph, out_of: dict[str, str], ckpt: Checkpoint, report: Report) -> str:
    """The graph with BatchNorm eps/fix_gamma set to what the weights need.

    A source that knows its eps (torch 1e-5) must not run under a template's different eps, and a
    gamma that is not all ones must not meet fix_gamma=True (MXNet would silently use ones).
    Returns the JSON text: the original, byte for byte, when nothing needed changing."""
    doc = copy.deepcopy(graph.doc)
    changed = False
    nodes = doc["nodes"]
    by_name = {n["name"]: n for n in nodes}
    for bare, use in graph.params.items():
        if use.kind != "batch_norm" or use.role != "weight" or bare not in out_of:
            continue
        node = by_name[use.node]

        def set_attr(name: str, value: str, node=node) -> None:
            # into every attribute dict that already has it, else the operator's own dict
            present = [k for k in symbol.ATTR_KEYS if isinstance(node.get(k), dict) and name in node[k]]
            if not present:
                own = next((k for k in ("attrs", "param", "attr") if isinstance(node.get(k), dict)), "attrs")
                present = [own]
            for k in present:
                node.setdefault(k, {})[name] = value

        entry = ckpt[out_of[bare]]
        src = ckpt.layers.get(entry.info.layer)
        eps = (src.attrs.get("eps") if src else None)
        if eps is not None and abs(float(eps) - use.attrs["eps"]) > 1e-12 * max(1.0, abs(float(eps))):
            set_attr("eps", repr(float(eps)))
            changed = True
            report.add("warning", use.node, f"eps set to {eps} (the weights' own) instead of the graph's {use.attrs['eps']}")
        if use.attrs["fix_gamma"]:
            gamma = entry.tensor.load()
            if not np.all(gamma.astype(np.float32) == 1):
                set_attr("fix_gamma", "False")
                changed = True
                report.add("warning", use.node, "fix_gamma set to False: gamma is not all ones and MXNet would ignore it")
    return json.dumps(doc, indent=2) if changed else graph.text


def write(ckpt: Checkpoint, path, *, overwrite: bool = False, progress=None, restore_dtype: bool = True,
          style: str | None = None, template: str | None = None, symbol_file: bool | None = None,
          strict: bool = True) -> Report:
    """Write `ckpt` as an MXNet `.params` file (and `-symbol.json` beside it when a graph is known).

    >>> write(ckpt, "resnet-0000.params", template="resnet_mx-symbol.json")   # doctest: +SKIP
    >>> write(ckpt, "net.params", style="gluon")                               # doctest: +SKIP
    """
    path = os.fspath(path)
    style = style or ("module" if _MODULE_NAME.search(path) else "gluon")
    if style not in ("module", "gluon"):
        raise ConversionError(f"unknown style {style!r} (module or gluon)")
    report = Report(stage="write")
    tpl = _Template(os.fspath(template)) if template else None
    graph = tpl.graph if tpl else None
    if graph is None and not tpl:
        text = (ckpt.extra.get("mxnet") or {}).get("symbol") if isinstance(ckpt.extra.get("mxnet"), dict) else None
        if text:
            graph = symbol.parse(text, "the source's -symbol.json")
    want_symbol = style == "module" and symbol_file is not False and graph is not None
    if symbol_file and not want_symbol:
        raise ConversionError("no graph to write as -symbol.json: pass --template (a -symbol.json or .params with one) "
                              "and style='module'")

    for n, e in ckpt.entries.items():
        why = _skipped(e)
        if why:
            report.add("dropped", n, why)
        elif e.info.tied_to:
            report.add("tied", n, f"written as a copy of {e.info.tied_to} (an NDArray list holds no ties)")
    if tpl:
        plan = []
        for t, c, shape in _match(ckpt, tpl, report, strict):
            full = tpl.full.get(t) or (("aux:" if tpl.is_aux(t) else "arg:") + t if style == "module" else t)
            if style == "gluon":
                full = names.strip_prefix(full)[1]
            plan.append((full, c, shape))
    else:
        plan = []
        for n in _writable(ckpt):
            bare = _default_name(ckpt, ckpt[n], style)
            aux = graph.params[bare].aux if graph and bare in graph.params else names.is_aux(bare)
            plan.append(((("aux:" if aux else "arg:") + bare) if style == "module" else bare, n, None))
    out_names = [p[0] for p in plan]
    for n in out_names:
        if len(n.encode("utf-8")) > ndlist.MAX_NAME:
            # what hubfmt's own reader (and any sane one) refuses: refused before writing
            raise ConversionError(f"tensor name {n[:40]!r}... is {len(n.encode('utf-8'))} bytes, more than the "
                                  f"{ndlist.MAX_NAME} an MXNet file read by hubfmt may hold", path)
    if len(set(out_names)) != len(out_names):
        dup = next(x for x in out_names if out_names.count(x) > 1)
        raise ConversionError(f"two tensors would be written as {dup!r}")
    out_of = {names.strip_prefix(full)[1]: c for full, c, _ in plan}
    if want_symbol:
        missing = [p for p in graph.params if p not in out_of]
        if missing:
            raise ConversionError(f"the graph needs {len(missing)} parameter(s) the checkpoint lacks: {missing[:5]}")
        sym_text = _patch_symbol(graph, out_of, ckpt, report)
    elif style == "module" and symbol_file is None:
        report.add("warning", os.path.basename(path), "no -symbol.json written: no graph known (pass --template "
                   "a -symbol.json of the target model for mx.model.load_checkpoint)")

    sym_path = symbol.symbol_path_for(path)
    finals = ([sym_path] if want_symbol else []) + [path]
    total = 0
    with atomic_outputs(finals, overwrite=overwrite) as out:
        if want_symbol:
            with open(out.path(sym_path), "w", encoding="utf-8") as f:
                f.write(sym_text)
        records = []
        for full, c, want_shape in plan:
            e = ckpt[c]
            t = e.tensor
            if not t.shape and want_shape is None:
                report.add("reshaped", c, "[] -> [1] (MXNet 1.x reads a rank-0 record as 'no array')")
            if want_shape is not None and tuple(want_shape) != t.shape:
                report.add("reshaped", c, f"{list(t.shape)} -> {list(want_shape)}")
                t = t.map(lambda a, s=tuple(want_shape): a.reshape(s), want_shape)
            dt = t.dtype
            if restore_dtype and e.info.original_dtype in ndlist.FLAG_OF:
                dt = e.info.original_dtype
            if dt not in ndlist.FLAG_OF:
                raise ConversionError(f"tensor {c!r}: MXNet has no dtype {dt}")
            if dt != t.dtype:
                report.add("cast", c, f"{t.dtype}->{dt}")
            if full != c:
                report.renamed(c, full)
            records.append((t, dt))
        with open(out.path(path), "wb", buffering=OUTPUT_BUFFER) as f:
            ndlist.write_header(f, len(plan))
            for (_, dt), t in zip(records, prefetched(records), strict=True):
                n = ndlist.write_record(f, t, dt)
                total += n
                if progress:
                    progress.update(n)
            ndlist.write_names(f, out_names)
    report.tensors_in = len(ckpt)
    report.tensors_out = len(plan)
    report.bytes_out = total
    return report
