"""Writing new weights into an existing ONNX model (the template) without onnx.

The output is the template byte for byte except its initializers: every field of the ModelProto
and GraphProto (nodes, inputs, outputs, metadata, opsets, functions) is copied as it lies in the
template file; each initializer keeps its name, dims, data type and other fields, and gets new
data as raw_data (or, with external data, a range of `<output>.data`). Shapes are checked against
the template's; dtypes are the template's (a cast is reported). Initializers the checkpoint does
not supply (graph constants) keep the template's data.

Streaming: sizes are known from the template, so the length prefixes of the graph and of every
initializer are written first and the tensor bytes follow (TensorStream); the template's own
tensor data is never loaded unless it is kept and lay in an external file. An ONNX file without a
graph cannot run, so writing without a template is an error.
"""
from __future__ import annotations

import os

import numpy as np

from hubfmt.sdk import (Checkpoint, ConversionError, FormatError, LazyTensor, Progress, Report, TensorStream,
                        atomic_outputs, dtypes, protowire, region_tensor, write_tensor)

from . import proto, reader
from .formats import EXTERNAL_THRESHOLD, INLINE_LIMIT

ALIGN = 64      # external data offsets (onnx needs none; aligned ranges map well)


class _Out:
    """One initializer to write."""

    def __init__(self, init: proto.Initializer, tensor: LazyTensor | None, dtype: str, keep_bytes: bytes):
        self.init = init
        self.tensor = tensor            # None: copy the template's field verbatim
        self.dtype = dtype
        self.keep_bytes = keep_bytes    # the tensor's non-data fields, as in the template
        self.external: tuple[int, int] | None = None

    @property
    def nbytes(self) -> int:
        if self.tensor is None:
            return 0
        return self.tensor.nbytes // dtypes.itemsize(self.tensor.dtype) * dtypes.itemsize(self.dtype)

    def data_header(self, location: str) -> bytes:
        if self.external is None:
            return protowire.field_length(9, self.nbytes)
        off, n = self.external
        entries = b"".join(protowire.field_bytes(13, protowire.field_bytes(1, k.encode()) +
                                                  protowire.field_bytes(2, v.encode()))
                           for k, v in (("location", location), ("offset", str(off)), ("length", str(n))))
        return entries + protowire.field_varint(14, proto.EXTERNAL)

    def message_size(self, location: str) -> int:
        inline = self.nbytes if self.external is None else 0
        return len(self.keep_bytes) + len(self.data_header(location)) + inline


def _read_range(f, start: int, end: int, path: str) -> bytes:
    f.seek(start)
    b = f.read(end - start)
    if len(b) != end - start:
        raise FormatError("template changed while being read", path)
    return b


def _source_for(ckpt: Checkpoint, canonical: str, native: str) -> str | None:
    if canonical in ckpt:
        return canonical
    for n, e in ckpt.entries.items():
        if e.info.original_name == native:
            return n
    return None


def _plan(ckpt: Checkpoint, model: proto.Model, report: Report, strict: bool) -> list[_Out]:
    used = reader.plan(model)
    outs: list[_Out] = []
    taken: set[str] = set()
    written: dict[str, str] = {}        # template initializer -> the checkpoint tensor written there
    with open(model.path, "rb") as f:
        for t in model.initializers:
            u = used[t.name]
            keep = b"".join(_read_range(f, a, b, model.path) for a, b in t.keep)
            dt = proto.DTYPES.get(t.data_type)
            if dt is None:
                raise ConversionError(f"template initializer {t.name!r}: unsupported data_type {t.data_type}",
                                      model.path)
            src = _source_for(ckpt, u.canonical, t.name)
            if src is None:
                if not u.constant:
                    if strict:
                        raise ConversionError(f"the checkpoint has no {u.canonical!r} for the template's initializer "
                                              f"{t.name!r} (-W strict=false keeps the template's)", model.path)
                    report.add("missing", u.canonical, f"kept the template's {t.name!r} (strict=False)")
                # the template's data; inline stays a verbatim copy, external data is rewritten
                kept = reader.tensor_of(model.path, t) if t.location == proto.EXTERNAL else None
                outs.append(_Out(t, kept, dt, keep))
                continue
            taken.add(src)
            written[t.name] = src
            tensor = ckpt[src].tensor
            if u.transposed:
                if len(tensor.shape) != 2:
                    raise ConversionError(f"{src!r} has shape {list(tensor.shape)}, a linear weight is 2-D")
                tensor = tensor.map(lambda a: np.ascontiguousarray(a.T), tuple(reversed(tensor.shape)))
            if tuple(tensor.shape) != tuple(t.dims):
                shown = list(reversed(tensor.shape)) if u.transposed else list(tensor.shape)
                want = list(reversed(t.dims)) if u.transposed else list(t.dims)
                raise ConversionError(f"{src!r} has shape {shown}, the template's {t.name!r} {want}", model.path)
            if tensor.dtype != dt:
                report.add("cast", src, f"{tensor.dtype}->{dt} (the template's dtype)")
            if src != t.name:
                report.renamed(src, t.name)
            outs.append(_Out(t, tensor, dt, keep))
    aliases = {u.canonical: u for u in used.values() if u.alias_of}
    for n, e in ckpt.entries.items():
        if n in taken:
            continue
        alias = aliases.get(n) or next((u for u in aliases.values() if e.info.original_name and
                                        used.get(e.info.original_name) is u), None)
        if alias is not None and alias.alias_of in written:
            _check_tie(ckpt, n, written[alias.alias_of], alias.alias_of, model.path)
            report.add("tied", n, f"the model holds it once, as {alias.alias_of!r} (equal values)")
            continue
        if e.info.role == "num_batches_tracked":
            report.add("dropped", n, "ONNX BatchNormalization keeps no step count")
        elif strict:
            raise ConversionError(f"tensor {n!r} has no initializer in the template (-W strict=false drops it)",
                                  model.path)
        else:
            report.add("dropped", n, "no initializer in the template")
    return outs


