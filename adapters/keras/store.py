"""The structure of Keras 3 weight files: where each layer's variables lie, without Keras.

A `.weights.h5` file stores one group per saved object (model, layer, optimizer), each holding
`vars/0..N`, the object's variables by position, and a `name` attribute (the layer name, Keras >=
3.x). Items of a list (`Functional.layers`, a subclassed model's list attribute) are named by their
snake_cased class and a counter (`conv2d`, `conv2d_1`); attributes by the attribute name (`conv1`,
`cell`). A `.keras` file is a zip archive of `config.json` (every layer's class and configuration),
`metadata.json` and `model.weights.h5`; Keras stores the members uncompressed, so the h5 bytes lie
raw inside the zip and tensors can still be read (and copied) in place.

`scan(path)` turns either file into a list of `VarGroup`s (one per object that owns variables)
with each variable's shape, dtype and, when its bytes lie raw, its absolute offset in `path`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from hubfmt.sdk import dtypes
from hubfmt.sdk import FileSpan, LazyTensor, file_span, part_of, span_tensor
from hubfmt.sdk import FormatError

from .config import config_by_path
from .files import check_global_heaps, h5_reason, h5py_module, open_h5

MAX_GROUPS = 1_000_000                   # objects in one file: bounds the walk of a hostile file
MAX_DEPTH = 100                          # nesting of objects and lists (Python's recursion is finite)
MAX_EXPANSION = 1100                     # nominal bytes per stored byte of a chunked/compressed dataset


@dataclass
class Var:
    """One stored variable: `path` is its h5 dataset path (`layers/conv2d/vars/0`)."""

    path: str
    shape: tuple
    dtype: str
    offset: int | None      # absolute offset of its raw little-endian bytes in the file, if contiguous


@dataclass
class VarGroup:
    """An object that owns variables (a layer, an RNN cell, the optimizer, a subclassed model).

    `object_path` is its h5 group (`layers/lstm`; for an RNN cell, the RNN layer that owns it),
    `vars_path` the group holding its variables (`layers/lstm/cell/vars`), `module` the canonical
    module path (layer names for list items, attribute names otherwise), `class_name` and `config`
    from config.json when the file has one ("" / {} when not)."""

    object_path: str
    vars_path: str
    module: str
    layer_name: str = ""
    class_name: str = ""
    config: dict = field(default_factory=dict)
    vars: list[Var] = field(default_factory=list)
    from_cell: bool = False
    # The highest file address of the group's objects (headers, data): HDF5 allocates as Keras
    # creates, so this orders a bare file's layers as Keras saved them (None: not known).
    created: int | None = None
    suffix: str = ""        # "_reverse" for the backward half of a Bidirectional RNN (torch's names)


@dataclass
class Store:
    """What `scan` found: the file, its kind, the variable groups in model order, and the archive's
    config/metadata (None for a bare .weights.h5)."""

    path: str
    format: str
    groups: list[VarGroup]
    config: dict | None = None
    metadata: dict | None = None
    optimizer: list = field(default_factory=list)           # optimizer variables (dropped)
    warnings: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)     # vars group -> its `name` attribute
    member: FileSpan | None = None      # a .keras archive's stored weights member, with its CRC-32


def _dtype_of(ds, path: str, where: str) -> str:
    dt = ds.dtype
    if ds.attrs.get("dtype") in ("bfloat16", b"bfloat16"):   # Keras marks its opaque 2-byte bfloat16
        if dt.itemsize != 2:
            raise FormatError(f"{where}: marked bfloat16 but stored with {dt.itemsize}-byte elements", path)
        return "bfloat16"
    try:
        return dtypes.name_of(dt)
    except ValueError:
        raise FormatError(f"{where}: unsupported dtype {dt}", path) from None


def _little_endian(dt) -> bool:
    return dt.byteorder in ("<", "|") or (dt.byteorder == "=" and np.little_endian)


def dataset_var(ds, where: str, path: str, h5_start: int | None, limit: int) -> Var:
    """A Var for h5py dataset `ds` (at `where`): its absolute offset when its bytes lie raw (the h5
    bytes start at `h5_start` in `path`, None when they are compressed in an archive, and span
    `limit` bytes), every offset checked."""
    if not hasattr(ds, "shape"):        # a committed Datatype or other non-dataset object (found by tests/fuzz)
        raise FormatError(f"{where}: not a dataset ({type(ds).__name__})", path)
    dt = _dtype_of(ds, path, where)
    if ds.shape is None:
        raise FormatError(f"{where}: a dataset without a dataspace (no shape)", path)
    shape = tuple(int(d) for d in ds.shape)
    nbytes = dtypes.itemsize(dt) * int(np.prod(shape, dtype=np.int64))
    raw = ds.chunks is None and ds.compression is None and _little_endian(ds.dtype)
    off = ds.id.get_offset() if raw and nbytes else None
    if off is not None:
        if off < 0 or off + nbytes > limit:
            raise FormatError(f"{where}: data at offset {off} (+{nbytes} bytes) lies past the end of the "
                              f"file ({limit} bytes): truncated", path)
        return Var(where, shape, dt, h5_start + off if h5_start is not None else None)
    # Read through h5py: the shape must be plausible for the bytes stored (a hostile header could
    # declare terabytes of fill values); gzip's best ratio is about 1:1000.
    stored = ds.id.get_storage_size()
    if nbytes > MAX_EXPANSION * stored + (1 << 20):
        raise FormatError(f"{where}: shape {list(shape)} ({nbytes} bytes) is implausible for the {stored} bytes "
                          "stored", path)
    return Var(where, shape, dt, None)


def _name_attr(group) -> str:
    v = group.attrs.get("name") if "name" in group.attrs else None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return v if isinstance(v, str) else ""


def scan(path: str) -> Store:
    """The variable groups of a .weights.h5 file or a .keras archive, in model order.

    >>> [g.module for g in scan("m.weights.h5").groups]          # doctest: +SKIP
    ['conv', 'bn', 'lstm', 'head.d1']
    """
    path = os.fspath(path)
    with open_h5(path) as (h5, start, limit, config, metadata, member):
        try:
            store = _scan(h5, path, start, limit, config, metadata)
            store.member = member
            return store
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
            # h5py reports damaged metadata (bad heaps, B-trees, datatypes) with these types.
            raise FormatError(f"damaged HDF5 structure ({h5_reason(e)})", path) from None


def _dataset_ranges(h5) -> list[tuple[int, int]]:
    """(offset, end) of every contiguous dataset's bytes: what the global heap check may skip."""
    out = []

    def visit(_, obj):
        if hasattr(obj, "shape") and obj.chunks is None:
            off = obj.id.get_offset()
            if off is not None:
                out.append((off, off + obj.id.get_storage_size()))
    h5.visititems(visit)
    return out


