"""Flax parameter trees <-> canonical names, kinds and layouts.

A variables tree is `{"params": {...}, "batch_stats": {...}}` (Linen `init`/`apply` variables,
`flax.serialization.to_bytes(variables)`) or a bare params tree (HF `flax_model.msgpack`). The
module path is the keys below the collection, joined by "."; the leaf key gives the role:

    kernel -> weight    bias -> bias    scale -> weight    embedding -> weight
    batch_stats mean -> running_mean    batch_stats var -> running_var

Layouts: Dense kernels [in, out] (canonical [out, in]), Conv kernels HWIO / WIO / DHWIO (canonical
OIHW ...), attention DenseGeneral kernels `query`/`key`/`value` [d, heads, head_dim] and `out`
[heads, head_dim, d], with biases [heads, head_dim] / [d], as canonical linear layers
[heads*head_dim, d] / [d, heads*head_dim] (the Keras MultiHeadAttention forms; torch's split q/k/v).
A rank-3 kernel is an attention projection when its module is query/key/value/out (or its bias is
2-D); otherwise a Conv1D kernel. Flax files do not say which Conv is a ConvTranspose: a 4-D kernel
reads as conv2d.
"""
from __future__ import annotations

from dataclasses import dataclass

PARAMS, BATCH_STATS = "params", "batch_stats"
ATTENTION_IN = frozenset({"query", "key", "value"})
ATTENTION_OUT = frozenset({"out"})
ROLE = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight",
        "mean": "running_mean", "var": "running_var"}
NATIVE_ROLE = {"running_mean": "mean", "running_var": "var"}
# kernel rank -> axis permutation from the Flax kernel to canonical
_CONV_PERM = {3: (2, 1, 0), 4: (3, 2, 0, 1), 5: (4, 3, 0, 1, 2)}
_CONV_KIND = {3: "conv1d", 4: "conv2d", 5: "conv3d"}


@dataclass
class Leaf:
    """What one array of the tree is."""

    path: tuple             # keys from the root, collection included
    canonical: str
    layer: str
    role: str
    kind: str
    transform: str          # "", "T", "conv", "qkv", "out", "qkv_bias"
    shape: tuple            # as stored

    @property
    def original_layout(self) -> str:
        return {"T": "IO", "conv": {3: "LIO", 4: "HWIO", 5: "DHWIO"}.get(len(self.shape), ""),
                "qkv": "IO", "out": "IO"}.get(self.transform, "")


def is_variables(tree: dict) -> bool:
    """A Linen variables tree ({"params": ..., ...}) rather than a bare params tree."""
    return isinstance(tree, dict) and PARAMS in tree and isinstance(tree[PARAMS], dict)


_ATTENTION_ORDER = {"query": 0, "key": 1, "value": 2, "out": 3}


def _natural(key: str):
    """Sort key: `Dense_2` before `Dense_10`."""
    head, sep, num = key.rpartition("_")
    return (head, int(num), "") if sep and num.isdigit() else (key, -1, key)


def model_order(keys) -> list[str]:
    """Keys in the order a model declares them, as far as the tree tells. `init` keeps creation
    order, but any jax tree operation (tree_map, an optax update) sorts dict keys, so a fine-tuned
    tree is alphabetical (`key` < `out` < `query` < `value`, `Dense_10` < `Dense_2`), which is
    no evidence for alignment. Sorted keys are put in model order where names tell it: attention
    projections query, key, value, out (as torch and Keras declare them), auto-named modules by
    their counter."""
    keys = list(keys)
    if keys != sorted(keys):
        return keys             # not sorted: the order the model created them in (a fresh init)
    if {"query", "key", "value"} <= set(keys):
        return sorted(keys, key=lambda k: (_ATTENTION_ORDER.get(k, 4), k))
    return sorted(keys, key=_natural)


