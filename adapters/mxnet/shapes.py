"""The feature map a FullyConnected flattens, inferred through a symbol graph (spec section 3.5).

MXNet flattens an NCHW map in C,H,W order, the canonical order, so an MXNet source needs no
permutation; but a channels-last destination (Keras, TF) must permute a Dense's rows, and for that
it needs the map's [C, H, W], which no parameter shape shows. A symbol records it only when its
data variable carries a `__shape__` (`mx.sym.var("data", shape=(1, 3, 32, 32))`): from there the
shapes are propagated through the operators that keep or compute a map (Convolution, Pooling,
activations, norms, elementwise ops, Concat) to each FullyConnected fed by a Flatten (or flattening
a 4-D input itself). Any operator not modelled here, or a data variable without a shape, leaves
the map unknown: then a channels-last writer refuses the layer (hubfmt.sdk.flatten) rather than
guess.

>>> nodes = [{"op": "null", "name": "data", "attrs": {"__shape__": "(1, 3, 8, 8)"}},
...          {"op": "null", "name": "c_weight"},
...          {"op": "Convolution", "name": "c", "attrs": {"kernel": "(3, 3)", "num_filter": "4"},
...           "inputs": [[0, 0, 0], [1, 0, 0]]},
...          {"op": "Pooling", "name": "p", "attrs": {"kernel": "(2, 2)", "stride": "(2, 2)"}, "inputs": [[2, 0, 0]]},
...          {"op": "Flatten", "name": "f", "inputs": [[3, 0, 0]]},
...          {"op": "null", "name": "fc_weight"},
...          {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "5"}, "inputs": [[4, 0, 0], [5, 0, 0]]}]
>>> flattened_maps(nodes, lambda n: n.get("attrs", {}))
{'fc': (4, 3, 3)}
"""
from __future__ import annotations

import ast
import math

# Operators whose output map has the shape of their first input.
_SAME = {"Activation", "relu", "sigmoid", "tanh", "LeakyReLU", "BatchNorm", "BatchNorm_v1", "SyncBatchNorm",
         "_contrib_SyncBatchNorm", "Dropout", "InstanceNorm", "LayerNorm", "GroupNorm", "LRN", "elemwise_add",
         "_Plus", "_plus", "broadcast_add", "elemwise_mul", "broadcast_mul", "_mul_scalar", "_plus_scalar", "clip",
         "identity", "_copy", "BlockGrad", "softmax", "SoftmaxActivation"}


def attr_tuple(text, default=None, limit: int = 1000):
    """A symbol attribute such as "(3, 3)" or "64" as a tuple of ints; `default` when it is absent
    or unreadable (at most `limit` characters are parsed: the file is untrusted)."""
    if text is None:
        return default
    try:
        v = ast.literal_eval(str(text)[:limit])
        return tuple(int(x) for x in (v if isinstance(v, (tuple, list)) else (v,)))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return default      # an attribute we cannot read is treated as absent


def _tuple(text):
    return attr_tuple(text, None, 200)


def _spatial(a: dict, hw: tuple[int, int], pool: bool) -> tuple[int, int] | None:
    if pool and str(a.get("global_pool", "False")).lower() in ("true", "1"):
        return 1, 1
    kernel = _tuple(a.get("kernel"))
    if kernel is None or len(kernel) != 2:
        return None
    stride = _tuple(a.get("stride")) or (1, 1)
    pad = _tuple(a.get("pad")) or (0, 0)
    dilate = (1, 1) if pool else (_tuple(a.get("dilate")) or (1, 1))
    ceil = pool and a.get("pooling_convention", "valid") == "full"
    out = []
    for i in range(2):
        span = hw[i] + 2 * pad[i] - dilate[i] * (kernel[i] - 1) - 1
        out.append((math.ceil(span / stride[i]) if ceil else span // stride[i]) + 1)
    return (out[0], out[1]) if min(out) > 0 else None


def flattened_maps(nodes: list[dict], attrs_of) -> dict[str, tuple[int, int, int]]:
    """FullyConnected node name -> (C, H, W) of the map it flattens (H*W > 1), where the graph
    gives it; `attrs_of(node)` is a node's attributes (symbol.node_attrs)."""
    shapes: list[tuple | None] = []          # each node's first output: (C, H, W), ("flat", C, H, W) or None
    out: dict[str, tuple[int, int, int]] = {}

    def first(node, k=0):
        inputs = node.get("inputs") or []
        try:
            i = int(inputs[k][0])
            return shapes[i] if 0 <= i < len(shapes) else None
        except (TypeError, ValueError, IndexError):
            return None

    for node in nodes:
        op, a = node.get("op"), attrs_of(node)
        x = first(node) if op != "null" else None
        shape: tuple | None = None
        if op == "null":
            s = _tuple(a.get("__shape__"))
            shape = tuple(s[1:]) if s and len(s) == 4 and all(s[1:]) else None
        elif x is not None and x[0] != "flat":
            if op in ("Convolution", "Convolution_v1"):
                hw = _spatial(a, x[1:], pool=False)
                filters = _tuple(a.get("num_filter"))
                shape = (filters[0], *hw) if hw and filters else None
            elif op == "Pooling":
                hw = _spatial(a, x[1:], pool=True)
                shape = (x[0], *hw) if hw else None
            elif op in _SAME:
                shape = x
            elif op == "Concat" and str(a.get("dim", "1")) == "1":
                parts = [first(node, k) for k in range(len(node.get("inputs") or []))]
                if all(p is not None and p[0] != "flat" and p[1:] == x[1:] for p in parts):
                    shape = (sum(p[0] for p in parts), *x[1:])      # type: ignore[index]
            elif op == "Flatten":
                shape = ("flat", *x)
            elif op == "FullyConnected" and str(a.get("flatten", "True")).lower() in ("true", "1"):
                if x[1] * x[2] > 1:
                    out[node["name"]] = (int(x[0]), int(x[1]), int(x[2]))
        elif x is not None and op == "FullyConnected":
            if x[2] * x[3] > 1:
                out[node["name"]] = (int(x[1]), int(x[2]), int(x[3]))
        shapes.append(shape)
    return out