MAX_OBJECTS = 1_000_000      # HDF5 objects in one Keras file (a model of 100k layers has ~400k)


def check_contents(h5, path: str) -> None:
    """Every HDF5 object of the file visited once (by address: a DAG of hard links costs what it
    holds, not its paths), and nothing that reads bytes from elsewhere: external links, external
    raw storage and virtual datasets are refused (h5py follows them; a converter of untrusted files
    reads only the input's own bytes)."""
    from .files import h5py_module

    h5py = h5py_module()
    seen: set[int] = set()
    stack = [("", h5)]
    while stack:
        where, group = stack.pop()
        for key in group.keys():
            name = f"{where}/{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise FormatError(f"{name}: an HDF5 external link to {link.filename}:{link.path}: refused (hubfmt "
                                  "reads only the input's own bytes)", path)
            if isinstance(link, h5py.SoftLink):
                continue            # a path inside this file, reached on its own
            obj = group[key]
            addr = h5py.h5o.get_info(obj.id).addr
            if addr in seen:
                continue
            seen.add(addr)
            if len(seen) > MAX_OBJECTS:
                raise FormatError(f"more than {MAX_OBJECTS:,} HDF5 objects: not a Keras weights file", path)
            if isinstance(obj, h5py.Group):
                stack.append((name, obj))
            elif isinstance(obj, h5py.Dataset):
                if obj.external:
                    raise FormatError(f"{name}: a dataset stored in an external file ({obj.external[0][0]!r}): "
                                      "refused (hubfmt reads only the input's own bytes)", path)
                if obj.is_virtual:
                    raise FormatError(f"{name}: a virtual dataset (its bytes live in other files): refused "
                                      "(hubfmt reads only the input's own bytes)", path)


