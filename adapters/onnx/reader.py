"""Reading ONNX model initializers without onnx: inline raw_data, typed fields (float_data, ...)
and external data files, as lazy tensors with canonical names, kinds and layouts."""
from __future__ import annotations

import os
import stat

import numpy as np

from hubfmt.sdk import Checkpoint, FormatError, LayerInfo, LazyTensor, SourceInfo, TensorInfo, dtypes, region_tensor

from . import names, proto
from .formats import FORMAT


def sniff(path: str | os.PathLike) -> str | None:
    """FORMAT when `path` is an ONNX model (a ModelProto with a graph), else None. Never raises."""
    path = os.fspath(path)
    if not path.endswith(".onnx") and not _looks_like_model(path):
        return None
    try:
        proto.scan(path)
    except (FormatError, OSError, ValueError):
        return None
    return FORMAT


def _looks_like_model(path: str) -> bool:
    """Without the suffix: a model starts with ir_version (field 1, varint) as onnx writes it."""
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x08 and head[1] < 0x20


def external_file(model_path: str, t: proto.Initializer) -> tuple[str, int, int]:
    """(path, offset, length) of an external initializer's bytes, checked: the location is a
    relative path inside the model's directory, a regular file, not a symlink, and holds the range."""
    loc = t.external.get("location", "")
    where = f"tensor {t.name!r}: external data"
    if not loc:
        raise FormatError(f"{where} has no location", model_path)
    base = os.path.dirname(os.path.abspath(model_path))
    if os.path.isabs(loc) or "\x00" in loc:
        raise FormatError(f"{where} location {loc!r} is not a relative path", model_path)
    full = os.path.normpath(os.path.join(base, loc))
    if os.path.commonpath([base, full]) != base or full == base:
        raise FormatError(f"{where} location {loc!r} is outside the model's directory", model_path)
    # every component under the model's directory must be a real directory / file, not a link
    rel = os.path.relpath(full, base).split(os.sep)
    cur = base
    for part in rel:
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except OSError:
            raise FormatError(f"{where} file {loc!r} does not exist", model_path) from None
        if stat.S_ISLNK(st.st_mode):
            raise FormatError(f"{where} {loc!r} is a symbolic link (refused)", model_path)
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{where} {loc!r} is not a regular file", model_path)
    try:
        offset = int(t.external.get("offset", "0") or 0)
        length = int(t.external["length"]) if t.external.get("length") else st.st_size - offset
    except ValueError:
        raise FormatError(f"{where}: offset/length are not integers", model_path) from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise FormatError(f"{where}: bytes {offset}..{offset + length} lie outside {loc!r} "
                          f"({st.st_size} bytes)", model_path)
    return full, offset, length


def tensor_of(path: str, t: proto.Initializer) -> LazyTensor:
    """The initializer's data in its stored layout (lazy)."""
    dt = proto.DTYPES.get(t.data_type)
    if dt is None:
        raise FormatError(f"tensor {t.name!r}: unsupported ONNX data_type {t.data_type}", path)
    count = 1
    for d in t.dims:
        count *= int(d)
    nbytes = count * dtypes.itemsize(dt)
    if t.location == proto.EXTERNAL:
        file, offset, length = external_file(path, t)
        if length != nbytes:
            raise FormatError(f"tensor {t.name!r}: external data of {length} bytes, dims {list(t.dims)} of {dt} "
                              f"need {nbytes}", path)
        return region_tensor(file, offset, dt, t.dims)
    if t.raw is not None:
        if t.typed:
            raise FormatError(f"tensor {t.name!r} holds both raw_data and typed data", path)
        if t.raw[1] != nbytes:
            raise FormatError(f"tensor {t.name!r}: raw_data of {t.raw[1]} bytes, dims {list(t.dims)} of {dt} "
                              f"need {nbytes}", path)
        return region_tensor(path, t.raw[0], dt, t.dims)
    if t.typed:
        shape = t.dims

        def load() -> np.ndarray:
            return proto.decode_typed(path, t, dt, count).reshape(shape)
        if count > (t.end - t.start):        # a value takes at least one byte on the wire
            raise FormatError(f"tensor {t.name!r}: dims {list(t.dims)} need more values than its message holds", path)
        return LazyTensor(shape, dt, load)
    if count == 0:
        return LazyTensor.from_array(np.zeros(t.dims, dtypes.storage_dtype(dt)), dt)
    raise FormatError(f"tensor {t.name!r} has no data", path)


