"""The TF2 object graph (`_CHECKPOINTABLE_OBJECT_GRAPH`, a TrackableObjectGraph proto) of an
object-based checkpoint: which object path leads to each saved variable.

A variable reachable from several objects is saved once, under the key of the first path the
saver found, which is often the optimizer's (`optimizer/_trainable_variables/0/...`). The graph
lists every path, so a reader can name each variable by its model path instead.

>>> paths = variable_paths(graph_bytes)        # doctest: +SKIP
>>> paths["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"]       # doctest: +SKIP
[['optimizer', '_trainable_variables', '0'], ['model', '_functional', '_operations', '1', '_kernel']]
"""
from __future__ import annotations

from collections import deque

from hubfmt.sdk import protowire

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
MAX_NODES = 10_000_000


def _nodes(graph: bytes, full_names: dict | None = None) -> list[tuple[list[tuple[int, str]], list[str]]]:
    """Per node: (children as (node id, local name), checkpoint keys of its attributes); fills
    `full_names` (checkpoint key -> the variable's own name, e.g. Keras 'sequential/conv2d/kernel')."""
    nodes = []
    for num, wt, v in protowire.fields(graph):
        if num != 1 or wt != 2:
            continue
        children, keys = [], []
        for n2, w2, v2 in protowire.fields(v):
            if n2 == 1 and w2 == 2:
                ref = {k: x for k, _, x in protowire.fields(v2)}
                children.append((int(ref.get(1, 0)), bytes(ref.get(2, b"")).decode("utf-8", "replace")))
            elif n2 == 2 and w2 == 2:
                att = {k: x for k, _, x in protowire.fields(v2)}
                key = bytes(att.get(3, b"")).decode("utf-8", "replace")
                keys.append(key)
                if full_names is not None and key:
                    full_names[key] = bytes(att.get(2, b"")).decode("utf-8", "replace")
        nodes.append((children, keys))
        if len(nodes) > MAX_NODES:
            raise protowire.Malformed("object graph has too many nodes")
    return nodes


def variable_full_names(graph: bytes) -> dict[str, str]:
    """Checkpoint key -> the name the variable was created with (Keras: '<model>/<layer>/<var>')."""
    out: dict[str, str] = {}
    _nodes(graph, out)
    return out


def variable_paths(graph: bytes) -> dict[str, list[list[str]]]:
    """Checkpoint key -> every object path (breadth-first, shortest first) that reaches it."""
    nodes = _nodes(graph)
    if not nodes:
        return {}
    all_paths: dict[int, list[list[str]]] = {0: [[]]}
    first: dict[int, list[str]] = {0: []}
    queue = deque([0])
    while queue:
        i = queue.popleft()
        for child, name in nodes[i][0]:
            if not 0 <= child < len(nodes):
                raise protowire.Malformed(f"object graph node {i} points at node {child} of {len(nodes)}")
            path = first[i] + [name]
            all_paths.setdefault(child, []).append(path)
            if child not in first:
                first[child] = path
                queue.append(child)
    out: dict[str, list[list[str]]] = {}
    for i, (_, keys) in enumerate(nodes):
        for key in keys:
            if key:
                out.setdefault(key, []).extend(all_paths.get(i, []))
    return out
