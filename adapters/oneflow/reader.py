"""Reading `oneflow.save` directories without OneFlow.

Two layouts:
- OneFlow >= 0.6 (`flow.save(obj, dir)`): `pickled_data` + one folder per tensor (`tensor_N/` for
  local tensors, `global_tensor_N/` for global ones) with `out` and `meta`;
- the older one (lazy-mode snapshots, what check_point_v2.legacy_load reads): a `snapshot_done`
  marker and one folder per variable, named by the variable, with `out` and `meta`.

`out` holds the raw little-endian bytes in C order, so every tensor is a lazy region of its `out`
file (writers copy it file-to-file). `meta` must describe exactly the size of `out`.
"""
from __future__ import annotations

import os

from hubfmt.sdk import Checkpoint, LayerInfo, TensorInfo, region_tensor
from hubfmt.sdk import FormatError, check_input_file
from hubfmt.sdk import dtypes
from hubfmt.sdk import from_plain

from . import meta as meta_codec
from . import pickled
from .formats import SNAPSHOT_DONE, sniff
from .names import kind_from_names

EXTRA_DIR = "hubfmt_extra"          # sidecar oneflow.save directory holding ckpt.extra (see writer)
MAX_PICKLE_BYTES = 1 << 30
# Nodes of the pickled object as a tree. Pickles share objects, so a few hundred bytes can describe
# 2**40 nodes; every later pass (extra normalisation, our own walks) sees the tree, so count first.
MAX_NODES = 1_000_000
MAX_DEPTH = 100
# Where a training checkpoint keeps the model's state dict, most preferred first.
MODEL_KEYS = ("model", "state_dict", "model_state_dict", "module", "net")


def _inside(folder: str, root: str) -> None:
    real, top = os.path.realpath(folder), os.path.realpath(root)
    if os.path.commonpath([top, real]) != top:
        raise FormatError(f"a tensor folder resolves to {real}, outside the input's directory {top}: refused "
                          f"(hubfmt reads only the input's own files)", folder)


def _read_small(path: str, limit: int, what: str) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise FormatError(f"{what} is {size} bytes, more than any OneFlow {what} ({limit})", path)
        with open(path, "rb") as f:
            # read(n) allocates n bytes up front: ask for what the file holds, not the limit.
            return f.read(size + 1)
    except FileNotFoundError:
        raise FormatError(f"missing {what}", path) from None
    except IsADirectoryError:
        raise FormatError(f"{what} is a directory", path) from None
    except OSError as e:
        raise FormatError(f"cannot read {what}: {e.strerror}", path) from None


def tensor_folder(folder: str, root: str | None = None):
    """(lazy tensor over `folder/out`, dtype `folder/meta` declares); sizes checked. `folder`,
    its meta and out must lie inside `root`, the directory the user named."""
    if not os.path.isdir(folder):
        raise FormatError("missing tensor folder (the pickle refers to it)", folder)
    if root is not None:
        _inside(folder, root)
        for p in (os.path.join(folder, "meta"), os.path.join(folder, "out")):
            if os.path.lexists(p):
                check_input_file(p, "a tensor file", inside=root)
    shape, dtype = meta_codec.parse(_read_small(os.path.join(folder, "meta"), meta_codec.MAX_META_BYTES, "meta"),
                                    os.path.join(folder, "meta"))
    problem = dtypes.shape_problem(shape, dtype)
    if problem:
        raise FormatError(problem, os.path.join(folder, "meta"))
    out = os.path.join(folder, "out")
    try:
        size = os.path.getsize(out)
    except OSError:
        raise FormatError("missing out (the tensor's data)", out) from None
    if not os.path.isfile(out):
        raise FormatError("out is not a file", out)
    t = region_tensor(out, 0, dtype, shape)
    if dtype == "bfloat16" and size == 2 * t.nbytes:
        # OneFlow 0.9 saves a bfloat16 tensor through tensor.numpy(), i.e. as float32 bytes (exact).
        t = region_tensor(out, 0, "float32", shape)
    if t.nbytes != size:
        raise FormatError(f"meta says {dtype}{list(shape)} ({t.nbytes} bytes) but out holds {size} bytes", out)
    return t, dtype


def _check_size(obj, path: str) -> None:
    """FormatError unless `obj`, shared references expanded, has at most MAX_NODES nodes and
    MAX_DEPTH levels (iterative: no recursion limit to hit)."""
    budget, stack = MAX_NODES, [(obj, 0)]
    while stack:
        o, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise FormatError(f"pickled object has more than {MAX_NODES} parts (shared references expanded)", path)
        if depth > MAX_DEPTH:
            raise FormatError(f"pickled object nests more than {MAX_DEPTH} levels deep", path)
        if isinstance(o, dict):
            stack.extend((v, depth + 1) for kv in o.items() for v in kv)
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in o)


def _is_state_dict(obj) -> bool:
    """A dict with tensors as values (a state dict may also hold a few plain values, e.g. OneFlow's
    OneEmbedding options strings)."""
    return isinstance(obj, dict) and any(isinstance(v, pickled.TensorRef) for v in obj.values())


def _holds_tensors(obj) -> bool:          # bounded by _check_size
    if isinstance(obj, pickled.TensorRef):
        return True
    if isinstance(obj, dict):
        return any(_holds_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_tensors(v) for v in obj)
    return False