def _transpose(t: LazyTensor) -> LazyTensor:
    return t.map(lambda a: np.ascontiguousarray(a.T), tuple(reversed(t.shape)))


def plan(model: proto.Model) -> dict[str, names.Use]:
    """Each initializer's Use, with layer kinds shared by the layer's tensors (a MatMul's bias
    fed to an Add is the linear layer's bias) and canonical-name collisions resolved."""
    found = names.uses(model)
    layer_kind: dict[str, str] = {}
    for u in found.values():
        if u.kind != "tensor" and u.layer:
            layer_kind.setdefault(u.layer, u.kind)
    seen: dict[str, int] = {}
    for u in found.values():
        if u.kind == "tensor" and u.layer in layer_kind and not u.constant:
            u.kind = layer_kind[u.layer]
        seen[u.canonical] = seen.get(u.canonical, 0) + 1
    for name, u in found.items():
        if seen[u.canonical] > 1 and u.canonical != name:
            u.canonical = name        # two initializers would take one name: keep their own
    return found


def read(path: str | os.PathLike, *, keep_constants: bool = False) -> Checkpoint:
    """An ONNX model's initializers as a canonical, lazy Checkpoint (see names.py for naming).

    >>> ckpt = read("resnet18.onnx")                    # doctest: +SKIP
    >>> ckpt["layer1.0.conv1.weight"].info.kind         # doctest: +SKIP
    'conv2d'
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FormatError("no such file", path)
    model = proto.scan(path)
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    ckpt.source = SourceInfo("onnx", "", os.path.basename(path), FORMAT)
    ckpt.extra = {"onnx": {"ir_version": model.ir_version, "opset": model.opset, "producer": model.producer}}
    if model.sparse:
        ckpt.report.add("dropped", "graph", f"{model.sparse} sparse initializer(s): not supported")
    used = plan(model)
    for t in model.initializers:
        u = used[t.name]
        tensor = tensor_of(path, t)
        if u.constant and not keep_constants:
            ckpt.report.add("dropped", t.name, "graph constant, not a weight (-R keep_constants=true keeps it)")
            continue
        if u.canonical in ckpt:
            raise FormatError(f"initializer {t.name!r} appears twice", path)
        layout = ""
        if u.transposed:
            tensor = _transpose(tensor)
            layout = "IO"
        ckpt.add(u.canonical, tensor, TensorInfo(kind=u.kind, role=u.role, layer=u.layer, original_name=t.name,
                                                 original_dtype=tensor.dtype, original_layout=layout,
                                                 original_shape=t.dims))
        if u.kind != "tensor" and u.layer and u.layer not in ckpt.layers:
            ckpt.layers[u.layer] = LayerInfo(u.kind, dict(u.attrs))
        if u.canonical != t.name:
            ckpt.report.renamed(t.name, u.canonical)
    for name, u in used.items():
        src = used[u.alias_of] if u.alias_of else None
        if src is None or src.canonical not in ckpt or u.canonical in ckpt:
            continue
        first = ckpt[src.canonical]
        tensor = first.tensor
        if u.transposed != src.transposed:
            tensor = _transpose(tensor)
        ckpt.add(u.canonical, tensor, TensorInfo(kind=u.kind, role=u.role, layer=u.layer, original_name=name,
                                                 original_dtype=tensor.dtype, original_shape=first.info.original_shape,
                                                 original_layout="IO" if u.transposed else "",
                                                 tied_to=src.canonical))
        if u.kind != "tensor" and u.layer and u.layer not in ckpt.layers:
            ckpt.layers[u.layer] = LayerInfo(u.kind, dict(u.attrs))
    ckpt.report.tensors_in = len(model.initializers)
    return ckpt
