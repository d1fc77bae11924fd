"""Canonical Checkpoint -> a flax.serialization msgpack file, streamed and atomic, without flax.

With a template (a msgpack file of the target model, e.g. `to_bytes(model.init(...))`) the output
is the template's tree: its keys in its order, every array replaced by the checkpoint's tensor of
the same canonical name (shapes checked, the template's dtypes), non-array leaves kept. Without
one, the tree is built from the canonical names (a Flax source's own paths and layouts come back;
other sources get `params`/`batch_stats` with Flax's leaf names and layouts, see names.py).
`from_bytes(target, data)` and `msgpack_restore` read the output.
"""
from __future__ import annotations

import os

import numpy as np

from hubfmt.sdk import (OUTPUT_BUFFER, Checkpoint, ConversionError, LazyTensor, Progress, Report, TensorStream, atomic_output,
                        dtypes)

from . import msgpack_tree, names, reader


class _Array:
    """An array leaf to write: the tensor (canonical layout) and the leaf it becomes."""

    def __init__(self, tensor: LazyTensor, leaf: names.Leaf, dtype: str, scalar: bool = False):
        if leaf.transform:
            tensor = tensor.map(lambda a: names.from_canonical(a, leaf), leaf.shape)
        self.tensor = tensor
        self.leaf = leaf
        self.dtype = dtype
        self.scalar = scalar


def match(ckpt: Checkpoint, template_leaves: list[names.Leaf], report: Report, strict: bool):
    """[(template leaf, canonical name or None)] and the names left over; shapes checked."""
    by_native = {e.info.original_name: n for n, e in ckpt.entries.items() if e.info.original_name}
    out = []
    taken = set()
    for leaf in template_leaves:
        native = "/".join(leaf.path)
        src = leaf.canonical if leaf.canonical in ckpt else by_native.get(native)
        if src is None:
            if strict:
                raise ConversionError(f"the checkpoint has no {leaf.canonical!r} for the template's {native!r} "
                                      "(-W strict=false keeps the template's)")
            report.add("missing", leaf.canonical, f"kept the template's {native!r} (strict=False)")
            out.append((leaf, None))
            continue
        want = names.canonical_shape(leaf)
        have = ckpt[src].tensor.shape
        if tuple(have) != tuple(want):
            raise ConversionError(f"{src!r} has shape {list(have)}, the template's {native!r} needs {list(want)} "
                                  f"(stored as {list(leaf.shape)})")
        taken.add(src)
        out.append((leaf, src))
    rest = []
    for n, e in ckpt.entries.items():
        if n in taken:
            continue
        if e.info.role == "num_batches_tracked":
            report.add("dropped", n, "Flax BatchNorm keeps no step count")
        elif strict:
            raise ConversionError(f"tensor {n!r} has no place in the template (-W strict=false drops it)")
        else:
            report.add("dropped", n, "no place in the template")
            rest.append(n)
    return out, rest


def _set(tree: dict, path: tuple, value, what: str) -> None:
    for k in path[:-1]:
        node = tree.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConversionError(f"{what}: {'/'.join(path)} would sit under the array {k!r}")
        tree = node
    if path[-1] in tree:
        raise ConversionError(f"{what}: two tensors would be written as {'/'.join(path)}")
    tree[path[-1]] = value


def _without_template(ckpt: Checkpoint, report: Report, collections: bool | None) -> dict:
    tree: dict = {}
    flax_source = ckpt.source.framework == "flax"
    own: dict[tuple, names.Leaf] = {}
    if flax_source:
        # a Flax source's own paths and stored shapes: its layout transforms come back with them
        probe: dict = {}
        for n, e in ckpt.entries.items():
            if e.info.original_name and e.info.original_shape is not None:
                _set(probe, tuple(e.info.original_name.split("/")), tuple(e.info.original_shape), n)
        own = {lf.path: lf for lf in names.leaves(probe, lambda v: v if isinstance(v, tuple) else None)}
    for n, e in ckpt.entries.items():
        info = e.info
        if info.role == "num_batches_tracked":
            report.add("dropped", n, "Flax BatchNorm keeps no step count")
            continue
        leaf = own.get(tuple(info.original_name.split("/"))) if own and info.original_name else None
        if leaf is not None and names.canonical_shape(leaf) != tuple(e.tensor.shape):
            leaf = None
        if leaf is None:
            layer = ckpt.layers.get(info.layer)
            kind = info.kind if info.kind != "tensor" or layer is None else layer.kind
            leaf = names.native_leaf(n, kind, tuple(e.tensor.shape))
        if leaf.path[-1] != n.rpartition(".")[2] or leaf.transform:
            report.renamed(n, "/".join(leaf.path))
        _set(tree, leaf.path, _Array(e.tensor, leaf, e.tensor.dtype), n)
    for key, value in ckpt.extra.items():
        if key == "flax":
            continue
        if flax_source and isinstance(value, (bool, int, float, str)):
            _set(tree, tuple(key.split("/")), value, key)       # a Flax source's own leaf, back in place
        else:
            report.add("dropped", key, "non-tensor content has no place in a Flax tree written without a template")
    bare = collections is False or (collections is None and flax_source
                                    and (ckpt.extra.get("flax") or {}).get("collections") is False)
    if bare:
        if set(tree) - {names.PARAMS}:
            raise ConversionError("a bare params tree (collections=false) cannot hold batch_stats")
        tree = tree.get(names.PARAMS, {})
    return tree


