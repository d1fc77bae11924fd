"""`hubfmt inspect`: what a checkpoint holds, for hub and native files alike: a summary a person
reads at a glance, then the tensors grouped by module (`--json` gives the same as data)."""
from __future__ import annotations

import json
from collections import Counter

from hubfmt.format.checkpoint import Checkpoint
from hubfmt.report import human_bytes


def _summary(ckpt: Checkpoint) -> dict:
    stored = [ckpt[n] for n in ckpt.stored_names()]
    params = 0
    for e in stored:
        n = 1
        for d in e.tensor.shape:
            n *= d
        params += n
    dtypes = Counter(e.tensor.dtype for e in stored)
    kinds = Counter(kind for kind in _modules(ckpt).values() if kind)
    return {
        "tensors": len(ckpt),
        "stored_tensors": len(stored),
        "parameters": params,
        "bytes": ckpt.total_bytes(),
        "dtypes": dict(dtypes.most_common()),
        "layer_kinds": dict(kinds.most_common()),
        "tied": sum(1 for n in ckpt if ckpt[n].info.tied_to),
        "non_tensor": _non_tensor(ckpt.extra),
    }


def _non_tensor(extra: dict) -> dict[str, str]:
    """Each top-level non-tensor entry with a short description of what it is."""
    out = {}
    for k, v in extra.items():
        if isinstance(v, dict):
            what = f"mapping of {len(v)}"
        elif isinstance(v, (list, tuple)):
            what = f"list of {len(v)}"
        elif isinstance(v, (str, bytes)):
            what = f"text ({len(v)} chars)" if len(v) > 40 else repr(v)
        else:
            what = repr(v) if len(repr(v)) <= 40 else type(v).__name__
        out[str(k)] = what
    return out


def _modules(ckpt: Checkpoint) -> dict[str, str]:
    """module path -> its layer kind ("" when the tensors do not say), in checkpoint order."""
    out: dict[str, str] = {}
    for n in ckpt:
        info = ckpt[n].info
        layer = info.layer if info.layer != n else ""
        kind = ckpt.layers[layer].kind if layer in ckpt.layers else info.kind
        if layer not in out or (out[layer] in ("", "tensor") and kind):
            out[layer] = "" if kind == "tensor" else kind
    return out


def describe(ckpt: Checkpoint) -> dict:
    return {
        "source": {k: v for k, v in vars(ckpt.source).items() if v},
        "summary": _summary(ckpt),
        "tensors": [
            {"name": n, "kind": e.info.kind, "role": e.info.role, "shape": list(e.tensor.shape),
             "dtype": e.tensor.dtype, **{k: v for k, v in e.info.to_json().items() if k not in ("kind", "role")}}
            for n, e in ckpt.entries.items()
        ],
        "layers": {p: {"kind": li.kind, "attrs": li.attrs} for p, li in ckpt.layers.items() if li.attrs},
        "extra_keys": sorted(map(str, ckpt.extra)),
    }


def _count(n: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n:,} ({n / size:.1f}{unit})"
    return f"{n:,}"


def to_text(ckpt: Checkpoint, path: str = "", adapter: str = "", fmt: str = "") -> str:
    """`path` read by `adapter` as format `fmt` (as registry.detect_input found them), when known."""
    d = describe(ckpt)
    s, src = d["summary"], d["source"]
    made = " ".join(x for x in (src.get("framework"), src.get("framework_version")) if x) or "unknown framework"
    origin_fmt = ", ".join(x for x in (src.get("format"), src.get("file")) if x)
    if adapter == "hub":
        head = f"{path}: hub file; from {made}" + (f" ({origin_fmt})" if origin_fmt else "")
    elif adapter:
        head = f"{path}: {fmt} ({adapter} adapter)" + (f", written by {made}" if src.get("framework_version") else "")
    else:
        head = f"{path or src.get('file') or 'checkpoint'}: {made}" + (f", {origin_fmt}" if origin_fmt else "")
    lines = [head]
    stored = f" ({s['stored_tensors']} stored, {s['tied']} tied)" if s["tied"] else ""
    lines.append(f"  {s['tensors']} tensors{stored}, {_count(s['parameters'])} parameters, {human_bytes(s['bytes'])}")
    lines.append("  dtypes: " + (", ".join(f"{k} {v}" for k, v in s["dtypes"].items()) or "none"))
    if s["layer_kinds"]:
        lines.append("  layers: " + ", ".join(f"{v} {k}" for k, v in s["layer_kinds"].items()))
    if s["non_tensor"]:
        lines.append("  non-tensor content: " + ", ".join(s["non_tensor"]))
        lines.extend(f"    {k}: {v}" for k, v in s["non_tensor"].items())
    else:
        lines.append("  non-tensor content: none")
    rows: list[tuple[str, str, str, str, str]] = []
    for t in d["tensors"]:
        origin = []
        if t.get("original_name", t["name"]) != t["name"]:
            origin.append(f"from {t['original_name']}")
        if t.get("original_dtype") and t["original_dtype"] != t["dtype"]:
            origin.append(f"was {t['original_dtype']}")
        if t.get("original_layout"):
            origin.append(f"stored {t['original_layout']}")
        if t.get("tied_to"):
            origin.append(f"tied to {t['tied_to']}")
        rows.append((t.get("layer", ""), t["name"], "x".join(map(str, t["shape"])) or "scalar", t["dtype"],
                     " ".join(origin)))
    widths = [max([len(r[i]) for r in rows] + [0]) for i in range(1, 4)]
    kinds = _modules(ckpt)
    attrs = d["layers"]
    current = None
    for layer, name, shape, dtype, how in rows:
        if layer != current:
            current = layer
            head = layer or "(top level)"
            kind = kinds.get(layer, "")
            extra = f"  {json.dumps(attrs[layer]['attrs'], sort_keys=True)}" if layer in attrs else ""
            lines.append(f"{head}" + (f"  [{kind}]" if kind else "") + extra)
        cells = (name.ljust(widths[0]), shape.ljust(widths[1]), dtype.ljust(widths[2]))
        lines.append(("  " + "  ".join(cells) + "  " + how).rstrip())
    return "\n".join(lines)
