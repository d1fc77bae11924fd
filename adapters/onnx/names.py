"""ONNX initializers <-> canonical names, kinds and layouts, through the graph that uses them.

torch.onnx.export keeps state-dict names for most initializers (`conv1.weight`, `bn1.running_var`).
Those it makes itself (constant folding: `onnx::MatMul_96`, `onnx::Conv_25`; other exporters:
`/conv1/Conv_output_0`-like names) are named after the node input they feed: the node's scope
(`/layer1/layer1.0/conv1/Conv` -> `layer1.0.conv1`) plus the role of the input slot (Conv W/B ->
weight/bias, Gemm B/C -> weight/bias, BatchNormalization scale/B/mean/var -> weight/bias/
running_mean/running_var, ...). Kinds come from the consuming operator. Layouts: Conv weights are
OIHW as canonical; a MatMul weight is [in, out] and Gemm's is [in, out] unless transB=1, so those
are transposed to canonical [out, in] (original_layout "IO").
"""
from __future__ import annotations

from dataclasses import dataclass

from .proto import Model

# op_type -> {input index: canonical role}
SLOTS: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {1: "weight", 2: "bias"},
    "MatMul": {1: "weight"},
    "BatchNormalization": {1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"},
    "LayerNormalization": {1: "weight", 2: "bias"},
    "InstanceNormalization": {1: "weight", 2: "bias"},
    "GroupNormalization": {1: "weight", 2: "bias"},
    "Gather": {0: "weight"},
    "PRelu": {1: "weight"},
}
NORMS = {"BatchNormalization": "batch_norm", "LayerNormalization": "layer_norm",
         "InstanceNormalization": "instance_norm", "GroupNormalization": "group_norm"}
PASS_THROUGH = frozenset({"Identity", "Cast"})


@dataclass
class Use:
    """What an initializer is, from the node input it feeds."""

    canonical: str
    layer: str
    role: str
    kind: str
    transposed: bool        # stored [in, out]: canonical is its transpose
    constant: bool          # a generated name in no weight slot: a graph constant, not a weight
    attrs: dict
    alias_of: str = ""      # an Identity output standing for this initializer (torch merges equal ones)


def is_generated(name: str) -> bool:
    """A name the exporter made (not a state-dict name)."""
    return name.startswith("onnx::") or "/" in name or ":" in name or not name


def scope_path(node_name: str) -> str:
    """torch's node scope as a module path: each scope level is a module's name in its parent,
    containers' children written `parent.index`.

    >>> scope_path("/layer1/layer1.0/conv1/Conv"), scope_path("/mlp/mlp.0/MatMul"), scope_path("Conv_3")
    ('layer1.0.conv1', 'mlp.0', '')
    >>> scope_path("/bert/encoder/layer.0/attention/self/query/MatMul")
    'bert.encoder.layer.0.attention.self.query'
    """
    parts = [p for p in node_name.split("/") if p]
    path: list[str] = []
    for comp in parts[:-1]:
        if path and comp.startswith(path[-1] + "."):
            path[-1] = comp
        else:
            path.append(comp)
    return ".".join(path)


def _kind(op: str, rank: int, attrs: dict, dims: tuple) -> str:
    if op == "Conv":
        if rank == 4 and int(attrs.get("group", 1)) > 1 and dims[1] == 1:
            return "depthwise_conv2d"
        return {3: "conv1d", 4: "conv2d", 5: "conv3d"}.get(rank, "tensor")
    if op == "ConvTranspose":
        return {3: "conv_transpose1d", 4: "conv_transpose2d", 5: "conv_transpose3d"}.get(rank, "tensor")
    if op in ("Gemm", "MatMul"):
        return "linear"
    if op in NORMS:
        return NORMS[op]
    if op == "Gather":
        return "embedding" if rank == 2 else "tensor"
    if op == "PRelu":
        return "prelu"
    return "tensor"


def uses(model: Model) -> dict[str, Use]:
    """Initializer name -> Use, for every initializer of the model."""
    consumers: dict[str, list[tuple[int, int]]] = {}
    for k, node in enumerate(model.nodes):
        for i, inp in enumerate(node.inputs):
            if inp:
                consumers.setdefault(inp, []).append((k, i))

    def slot(name: str, flipped: bool = False, depth: int = 0):
        """(node, input index, flipped) of the first weight slot `name` feeds, through Identity,
        Cast and 2-D Transposes."""
        for k, i in consumers.get(name, []):
            node = model.nodes[k]
            if i in SLOTS.get(node.op_type, {}):
                return node, i, flipped
        if depth < 4:
            for k, _ in consumers.get(name, []):
                node = model.nodes[k]
                perm = node.attrs.get("perm")
                if node.op_type in PASS_THROUGH or (node.op_type == "Transpose" and perm in (None, [1, 0])):
                    for out in node.outputs:
                        hit = slot(out, flipped ^ (node.op_type == "Transpose"), depth + 1)
                        if hit:
                            return hit
        return None

    def use(name: str, dims: tuple) -> Use:
        hit = slot(name)
        generated = is_generated(name)
        if hit is None:
            layer, _, role = name.rpartition(".")
            return Use(name, layer if not generated else "", role if not generated else "",
                       "tensor", False, generated, {})
        node, i, flipped = hit
        role = SLOTS[node.op_type][i]
        rank = len(dims)
        kind = _kind(node.op_type, rank, node.attrs, dims)
        transposed = False
        if kind == "linear":
            if i == 1 and rank == 2:
                stored_io = node.op_type == "MatMul" or not int(node.attrs.get("transB", 0))
                transposed = stored_io != flipped
            elif not (i == 2 and rank == 1):
                kind = "tensor"     # a batched MatMul operand, a broadcast Gemm C: no layer layout
        attrs: dict = {}
        if kind in ("batch_norm", "layer_norm", "instance_norm", "group_norm") and "epsilon" in node.attrs:
            attrs["eps"] = float(node.attrs["epsilon"])
        if generated:
            layer = scope_path(node.name)
            canonical = f"{layer}.{role}" if layer else name
        else:
            layer, _, own_role = name.rpartition(".")
            canonical = name
            role = own_role or role
        return Use(canonical, layer, role, kind, transposed, False, attrs)

    out = {t.name: use(t.name, t.dims) for t in model.initializers}
    # torch.onnx.export keeps one of several initializers of equal value and feeds the others'
    # consumers through Identity nodes named as the dropped parameters: those are tied aliases
    inits = {t.name: t for t in model.initializers}
    for node in model.nodes:
        if node.op_type != "Identity" or len(node.inputs) != 1 or node.inputs[0] not in inits or not node.outputs:
            continue
        name = node.outputs[0]
        if is_generated(name) or name in out or out[node.inputs[0]].constant:
            continue
        alias = use(name, inits[node.inputs[0]].dims)
        if not alias.constant:
            alias.alias_of = node.inputs[0]
            out[name] = alias
    return out
