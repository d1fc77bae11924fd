"""The `prefix-symbol.json` graph: which parameter feeds which operator, with what attributes.

A symbol file is {"nodes": [{"op", "name", "attrs"|"attr"|"param", "inputs": [[node, out, ver]]}],
"arg_nodes", "heads", "attrs": {"mxnet_version": ...}}. Parameters are "null" nodes; what a
parameter IS comes from the operator that consumes it and the input slot it fills (Convolution's
slot 1 is the weight, BatchNorm's slots 3 and 4 its running statistics). Attributes an operator
leaves at its default are not written, so the defaults below matter: BatchNorm eps 1e-3 and
fix_gamma True are the SYMBOL defaults (Gluon writes its own 1e-5 / False explicitly).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from hubfmt.sdk import FormatError

from . import names
from .shapes import attr_tuple as _tuple, flattened_maps

MAX_SYMBOL = 256 * 2**20

_BN_OPS = ("BatchNorm", "BatchNorm_v1", "_contrib_SyncBatchNorm", "SyncBatchNorm")
# op -> {input slot: canonical role}
_SLOTS = {
    "Convolution": {1: "weight", 2: "bias"}, "Convolution_v1": {1: "weight", 2: "bias"},
    "Deconvolution": {1: "weight", 2: "bias"},
    "FullyConnected": {1: "weight", 2: "bias"},
    "Embedding": {1: "weight"},
    "LayerNorm": {1: "weight", 2: "bias"}, "InstanceNorm": {1: "weight", 2: "bias"},
    "GroupNorm": {1: "weight", 2: "bias"},
    "LeakyReLU": {1: "weight"},
    **{op: {1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"} for op in _BN_OPS},
}


@dataclass
class ParamUse:
    """A parameter of the graph and the operator that consumes it."""

    name: str           # MXNet name (no arg:/aux:)
    role: str           # canonical role from the slot
    op: str             # operator type, e.g. "Convolution"
    node: str           # operator node name
    kind: str           # canonical layer kind
    attrs: dict = field(default_factory=dict)    # canonical layer attributes
    aux: bool = False   # an auxiliary state (aux:) rather than an argument (arg:)
    shape: tuple | None = None   # what the graph implies, None for dims it leaves to inference


@dataclass
class Graph:
    path: str
    doc: dict
    params: dict[str, ParamUse]          # graph order
    version: str = ""                    # MXNet version that wrote it, e.g. "1.9.1"
    text: str = ""                       # the JSON as found, to write back unchanged


def symbol_path_for(params_path: str) -> str:
    """`prefix-0000.params` -> `prefix-symbol.json`; `model.params` -> `model-symbol.json`."""
    m = re.match(r"^(.*)-\d+\.params$", params_path)
    if m:
        return m.group(1) + "-symbol.json"
    stem = params_path[: -len(".params")] if params_path.endswith(".params") else params_path
    return stem + "-symbol.json"




def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _bool(text, default: bool) -> bool:
    if text is None:
        return default
    return str(text).strip().lower() in ("true", "1")


def _float(text, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


def layer_of(op: str, a: dict) -> tuple[str, dict]:
    """(canonical kind, canonical attributes) of an operator with raw attributes `a`."""
    if op in ("Convolution", "Convolution_v1", "Deconvolution"):
        kernel = _tuple(a.get("kernel"), (1, 1))
        n = len(kernel)
        attrs = {"kernel_size": list(kernel), "stride": list(_tuple(a.get("stride"), (1,) * n)),
                 "padding": list(_tuple(a.get("pad"), (0,) * n)),
                 "dilation": list(_tuple(a.get("dilate"), (1,) * n)),
                 "groups": _int(a.get("num_group")) or 1}
        if op == "Deconvolution":
            attrs["output_padding"] = list(_tuple(a.get("adj"), (0,) * n))
            return f"conv_transpose{n}d", attrs
        return f"conv{n}d", attrs
    if op in _BN_OPS:
        momentum = _float(a.get("momentum"), 0.9)
        return "batch_norm", {"eps": _float(a.get("eps"), 1e-3),
                              "momentum": round(1.0 - momentum, 12),     # MXNet 0.9 == torch 0.1
                              "fix_gamma": _bool(a.get("fix_gamma"), True),
                              "use_global_stats": _bool(a.get("use_global_stats"), False)}
    if op == "FullyConnected":
        return "linear", {"flatten": _bool(a.get("flatten"), True)}
    if op == "Embedding":
        return "embedding", {}
    if op == "LayerNorm":
        return "layer_norm", {"eps": _float(a.get("eps"), 1e-5)}
    if op == "InstanceNorm":
        return "instance_norm", {"eps": _float(a.get("eps"), 1e-3)}
    if op == "GroupNorm":
        return "group_norm", {"eps": _float(a.get("eps"), 1e-5), "num_groups": _int(a.get("num_groups")) or 1}
    if op == "LeakyReLU" and a.get("act_type") == "prelu":
        return "prelu", {}
    return "tensor", {}


def shape_hint(op: str, role: str, a: dict, var_attrs: dict) -> tuple | None:
    """The parameter shape an operator implies (None for unknown dims), merged with the
    variable's own `__shape__` (Gluon export writes it, 0 meaning 'inferred')."""
    hint = None
    if op in ("Convolution", "Convolution_v1", "Deconvolution"):
        n = _int(a.get("num_filter"))
        kernel = _tuple(a.get("kernel"), None)
        if role == "weight" and kernel is not None:
            hint = ((None, None) if op == "Deconvolution" else (n, None)) + tuple(kernel)
        elif role == "bias":
            hint = (n,)
    elif op == "FullyConnected":
        n = _int(a.get("num_hidden"))
        hint = (n, None) if role == "weight" else (n,)
    elif op in _BN_OPS:
        hint = (None,)
    elif op == "Embedding":
        hint = (_int(a.get("input_dim")), _int(a.get("output_dim")))
    declared = _tuple(var_attrs.get("__shape__"), None)
    if declared is not None:
        declared = tuple(d if d > 0 else None for d in declared)
        if hint is None or len(hint) != len(declared):
            return declared if hint is None else hint
        hint = tuple(h if h is not None else d for h, d in zip(hint, declared, strict=True))
    return hint