def leaves(tree: dict, shape_of) -> list[Leaf]:
    """Every array leaf of `tree` (shape_of(value) -> shape, or None for a non-array), in
    model_order (collections in the tree's order)."""
    flat: list[tuple[tuple, tuple]] = []

    def walk(node, path):
        if isinstance(node, dict):
            for k in (node if not path else model_order(node)):
                walk(node[k], path + (k,))
        else:
            shape = shape_of(node)
            if shape is not None:
                flat.append((path, tuple(shape)))
    walk(tree, ())
    grouped = is_variables(tree)
    by_layer: dict[tuple, dict[str, tuple]] = {}
    for path, shape in flat:
        mod = path[1:-1] if grouped else path[:-1]
        by_layer.setdefault(mod, {})[path[-1]] = shape
    stats = {p[1:-1] for p, _ in flat if grouped and p[0] == BATCH_STATS}
    out = []
    for path, shape in flat:
        mod = path[1:-1] if grouped else path[:-1]
        key = path[-1]
        layer = ".".join(mod)
        siblings = by_layer[mod]
        role = ROLE.get(key, key)
        if key in ("mean", "var") and not (grouped and path[0] == BATCH_STATS):
            role = key              # running statistics live in batch_stats only
        kind, transform = "tensor", ""
        rank = len(shape)
        if "embedding" in siblings:
            kind = "embedding"
        elif "kernel" in siblings:
            krank = len(siblings["kernel"])
            name = mod[-1] if mod else ""
            attention = krank == 3 and (name in ATTENTION_IN | ATTENTION_OUT or len(siblings.get("bias", ())) == 2)
            if krank == 2:
                kind = "linear"
                transform = "T" if key == "kernel" else ""
            elif attention:
                kind = "linear"
                if key == "kernel":
                    transform = "out" if name in ATTENTION_OUT else "qkv"
                elif key == "bias" and rank == 2:
                    transform = "qkv_bias"
            elif krank in _CONV_KIND:
                kind = _CONV_KIND[krank]
                transform = "conv" if key == "kernel" else ""
        elif "scale" in siblings or mod in stats:
            kind = "batch_norm" if mod in stats else "layer_norm"
        canonical = f"{layer}.{role}" if layer else role
        out.append(Leaf(path, canonical, layer, role, kind, transform, shape))
    return out


def canonical_shape(leaf: Leaf) -> tuple:
    s = leaf.shape
    if leaf.transform == "T":
        return (s[1], s[0])
    if leaf.transform == "conv":
        return tuple(s[i] for i in _CONV_PERM[len(s)])
    if leaf.transform == "qkv":
        return (s[1] * s[2], s[0])
    if leaf.transform == "out":
        return (s[2], s[0] * s[1])
    if leaf.transform == "qkv_bias":
        return (s[0] * s[1],)
    return s


def to_canonical(arr, leaf: Leaf):
    """A stored array -> its canonical layout (a contiguous copy when it moves)."""
    import numpy as np

    t = leaf.transform
    if t == "T":
        return np.ascontiguousarray(arr.T)
    if t == "conv":
        return np.ascontiguousarray(arr.transpose(_CONV_PERM[arr.ndim]))
    if t == "qkv":
        return np.ascontiguousarray(arr.reshape(arr.shape[0], -1).T)
    if t == "out":
        return np.ascontiguousarray(arr.reshape(-1, arr.shape[-1]).T)
    if t == "qkv_bias":
        return arr.reshape(-1)
    return arr


def from_canonical(arr, leaf: Leaf):
    """A canonical array -> the layout and shape of `leaf` (its inverse of to_canonical)."""
    import numpy as np

    t, s = leaf.transform, leaf.shape
    if t == "T":
        return np.ascontiguousarray(arr.T)
    if t == "conv":
        inv = np.argsort(_CONV_PERM[arr.ndim])
        return np.ascontiguousarray(arr.transpose(inv))
    if t == "qkv":
        return np.ascontiguousarray(arr.T).reshape(s)
    if t == "out":
        return np.ascontiguousarray(arr.T).reshape(s)
    if t == "qkv_bias":
        return arr.reshape(s)
    return arr


def native_leaf(name: str, kind: str, shape: tuple) -> Leaf:
    """Where a canonical tensor goes in a Flax tree written without a template."""
    layer, _, role = name.rpartition(".")
    mod = tuple(layer.split(".")) if layer else ()
    rank = len(shape)
    coll = PARAMS
    transform = ""
    if kind == "embedding" and role == "weight":
        key = "embedding"
    elif kind in ("batch_norm", "layer_norm", "group_norm", "instance_norm"):
        key = {"weight": "scale"}.get(role, NATIVE_ROLE.get(role, role))
        if role in NATIVE_ROLE:
            coll = BATCH_STATS
    elif kind == "linear" and role == "weight" and rank == 2:
        key, transform = "kernel", "T"
    elif kind in _CONV_KIND.values() and role == "weight" and rank in _CONV_PERM:
        key, transform = "kernel", "conv"
    else:
        key = role or name
    path = (coll,) + mod + (key,)
    leaf = Leaf(path, name, layer, role, kind, transform, ())
    if transform == "T":
        leaf.shape = (shape[1], shape[0])
    elif transform == "conv":
        inv = [0] * rank
        for i, p in enumerate(_CONV_PERM[rank]):
            inv[p] = i
        leaf.shape = tuple(shape[inv[i]] for i in range(rank))
    else:
        leaf.shape = tuple(shape)
    return leaf
