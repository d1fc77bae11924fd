"""An in-memory onnx.ModelProto <-> canonical Checkpoint (needs onnx; imported only in here)."""
from __future__ import annotations

import numpy as np

from hubfmt.sdk import Checkpoint, ConversionError, LayerInfo, LazyTensor, MissingFrameworkError, Report, SourceInfo
from hubfmt.sdk import TensorInfo

from . import proto


def _onnx():
    try:
        import onnx
        import onnx.numpy_helper
    except ImportError:
        raise MissingFrameworkError("onnx", "onnx", "an onnx.ModelProto") from None
    return onnx


def _structure(model) -> proto.Model:
    """The parts of a ModelProto that naming needs, as the file scanner gives them."""
    onnx = _onnx()
    m = proto.Model("<memory>", 0)
    for n in model.graph.node:
        attrs = {}
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.INTS):
                v = onnx.helper.get_attribute_value(a)
                attrs[a.name] = list(v) if isinstance(v, (list, tuple)) else v
        m.nodes.append(proto.Node(n.op_type, n.name, list(n.input), list(n.output), attrs))
    for t in model.graph.initializer:
        m.initializers.append(proto.Initializer(t.name, tuple(t.dims), t.data_type, 0, 0, 0))
    return m


def from_model(model) -> Checkpoint:
    """An onnx.ModelProto's initializers as a Checkpoint (external data must be loaded).

    >>> ckpt = from_model(onnx.load("model.onnx"))         # doctest: +SKIP
    """
    onnx = _onnx()
    from .reader import plan

    used = plan(_structure(model))
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    ckpt.source = SourceInfo("onnx", onnx.__version__, model.graph.name, "onnx-model-proto")
    for t in model.graph.initializer:
        u = used[t.name]
        if u.constant:
            ckpt.report.add("dropped", t.name, "graph constant, not a weight")
            continue
        arr = onnx.numpy_helper.to_array(t)
        if u.transposed:
            arr = np.ascontiguousarray(arr.T)
        tensor = LazyTensor.from_array(np.ascontiguousarray(arr))
        ckpt.add(u.canonical, tensor, TensorInfo(kind=u.kind, role=u.role, layer=u.layer, original_name=t.name,
                                                 original_dtype=tensor.dtype, original_layout="IO" if u.transposed else "",
                                                 original_shape=tuple(t.dims)))
        if u.kind != "tensor" and u.layer:
            ckpt.layers.setdefault(u.layer, LayerInfo(u.kind, dict(u.attrs)))
        if u.canonical != t.name:
            ckpt.report.renamed(t.name, u.canonical)
    ckpt.report.tensors_in = len(model.graph.initializer)
    return ckpt


def to_model(ckpt: Checkpoint, model, *, strict: bool = True) -> Report:
    """Replace the initializers of an onnx.ModelProto in place with `ckpt`'s tensors (same
    shapes, the model's dtypes). strict: every weight filled and every tensor used."""
    onnx = _onnx()
    from .reader import plan

    used = plan(_structure(model))
    report = Report(stage="write")
    taken = set()
    for t in model.graph.initializer:
        u = used[t.name]
        src = u.canonical if u.canonical in ckpt else (t.name if t.name in ckpt else None)
        if src is None:
            if strict and not u.constant:
                raise ConversionError(f"the checkpoint has no {u.canonical!r} for initializer {t.name!r}")
            continue
        taken.add(src)
        arr = ckpt[src].tensor.load()
        if u.transposed:
            arr = np.ascontiguousarray(arr.T)
        if tuple(arr.shape) != tuple(t.dims):
            raise ConversionError(f"{src!r} has shape {list(arr.shape)}, initializer {t.name!r} {list(t.dims)}")
        want = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        new = onnx.numpy_helper.from_array(arr.astype(want), t.name)
        t.CopyFrom(new)
        if src != t.name:
            report.renamed(src, t.name)
    extra = [n for n in ckpt if n not in taken and ckpt[n].info.role != "num_batches_tracked"]
    if extra and strict:
        raise ConversionError(f"{len(extra)} tensor(s) have no initializer in the model: {extra[:5]}")
    for n in extra:
        report.add("unexpected", n, "no initializer in the model")
    report.tensors_in = len(ckpt)
    report.tensors_out = len(taken)
    return report