ATTR_KEYS = ("param", "attr", "attrs")


def node_attrs(node: dict) -> dict:
    """An operator's attributes: MXNet >= 1.2 writes "attrs", 0.9-1.1 "attr", pre-nnvm files
    "param" (operator parameters) beside "attr" (user attributes); merged, later keys winning."""
    out = {}
    for key in ATTR_KEYS:
        if isinstance(node.get(key), dict):
            out.update(node[key])
    return out


def load(path: str) -> Graph:
    """Parse a symbol file into its parameters in graph order.

    >>> g = load("dpn68-symbol.json")                 # doctest: +SKIP
    >>> g.params["conv1_x_1__conv_weight"].kind      # doctest: +SKIP
    'conv2d'
    """
    try:
        if os.path.getsize(path) > MAX_SYMBOL:
            raise FormatError(f"symbol file larger than {MAX_SYMBOL >> 20} MiB", path)
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path) from None
    return parse(raw, path)


def parse(raw: bytes | str, path: str) -> Graph:
    """Parse symbol JSON text; `path` names it in errors."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        doc = json.loads(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"symbol file is not valid JSON: {e}", path) from None
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(nodes, list) or not all(isinstance(n, dict) and "name" in n and "op" in n for n in nodes):
        raise FormatError("not an MXNet symbol file: no 'nodes' list of {op, name}", path)
    uses: dict[int, ParamUse] = {}
    for node in nodes:
        if node["op"] == "null":
            continue
        op = node["op"]
        kind, attrs = layer_of(op, node_attrs(node))
        inputs = node.get("inputs") or []
        if not isinstance(inputs, list):
            raise FormatError(f"node {node['name']!r}: inputs is not a list", path)
        slots = _SLOTS.get(op, {})
        for slot, inp in enumerate(inputs):
            try:
                src = int(inp[0])
                if not 0 <= src < len(nodes):
                    raise IndexError(src)
                target = nodes[src]
            except (TypeError, ValueError, IndexError, KeyError):
                raise FormatError(f"node {node['name']!r}: bad input {inp!r}", path) from None
            if target["op"] != "null" or src in uses:
                continue
            if slot in slots:
                role = slots[slot]
            else:
                # a variable fed to an operator we do not model: a parameter only if MXNet's own
                # naming says so (e.g. an explicit `conv_weight` variable); data inputs otherwise
                _, mx_role = names.split(target["name"])
                if not mx_role:
                    continue
                role = names.ROLES[mx_role]
            raw = node_attrs(node)
            uses[src] = ParamUse(target["name"], role, op, node["name"], kind, attrs,
                                 aux=(op in _BN_OPS and slot in (3, 4)) or names.is_aux(target["name"]),
                                 shape=shape_hint(op, role, raw, node_attrs(target)))
    # A FullyConnected fed by a flattened map the graph can size (a data `__shape__`): its rows are
    # C,H,W of that map, recorded so that a channels-last writer permutes them (spec 3.5).
    maps = flattened_maps(nodes, node_attrs)
    for use in uses.values():
        if use.op == "FullyConnected" and use.node in maps:
            use.attrs.update({"flatten": list(maps[use.node]), "flatten_source": "CHW"})
    version = ""
    mv = (doc.get("attrs") or {}).get("mxnet_version") if isinstance(doc.get("attrs"), dict) else None
    if isinstance(mv, list) and len(mv) == 2 and isinstance(mv[1], int):
        v = mv[1]
        version = f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    params = {uses[i].name: uses[i] for i in sorted(uses)}
    return Graph(path, doc, params, version, text)
