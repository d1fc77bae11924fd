"""Reading flax.serialization msgpack files without flax: a lazy, canonical Checkpoint."""
from __future__ import annotations

import os

from hubfmt.sdk import Checkpoint, FormatError, LayerInfo, LazyTensor, SourceInfo, TensorInfo

from . import msgpack_tree, names
from .formats import FORMAT


def sniff(path: str | os.PathLike) -> str | None:
    """FORMAT when `path` holds a flax msgpack tree with at least one array, else None. Never raises."""
    path = os.fspath(path)
    try:
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            head = f.read(1)
        if not head or not (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
            return None
        tree = msgpack_tree.scan(path)
    except (FormatError, OSError, ValueError):
        return None
    return FORMAT if array_leaves(tree) else None


def shape_of(value):
    return value.shape if isinstance(value, LazyTensor) else None


def array_leaves(tree) -> list[names.Leaf]:
    return names.leaves(tree, shape_of) if isinstance(tree, dict) else []


def get(tree, path: tuple):
    for k in path:
        tree = tree[k]
    return tree


def plain_leaves(tree, path=()):
    """(path, value) of every non-array leaf."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from plain_leaves(v, path + (k,))
    elif not isinstance(tree, LazyTensor):
        yield path, tree


def to_checkpoint(tree, shape_of, tensor_of, source: SourceInfo) -> Checkpoint:
    """A tree's array leaves as canonical tensors (shape_of(value) -> shape or None for a
    non-array; tensor_of(value) -> LazyTensor as stored)."""
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    ckpt.source = source
    found = names.leaves(tree, shape_of)
    counts: dict[str, int] = {}
    for leaf in found:
        counts[leaf.canonical] = counts.get(leaf.canonical, 0) + 1
    for leaf in found:
        native = "/".join(leaf.path)
        t = tensor_of(get(tree, leaf.path))
        if leaf.transform:
            t = t.map(lambda a, leaf=leaf: names.to_canonical(a, leaf), names.canonical_shape(leaf))
        name = leaf.canonical if counts[leaf.canonical] == 1 else native
        ckpt.add(name, t, TensorInfo(kind=leaf.kind, role=leaf.role, layer=leaf.layer, original_name=native,
                                     original_dtype=t.dtype, original_layout=leaf.original_layout,
                                     original_shape=leaf.shape))
        if leaf.kind != "tensor" and leaf.layer:
            ckpt.layers.setdefault(leaf.layer, LayerInfo(leaf.kind))
        if name != native:
            ckpt.report.renamed(native, name)
    ckpt.report.tensors_in = len(found)
    return ckpt


def read(path: str | os.PathLike) -> Checkpoint:
    """A flax msgpack state file as a canonical, lazy Checkpoint; non-array leaves (step counters,
    config values) go to ckpt.extra under their "/"-joined path.

    >>> ckpt = read("flax_model.msgpack")              # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FormatError("no such file", path)
    tree = msgpack_tree.scan(path)
    if not isinstance(tree, dict):
        raise FormatError("not a flax state file: the msgpack value is not a map", path)
    ckpt = to_checkpoint(tree, shape_of, lambda t: t, SourceInfo("flax", "", os.path.basename(path), FORMAT))
    ckpt.extra = {"flax": {"collections": names.is_variables(tree)}}
    for p, value in plain_leaves(tree):
        if isinstance(value, (bool, int, float, str)) or value is None:
            ckpt.extra["/".join(p)] = value
        else:
            ckpt.report.add("dropped", "/".join(p), f"a {type(value).__name__} leaf has no canonical form")
    return ckpt