def _scan(h5, path, start, limit, config, metadata) -> Store:
    check_contents(h5, path)
    if start is not None:       # (a compressed archive member cannot be scanned in place)
        check_global_heaps(path, start, limit, _dataset_ranges(h5))
    fmt = "keras-archive" if config is not None else "keras-weights-h5"
    if "layers" not in h5 and "vars" not in h5:
        from .legacy import is_legacy, scan_legacy     # (it imports this module)
        if config is None and is_legacy(h5):
            groups, warnings = scan_legacy(h5, path, start, limit)
            optimizer = []
            if "optimizer_weights" in h5:
                h5["optimizer_weights"].visititems(lambda n, o: optimizer.append(n) if hasattr(o, "shape") else None)
            return Store(path, "keras-h5", groups, None, None, optimizer, warnings)
        raise FormatError("HDF5 file without Keras weights (no 'layers', 'vars' or 'layer_names'): "
                          "not Keras weights", path)
    configs = config_by_path(config)
    walker = _Walker(h5, path, start, limit, configs)
    walker.walk_object(h5["/"], "", "", True)
    return Store(path, fmt, _model_order(walker.groups, configs), config, metadata, walker.optimizer,
                 names=walker.names)


class _Walker:
    def __init__(self, h5, path, start, limit, configs):
        self.h5, self.path, self.start, self.limit, self.configs = h5, path, start, limit, configs
        self.groups: list[VarGroup] = []
        self.optimizer: list[Var] = []
        self.names: dict[str, str] = {}
        self.count = 0
        self.seen: set[int] = set()
        self.Group = type(h5["/"])

    def _vars(self, vg, vars_path) -> list[Var]:
        items = []
        for key in vg:
            obj = vg[key]
            where = f"{vars_path}/{key}"
            if isinstance(obj, self.Group) or not key.isdigit():
                raise FormatError(f"{where}: Keras variable groups hold datasets named 0..N only", self.path)
            items.append((int(key), dataset_var(obj, where, self.path, self.start, self.limit)))
        items.sort(key=lambda kv: kv[0])
        if [k for k, _ in items] != list(range(len(items))):
            raise FormatError(f"{vars_path}: variables are not numbered 0..{len(items) - 1} "
                              f"(found {', '.join(str(k) for k, _ in items)})", self.path)
        return [v for _, v in items]

    def _enter(self, h5_path, g=None):
        if g is not None:
            # Keras never links one group twice; a hostile DAG of hard links would make this walk,
            # which goes by path, exponential in its depth (check_contents visits by object).
            import h5py

            addr = h5py.h5o.get_info(g.id).addr
            if addr in self.seen:
                raise FormatError(f"{h5_path or '/'}: an HDF5 group reached a second time (hard links): not "
                                  "Keras weights", self.path)
            self.seen.add(addr)
        self.count += 1
        if self.count > MAX_GROUPS:
            raise FormatError(f"more than {MAX_GROUPS} groups: not a plausible Keras weights file", self.path)
        if h5_path.count("/") > MAX_DEPTH:
            raise FormatError(f"groups nested more than {MAX_DEPTH} deep: not a plausible Keras weights file", self.path)

    def walk_object(self, g, h5_path, module, is_root=False, cell_of: VarGroup | None = None,
                    entry: dict | None = None, suffix: str = ""):
        """An object group (has or may have `vars`); its other children are attributes or lists."""
        self._enter(h5_path, g)
        vg = g.get("vars")
        vars_path = f"{h5_path}/vars" if h5_path else "vars"
        name = _name_attr(vg) if isinstance(vg, self.Group) else ""
        if name:
            self.names[vars_path] = name
        entry = entry if isinstance(entry, dict) else self.configs.get(h5_path, {})
        cls, cfg = entry.get("class_name", ""), entry.get("config")
        group = VarGroup(h5_path, vars_path, module, name, cls if isinstance(cls, str) else "",
                         cfg if isinstance(cfg, dict) else {}, suffix=suffix)
        if isinstance(vg, self.Group):
            group.vars = self._vars(vg, vars_path)
            group.created = _created(g, vg, group.vars)
        if cell_of is not None:
            # An RNN's cell: its variables are the RNN layer's (canonical names have no 'cell').
            cell_cfg = cell_of.config.get("cell") if isinstance(cell_of.config.get("cell"), dict) else None
            group.object_path, group.module, group.layer_name = cell_of.object_path, cell_of.module, cell_of.layer_name
            group.class_name = (cell_cfg or {}).get("class_name") or cell_of.class_name
            group.config = {**cell_of.config, **((cell_cfg or {}).get("config") or {})}
            group.from_cell, group.suffix = True, cell_of.suffix
        if group.vars:
            if h5_path == "optimizer" or h5_path.startswith("optimizer/"):
                self.optimizer.extend(group.vars)
            else:
                self.groups.append(group)
        bidirectional = group.class_name == "Bidirectional" or (
            not group.class_name and re.fullmatch(r"bidirectional(_\d+)?", h5_path.rsplit("/", 1)[-1]) is not None)
        for key in g:
            if key == "vars":
                continue
            child = g[key]
            child_path = f"{h5_path}/{key}" if h5_path else key
            if not isinstance(child, self.Group):
                raise FormatError(f"{child_path}: a dataset outside a 'vars' group: not Keras weights", self.path)
            if is_root and key == "optimizer":
                self.walk_object(child, child_path, "optimizer")
            elif bidirectional and key in ("forward_layer", "backward_layer"):
                # Both directions are one canonical layer, as torch's bidirectional RNNs.
                layer_cfg = group.config.get("layer")
                if key == "backward_layer" and isinstance(group.config.get("backward_layer"), dict):
                    layer_cfg = group.config["backward_layer"]
                self.walk_object(child, child_path, module, entry=layer_cfg,
                                 suffix="_reverse" if key == "backward_layer" else "")
            elif "vars" in child and key == "cell" and not group.vars:
                self.walk_object(child, child_path, module, cell_of=group)
            elif "vars" in child:
                self.walk_object(child, child_path, _join(module, key))
            else:
                self.walk_list(child, child_path, module if key == "layers" else _join(module, key))

    def walk_list(self, g, h5_path, module):
        """A list's group: items named by class (`dense`, `dense_1`) or nested lists (`container`)."""
        self._enter(h5_path, g)
        for key in g:
            child = g[key]
            child_path = f"{h5_path}/{key}"
            if not isinstance(child, self.Group):
                raise FormatError(f"{child_path}: a dataset outside a 'vars' group: not Keras weights", self.path)
            # An object: it has `vars`, or (files of Keras versions that wrote no empty groups) it
            # is an RNN layer whose only variables are its cell's.
            if "vars" in child or isinstance(child.get("cell"), self.Group):
                vg = child.get("vars")
                cfg = self.configs.get(child_path, {}).get("config")
                name = cfg.get("name") if isinstance(cfg, dict) else None
                if not isinstance(name, str):
                    name = _name_attr(vg) if isinstance(vg, self.Group) else ""
                self.walk_object(child, child_path, _join(module, _segment(name or key)))
            else:
                self.walk_list(child, child_path, _join(module, key))