def _check_tie(ckpt: Checkpoint, name: str, src: str, init: str, path: str) -> None:
    """`name` goes where the model feeds `init` through an Identity: only if its values are `src`'s."""
    a, b = ckpt[name].tensor, ckpt[src].tensor
    same = a.shape == b.shape and np.array_equal(a.load(), b.load())
    if not same and len(a.shape) == 2 and a.shape == tuple(reversed(b.shape)):
        same = np.array_equal(a.load(), b.load().T)
    if not same:
        raise ConversionError(f"{name!r} and {src!r} are one initializer in the template ({init!r}: the exporter "
                              "merged parameters of equal value), but the checkpoint's values differ; export the "
                              "model again from these weights", path)


def write(ckpt: Checkpoint, path: str | os.PathLike, *, overwrite: bool = False, progress: Progress | None = None,
          template: str | None = None, strict: bool = True, external_data: bool | None = None) -> Report:
    """Write `ckpt`'s tensors into a copy of the ONNX model `template` at `path`.

    >>> write(hubfmt.read("ft.pth"), "ft.onnx", template="model.onnx")     # doctest: +SKIP
    """
    path = os.fspath(path)
    if template is None:
        raise ConversionError("writing an .onnx needs the model to put the weights into: pass --template "
                              "model.onnx (an ONNX file without its graph cannot run)", path)
    template = os.fspath(template)
    model = proto.scan(template)
    report = Report(stage="write")
    outs = _plan(ckpt, model, report, strict)

    if external_data is None:
        external_data = (any(t.location == proto.EXTERNAL for t in model.initializers)
                         or sum(o.nbytes for o in outs) > INLINE_LIMIT)
    data_path = path + ".data"
    location = os.path.basename(data_path)
    pos = 0
    if external_data:
        for o in outs:
            if o.tensor is not None and o.nbytes >= EXTERNAL_THRESHOLD:
                pos += -pos % ALIGN
                o.external = (pos, o.nbytes)
                pos += o.nbytes
    finals = [data_path, path] if external_data else [path]

    # Sizes: each initializer's message, then the graph's content.
    out_of = {o.init.field_start: o for o in outs}
    graph_size = 0
    for num, start, end in model.graph:
        o = out_of.get(start) if num == 5 else None
        if o is None or o.tensor is None:
            graph_size += end - start
        else:
            n = o.message_size(location)
            graph_size += len(protowire.field_length(5, n)) + n
    stream = TensorStream([o for o in outs if o.tensor is not None], progress=progress)
    pieces = iter(stream)
    with atomic_outputs(finals, overwrite=overwrite) as files:
        data = open(files.path(data_path), "wb") if external_data else None
        try:
            with open(files.path(path), "wb") as f:
                for i, (_num, start, end) in enumerate(model.top):
                    if i != model.graph_field:
                        write_tensor(f, region_tensor(template, start, "uint8", (end - start,)))
                        continue
                    f.write(protowire.field_length(7, graph_size))
                    for gnum, gstart, gend in model.graph:
                        o = out_of.get(gstart) if gnum == 5 else None
                        if o is None or o.tensor is None:
                            write_tensor(f, region_tensor(template, gstart, "uint8", (gend - gstart,)))
                            continue
                        item, piece = next(pieces)
                        assert item is o
                        f.write(protowire.field_length(5, o.message_size(location)) + o.keep_bytes
                                + o.data_header(location))
                        if o.external is None:
                            n = piece.write(f)
                        else:
                            assert data is not None
                            data.write(b"\0" * (o.external[0] - data.tell()))
                            n = piece.write(data)
                        if n != o.nbytes:
                            raise AssertionError(f"{o.init.name}: wrote {n} bytes, expected {o.nbytes}")
        finally:
            if data is not None:
                data.close()
    report.tensors_in = len(ckpt)
    report.tensors_out = stream.tensors
    report.bytes_out = stream.bytes
    return report