def _split(data, path: str, prefer_ema: bool, ckpt: Checkpoint):
    """(name -> TensorRef, extra dict) from the object oneflow.save pickled: a state dict, or a
    training checkpoint holding one under 'model' (or 'ema' with prefer_ema, 'state_dict', ...)."""
    if not isinstance(data, dict):
        raise FormatError(f"pickled_data holds a {type(data).__name__}, not a state dict or a dictionary holding one", path)
    if _is_state_dict(data) or not data:          # flow.save({}) is an empty state dict
        chosen, state = None, data
    else:
        keys = [k for k in MODEL_KEYS if _is_state_dict(data.get(k))]
        if prefer_ema and _is_state_dict(data.get("ema")):
            keys.insert(0, "ema")
        if not keys:
            raise FormatError("pickled_data holds no state dict (no dictionary of tensors, at the top or under "
                              f"{', '.join(repr(k) for k in MODEL_KEYS)})", path)
        chosen, state = keys[0], data[keys[0]]
    tensors, extra = {}, {}

    def keep(key, value, where: str) -> None:
        if _holds_tensors(value):
            ckpt.report.add("dropped", str(key), f"tensors in {where} outside the weights"
                            + (f" '{chosen}'" if chosen else "") + " (optimizer state or another copy)")
        else:
            extra[key] = value

    for k, v in state.items():
        if isinstance(v, pickled.TensorRef):
            tensors[k] = v
        else:
            keep(k, v, "the state dict")
    if chosen is not None:
        for k, v in data.items():
            if k != chosen:
                keep(k, v, "the checkpoint")
    return tensors, extra


def _check_names(names, path: str) -> None:
    for n in names:
        if not isinstance(n, str) or not n:
            raise FormatError(f"state dict key {n!r} is not a tensor name", path)


def read(path: str | os.PathLike, *, prefer_ema: bool = False) -> Checkpoint:
    """Read a oneflow.save directory (either layout) as a lazy canonical Checkpoint.

    >>> ckpt = read("yolov5s_oneflow")                        # doctest: +SKIP
    >>> ckpt["model.0.conv.weight"].tensor.shape             # doctest: +SKIP
    (32, 3, 6, 6)
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FormatError("not a oneflow.save directory" if os.path.exists(path) else "no such directory", path)
    fmt = sniff(path)
    if fmt is None:
        raise FormatError(f"not a oneflow.save directory: no {pickled.PICKLE_FILENAME} (nor {SNAPSHOT_DONE} of the older layout)", path)
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    ckpt.source.framework = "oneflow"
    ckpt.source.file = os.path.basename(os.path.normpath(path))
    ckpt.source.format = fmt
    if fmt == "oneflow":
        pk = os.path.join(path, pickled.PICKLE_FILENAME)
        data = pickled.load(_read_small(pk, MAX_PICKLE_BYTES, "pickled_data"), pk)
        _check_size(data, pk)
        sd, extra = _split(data, pk, prefer_ema, ckpt)
        extra = _from_plain(extra, pk)
        _check_names(sd, pk)
        tensors, seen = {}, {}
        for name, ref in sd.items():
            if ref.folder is None:
                raise FormatError(f"tensor {name!r} has no folder in the pickle", pk)
            tied = seen.get(ref.folder)
            seen.setdefault(ref.folder, name)
            tensors[name] = (*tensor_folder(os.path.join(path, ref.folder), path), ref.folder, tied)
        extra.update(_sidecar_extra(path))
    else:
        tensors, extra = {}, {}
        for entry in sorted(os.listdir(path)):
            if entry == SNAPSHOT_DONE or not os.path.isdir(os.path.join(path, entry)):
                continue
            tensors[entry] = (*tensor_folder(os.path.join(path, entry), path), entry, None)
    kinds = kind_from_names({n: t.shape for n, (t, *_) in tensors.items()})
    for name, (t, declared, folder, tied) in tensors.items():
        layer, _, role = name.rpartition(".")
        info = TensorInfo(kind=kinds[name], role=role, layer=layer, original_name=name,
                          original_dtype=declared, tied_to=tied)
        ckpt.add(name, t, info)
        if kinds[name] != "tensor" and layer not in ckpt.layers:
            ckpt.layers[layer] = LayerInfo(kinds[name])
        if tied:
            ckpt.report.add("tied", name, f"shares {folder} with {tied}")
        elif declared != t.dtype:
            ckpt.report.add("cast", name, f"{declared}->{t.dtype} (OneFlow 0.9 stores bfloat16 as float32 bytes)")
    ckpt.extra = extra
    ckpt.report.tensors_in = len(ckpt)
    return ckpt


def _sidecar_extra(path: str) -> dict:
    side = os.path.join(path, EXTRA_DIR, pickled.PICKLE_FILENAME)
    if not os.path.lexists(side):
        return {}
    extra = pickled.load(_read_small(side, MAX_PICKLE_BYTES, "pickled_data"), side)
    _check_size(extra, side)
    if not isinstance(extra, dict) or _holds_tensors(extra):
        raise FormatError("hubfmt_extra must hold a dictionary of plain (non-tensor) data", side)
    return _from_plain(extra, side)


def _from_plain(extra, path: str):
    try:
        return from_plain(extra)
    except (ValueError, TypeError, KeyError) as e:
        raise FormatError(f"non-tensor content: {e}", path) from None