def _segment(name: str) -> str:
    # A '.' in a layer name (one hubfmt wrote for "features.0") stays: it splits the module path
    # the same way. Keras forbids '/' in names; a hostile file's '/' must not make a path.
    return name.replace("/", "_")


def _join(prefix: str, seg: str) -> str:
    return f"{prefix}.{seg}" if prefix else seg


def _address(obj) -> int | None:
    try:
        return int(h5py_module().h5o.get_info(obj.id).addr)
    except Exception:   # noqa: BLE001 - an HDF5 without object addresses: no creation order
        return None


def _created(g, vg, variables: list[Var]) -> int | None:
    """The highest address among a layer's object headers and data. HDF5 hands out space as
    objects are created, reusing freed holes: a later layer's objects can land in an earlier hole,
    but never all of them, so the highest address orders layers by creation. Data offsets alone
    do not: HDF5 keeps small datasets (BN vectors) in blocks of their own."""
    addrs = [_address(g), _address(vg)] + [_address(vg[k]) for k in vg]
    addrs += [v.offset for v in variables]
    known = [a for a in addrs if a is not None]
    return max(known) if known and _address(g) is not None else None


_ITEM = re.compile(r"^(.*?)(?:_(\d+))?$")


def _by_counter(groups: list[VarGroup]) -> list[VarGroup]:
    """Keras names list items by class and a counter in model order (`conv2d`, `conv2d_1`, ...):
    within one list and class, that counter is the order, whatever the addresses say."""
    slots: dict[tuple[str, str], list[int]] = {}
    for i, g in enumerate(groups):
        parent, _, item = g.object_path.rpartition("/")
        if parent.rpartition("/")[2] != "layers":
            continue
        m = _ITEM.match(item)
        if m:
            slots.setdefault((parent, m.group(1)), []).append(i)
    out = list(groups)
    for idx in slots.values():
        ranked = sorted(idx, key=lambda i: int(_ITEM.match(groups[i].object_path.rpartition("/")[2]).group(2) or 0))
        for slot, i in zip(idx, ranked, strict=True):
            out[slot] = groups[i]
    return out


