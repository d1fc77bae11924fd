"""Pickled nn.Module objects (YOLOv5-style checkpoints) read without their source code.

The restricted unpickler turns `models.yolo.Model`, `torch.nn.modules.conv.Conv2d`... into inert
OpaqueObjects holding the instance __dict__ the pickle carried. nn.Module keeps its tensors in
`_parameters`, `_buffers` (minus `_non_persistent_buffers_set`) and its children in `_modules`;
walking those in torch's order gives exactly the names `module.state_dict()` would.
"""
from __future__ import annotations

from typing import Any, Iterator

from hubfmt.sdk import OpaqueObject

from .vocabulary import TensorRef

# More modules than this in one walk: a hostile pickle sharing submodules exponentially often.
MAX_MODULES = 1_000_000
# Module internals and torch bookkeeping: not model attributes worth keeping.
_SKIP_ATTRIBUTES = {"training", "dump_patches", "call_super_init", "T_destination"}


def is_module(obj: Any) -> bool:
    if not isinstance(obj, OpaqueObject):
        return False
    attrs = obj.attributes()
    return isinstance(attrs.get("_parameters"), dict) and isinstance(attrs.get("_modules"), dict)


def class_name(module: OpaqueObject) -> str:
    """'torch.nn.modules.conv.Conv2d' -> 'Conv2d'."""
    return module.class_name.rpartition(".")[2]


# A submodule shared by two parents appears under both paths, as in torch; the paths may number
# at most this many times the distinct objects the file holds (+ a floor), so a few KB of shared
# levels cannot ask for 2**40 names. Counted from the object graph before any walk.
PATH_FACTOR = 16
PATH_FLOOR = 10_000


def check_paths(module: OpaqueObject) -> None:
    """Refuse a module tree whose walk by path (what state_dict and named_modules do) would visit
    more than PATH_FACTOR x its distinct objects + PATH_FLOOR modules and tensors. Each object is
    visited once (memo by id); nesting deeper than 200 levels is refused."""
    paths: dict[int, int] = {}
    distinct = 0
    stack: list[tuple[OpaqueObject, int, bool]] = [(module, 0, False)]
    while stack:
        m, depth, done = stack.pop()
        attrs = m.attributes()
        children = [c for c in (attrs.get("_modules") or {}).values() if is_module(c)]
        if done:
            own = 1 + len(attrs.get("_parameters") or {}) + len(attrs.get("_buffers") or {})
            paths[id(m)] = own + sum(paths[id(c)] for c in children)
            distinct += own
            continue
        if id(m) in paths:
            continue
        if depth > 200:
            raise ValueError("modules nest more than 200 levels deep")
        stack.append((m, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in paths)
    limit = min(MAX_MODULES, PATH_FACTOR * distinct + PATH_FLOOR)
    if paths[id(module)] > limit:
        raise ValueError(f"the module tree shares submodules so often that it has {paths[id(module)]} paths "
                         f"to its {distinct} modules and tensors (the limit is {PATH_FACTOR} x + {PATH_FLOOR}, "
                         f"at most {MAX_MODULES})")


def state_dict(module: OpaqueObject, prefix: str = "", _depth: int = 0,
               _count: list | None = None) -> Iterator[tuple[str, TensorRef]]:
    """(name, tensor) in the order torch's Module.state_dict() produces them."""
    if _depth == 0:
        check_paths(module)
    count = _count if _count is not None else [0]
    count[0] += 1
    if _depth > 200 or count[0] > MAX_MODULES:
        raise ValueError(f"modules nest more than 200 levels deep or number more than {MAX_MODULES}")
    attrs = module.attributes()
    for name, t in attrs.get("_parameters", {}).items():
        if t is not None:
            yield prefix + str(name), _tensor(t, prefix + str(name))
    skip = attrs.get("_non_persistent_buffers_set") or set()
    for name, t in (attrs.get("_buffers") or {}).items():
        if t is not None and name not in skip:
            yield prefix + str(name), _tensor(t, prefix + str(name))
    for name, child in attrs.get("_modules", {}).items():
        if child is None:
            continue
        if not is_module(child):
            raise ValueError(f"submodule {prefix}{name} is not a module")
        yield from state_dict(child, f"{prefix}{name}.", _depth + 1, count)


def _tensor(t: Any, name: str) -> TensorRef:
    if not isinstance(t, TensorRef):
        raise ValueError(f"module tensor {name} is a {type(t).__name__}, not a tensor")
    return t


def modules(module: OpaqueObject, prefix: str = "", _depth: int = 0,
            _count: list | None = None) -> Iterator[tuple[str, OpaqueObject]]:
    """(path, module) for the module and all its descendants, as Module.named_modules() (without
    de-duplication: a shared submodule appears under every path). Bounded like state_dict()."""
    if _depth == 0:
        check_paths(module)
    count = _count if _count is not None else [0]
    count[0] += 1
    if _depth > 200 or count[0] > MAX_MODULES:
        return
    yield prefix, module
    for name, child in module.attributes().get("_modules", {}).items():
        if is_module(child):
            yield from modules(child, f"{prefix}.{name}" if prefix else str(name), _depth + 1, count)


def public_attributes(module: OpaqueObject) -> dict[str, Any]:
    """The module's own attributes that are not torch bookkeeping, parameters, buffers or
    submodules: YOLOv5's names, yaml, stride, nc... (still raw: tensors, opaque objects)."""
    return {k: v for k, v in module.attributes().items()
            if isinstance(k, str) and not k.startswith("_") and k not in _SKIP_ATTRIBUTES and not is_module(v)}
