"""`hubfmt inspect`: what a checkpoint holds, for hub and native files alike."""
from __future__ import annotations

import json

from hubfmt.format.checkpoint import Checkpoint


def describe(ckpt: Checkpoint) -> dict:
    return {
        "source": {k: v for k, v in vars(ckpt.source).items() if v},
        "tensors": [
            {"name": n, "kind": e.info.kind, "role": e.info.role, "shape": list(e.tensor.shape),
             "dtype": e.tensor.dtype, **{k: v for k, v in e.info.to_json().items() if k not in ("kind", "role", "layer")}}
            for n, e in ckpt.entries.items()
        ],
        "layers": {p: {"kind": li.kind, "attrs": li.attrs} for p, li in ckpt.layers.items() if li.attrs},
        "extra_keys": sorted(map(str, ckpt.extra)),
    }


def to_text(ckpt: Checkpoint) -> str:
    d = describe(ckpt)
    lines = []
    src = d["source"]
    if src:
        lines.append("source: " + ", ".join(f"{k}={v}" for k, v in src.items()))
    rows = [("name", "kind", "shape", "dtype", "origin")]
    for t in d["tensors"]:
        origin = []
        if t.get("original_name", t["name"]) != t["name"]:
            origin.append(t["original_name"])
        if t.get("original_dtype") and t["original_dtype"] != t["dtype"]:
            origin.append(t["original_dtype"])
        if t.get("original_layout"):
            origin.append(t["original_layout"])
        if t.get("tied_to"):
            origin.append(f"tied to {t['tied_to']}")
        rows.append((t["name"], t["kind"], "x".join(map(str, t["shape"])) or "scalar", t["dtype"], " ".join(origin)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    total = ckpt.total_bytes()
    lines.append(f"{len(d['tensors'])} tensors, {total:,} bytes")
    for p, li in d["layers"].items():
        lines.append(f"layer {p} ({li['kind']}): {json.dumps(li['attrs'], sort_keys=True)}")
    if d["extra_keys"]:
        lines.append("non-tensor content: " + ", ".join(d["extra_keys"]))
    return "\n".join(lines)