def _model_order(groups: list[VarGroup], configs: dict) -> list[VarGroup]:
    """Groups in the order the model declares its layers when config.json says it, else in the
    order Keras created them (file addresses, list items' class counters; h5 lists names
    alphabetically), else smallest data offset first."""
    rank = {p: i for i, p in enumerate(configs)}
    if not rank and groups and all(g.created is not None for g in groups):
        return _pair_bidirectional(_by_counter(sorted(groups, key=lambda g: g.created or 0)))

    def ranked(p):     # an attribute (a Bidirectional's forward_layer) ranks as its layer
        while p:
            if p in rank:
                return rank[p]
            p = p.rpartition("/")[0]
        return len(rank)

    def key(item):
        i, g = item
        offs = [v.offset for v in g.vars if v.offset is not None]
        return (ranked(g.object_path), min(offs) if offs else float("inf"), i)
    return _pair_bidirectional([g for _, g in sorted(enumerate(groups), key=key)])


def _pair_bidirectional(out: list[VarGroup]) -> list[VarGroup]:
    for i in range(len(out) - 1):      # a Bidirectional's forward half first, as torch lists it
        a, b = out[i], out[i + 1]
        if a.suffix and not b.suffix and a.module == b.module:
            out[i], out[i + 1] = b, a
    return out


def lazy(store: Store, var: Var) -> LazyTensor:
    """A LazyTensor for one variable: a byte range of the file when raw, else read through h5py."""
    if var.offset is not None:
        span = file_span(store.path, var.offset, var.dtype, var.shape)
        if store.member is not None:    # in a .keras archive: answers for the member's CRC-32
            span = part_of(store.member, var.offset - store.member.offset, span.nbytes)
        return span_tensor(span, var.dtype, var.shape)
    path, where, dt = store.path, var.path, var.dtype

    def load():
        with open_h5(path) as (h5, *_):
            try:
                a = h5[where][()]
            except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
                raise FormatError(f"{where}: cannot read ({h5_reason(e)})", path) from None
        a = np.asarray(a)
        if dt == "bfloat16":
            return np.ascontiguousarray(a).view("<u2").reshape(var.shape)
        return np.ascontiguousarray(a, dtype=dtypes.storage_dtype(dt))
    return LazyTensor(var.shape, dt, load)
