"""An ONNX model (made with onnx.helper) whose initializers are given arrays, each feeding an
Identity node to a graph output: the template an ONNX writer needs, for suites that write
arbitrary checkpoints (contract, fuzz)."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np


def model_with(arrays: dict[str, np.ndarray], path: str) -> str:
    from onnx import helper, numpy_helper, save

    inits = [numpy_helper.from_array(np.array(a, order="C"), n) for n, a in arrays.items()]
    nodes = [helper.make_node("Identity", [n], [n + "/out"]) for n in arrays]
    outs = [helper.make_tensor_value_info(n + "/out", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in arrays.items()]
    save(helper.make_model(helper.make_graph(nodes, "g", [], outs, inits)), path)
    return path


def template_for(ckpt) -> str:
    """A template for `ckpt` (a hubfmt Checkpoint) in a fresh temporary directory."""
    d = tempfile.mkdtemp(prefix="onnx-template-")
    atexit.register(shutil.rmtree, d, True)
    return model_with({n: ckpt.tensor(n) for n in ckpt}, os.path.join(d, "template.onnx"))


def bare_model(ckpt, path: str) -> str:
    """A ModelProto whose graph holds only initializers, one per tensor of `ckpt` (a hubfmt
    Checkpoint) with its name, shape and dtype (the source's dtype when it was widened), written
    with hubfmt's protobuf wire codec: no onnx needed, every dtype hubfmt carries (bfloat16 too).
    Streamed: one tensor in memory at a time."""
    from hubfmt.adapters.onnx.proto import CODE_OF
    from hubfmt.sdk import dtypes, protowire as pw

    heads, sizes = [], []
    for name, e in ckpt.entries.items():
        dt = e.info.original_dtype or e.tensor.dtype
        nbytes = e.tensor.nbytes // dtypes.itemsize(e.tensor.dtype) * dtypes.itemsize(dt)
        body = b"".join(pw.field_varint(1, d) for d in e.tensor.shape) + pw.field_varint(2, CODE_OF[dt])
        body += pw.field_bytes(8, name.encode()) + pw.field_length(9, nbytes)
        heads.append((name, dt, pw.field_length(5, len(body) + nbytes) + body))
        sizes.append(len(heads[-1][2]) + nbytes)
    with open(path, "wb") as f:
        f.write(pw.field_varint(1, 8) + pw.field_length(7, sum(sizes)))
        for name, dt, head in heads:
            e = ckpt[name]
            f.write(head + dtypes.convert(e.tensor.load(), e.tensor.dtype, dt).tobytes())
    return path


def bare_template_for(ckpt) -> str:
    """bare_model in a fresh temporary directory, removed when the process exits."""
    d = tempfile.mkdtemp(prefix="onnx-template-")
    atexit.register(shutil.rmtree, d, True)
    return bare_model(ckpt, os.path.join(d, "template.onnx"))