def _with_template(ckpt: Checkpoint, template: str, report: Report, strict: bool) -> dict:
    tpl = msgpack_tree.scan(template)
    if not isinstance(tpl, dict):
        raise ConversionError("the template is not a flax state file (its msgpack value is not a map)", template)
    pairs, _ = match(ckpt, reader.array_leaves(tpl), report, strict)
    replace = {leaf.path: (leaf, src) for leaf, src in pairs}

    def rebuild(node, path):
        if isinstance(node, dict):
            return {k: rebuild(v, path + (k,)) for k, v in node.items()}
        if path in replace:
            leaf, src = replace[path]
            if src is None:
                return _Array(node, names.Leaf(path, "", "", "", "tensor", "", node.shape), node.dtype)
            t = ckpt[src].tensor
            if t.dtype != node.dtype:
                report.add("cast", src, f"{t.dtype}->{node.dtype} (the template's dtype)")
            if src != "/".join(path):
                report.renamed(src, "/".join(path))
            return _Array(t, leaf, node.dtype)
        return node
    return rebuild(tpl, ())


def _chunked(f, node: _Array, piece) -> None:
    """An array over MAX_CHUNK_SIZE as flax writes it (msgpack cannot hold a leaf over 2 GiB):
    {"__msgpack_chunked_array__": True, "shape": {"0": d0, ...}, "chunks": {"0": flat part, ...}}."""
    flat = piece.array().reshape(-1)            # one tensor in memory, as every writer holds it
    per = max(1, msgpack_tree.MAX_CHUNK_SIZE // dtypes.itemsize(node.dtype))
    starts = range(0, flat.size, per)
    plain = msgpack_tree.plain
    f.write(msgpack_tree.map_header(3) + plain(msgpack_tree.CHUNKED) + plain(True) + plain("shape")
            + msgpack_tree.map_header(len(node.leaf.shape)))
    for i, d in enumerate(node.leaf.shape):
        f.write(plain(str(i)) + plain(int(d)))
    f.write(plain("chunks") + msgpack_tree.map_header(len(starts)))
    for i, a in enumerate(starts):
        part = flat[a:a + per]
        f.write(plain(str(i)) + msgpack_tree.ndarray_header(part.shape, node.dtype))
        f.write(memoryview(part).cast("B"))


def _arrays(tree) -> list[_Array]:
    if isinstance(tree, dict):
        return [a for v in tree.values() for a in _arrays(v)]
    return [tree] if isinstance(tree, _Array) else []


def write(ckpt: Checkpoint, path: str | os.PathLike, *, overwrite: bool = False, progress: Progress | None = None,
          template: str | None = None, strict: bool = True, collections: bool | None = None) -> Report:
    """Write `ckpt` as a flax msgpack state file.

    >>> write(hubfmt.read("ft.pth"), "ft.msgpack", template="init.msgpack")      # doctest: +SKIP
    """
    path = os.fspath(path)
    report = Report(stage="write")
    if template is not None:
        tree = _with_template(ckpt, os.fspath(template), report, strict)
    else:
        tree = _without_template(ckpt, report, collections)
    items = _arrays(tree)
    for a in items:
        if a.dtype not in dtypes.DTYPES:
            raise ConversionError(f"{'/'.join(a.leaf.path)}: no msgpack form for dtype {a.dtype}")
    stream = TensorStream(items, progress=progress)
    pieces = iter(stream)
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "wb", buffering=OUTPUT_BUFFER) as f:
        def emit(node) -> None:
            if isinstance(node, dict):
                f.write(msgpack_tree.map_header(len(node)))
                for k, v in node.items():
                    f.write(msgpack_tree.plain(k))
                    emit(v)
            elif isinstance(node, _Array):
                item, piece = next(pieces)
                assert item is node
                if piece.nbytes > msgpack_tree.MAX_CHUNK_SIZE:
                    _chunked(f, node, piece)
                else:
                    f.write(msgpack_tree.ndarray_header(node.leaf.shape, node.dtype, node.scalar))
                    piece.write(f)
            elif isinstance(node, (np.generic,)):
                f.write(msgpack_tree.plain(node.item()))
            else:
                f.write(msgpack_tree.plain(node))
        emit(tree)
    report.tensors_in = len(ckpt)
    report.tensors_out = stream.tensors
    report.bytes_out = stream.bytes
    return report
