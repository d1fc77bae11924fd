"""Bad and hostile .onnx input: a one-line FormatError naming the file (CLI exit 2), nothing
partial written; external data only from regular files inside the model's directory."""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import require, run_cli
from hubfmt.adapters import onnx as adapter
from hubfmt.adapters.onnx import proto
from hubfmt.errors import FormatError
from hubfmt.sdk import protowire
from onnx_template import model_with

onnx = require("onnx")


def _good(tmp_path) -> str:
    arrays = {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
              "bn.weight": np.ones(2, np.float16)}
    return model_with(arrays, str(tmp_path / "good.onnx"))


def _read_error(path) -> str:
    with pytest.raises(FormatError) as e:
        ckpt = adapter.read(path)
        for n in ckpt:
            ckpt.tensor(n)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


def test_every_truncation_is_a_format_error(tmp_path):
    good_path = _good(tmp_path)
    good = open(good_path, "rb").read()
    model = proto.scan(good_path)
    # a cut between two top-level fields after the graph is a valid, shorter model: protobuf cannot tell
    boundaries = {end for _, _, end in model.top[model.graph_field:]}
    bad = tmp_path / "cut.onnx"
    for n in range(len(good)):
        bad.write_bytes(good[:n])
        try:
            ckpt = adapter.read(bad)
            for name in ckpt:
                ckpt.tensor(name)
        except FormatError as e:
            assert str(bad) in str(e) and "\n" not in str(e)
            continue
        assert n in boundaries, n


@pytest.mark.parametrize("content,problem", [
    (b"", "no graph"),
    (b"hello, this is not a model\n", ""),
    (b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint"),
    (b"\x08\x07\x3a\x80\x80\x80\x80\x10", "runs past the end"),
    (b"\x08\x07\x3a\x02\x2a\x10", "runs past the end"),            # an initializer longer than its graph
    (b"\x08\x07\x3a\x00\x3a\x00", "a second graph"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), ""),
])
def test_not_a_model(tmp_path, content, problem):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    assert problem in _read_error(bad)
    assert adapter.sniff(bad) is None


def _tensor(name: str, dims, data_type: int, *fields: bytes) -> bytes:
    body = b"".join(protowire.field_varint(1, d) for d in dims) + protowire.field_varint(2, data_type)
    body += protowire.field_bytes(8, name.encode()) + b"".join(fields)
    return body


def _model(*tensors: bytes) -> bytes:
    graph = b"".join(protowire.field_bytes(5, t) for t in tensors)
    return protowire.field_varint(1, 8) + protowire.field_bytes(7, graph)


@pytest.mark.parametrize("tensor,problem", [
    (_tensor("w", [2, 3], 1, protowire.field_bytes(9, bytes(20))), "raw_data of 20 bytes, dims [2, 3] of float32 need 24"),
    (_tensor("w", [2], 99, protowire.field_bytes(9, bytes(8))), "unsupported ONNX data_type 99"),
    (_tensor("w", [2, (1 << 64) - 1], 1, protowire.field_bytes(9, bytes(8))), "negative dimension"),
    (_tensor("w", [1 << 40], 1, protowire.field_bytes(4, bytes(8))), "need more values"),
    (_tensor("w", [3], 1, protowire.field_bytes(4, bytes(8))), "2 values, dims [3] need 3"),
    (_tensor("w", [2], 1, protowire.field_bytes(4, bytes(7))), "packed <f4 data of 7 bytes"),
    (_tensor("w", [2], 7, protowire.field_bytes(7, b"\x01\xff")), "varint"),
    (_tensor("w", [2], 1, protowire.field_bytes(3, b"")), "segmented"),
    (_tensor("w", [2], 1), "has no data"),
    (_tensor("w", [2], 1, protowire.field_bytes(9, bytes(8)), protowire.field_bytes(4, bytes(8))), "both raw_data"),
])
def test_damaged_tensors(tmp_path, tensor, problem):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(_model(tensor))
    assert problem in _read_error(bad)


def _external(tmp_path, location: str, *, offset=None, length=None) -> str:
    model = onnx.load(_good(tmp_path))
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            e = t.external_data.add()
            e.key, e.value = k, str(v)
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    path = str(d / "model.onnx")
    onnx.save(model, path)
    return path


def test_external_data_is_read(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    w = np.arange(24, dtype=np.float32)
    (d / "w.bin").write_bytes(b"pad!" + w.tobytes())
    ckpt = adapter.read(_external(tmp_path, "w.bin", offset=4, length=96))
    assert np.array_equal(ckpt.tensor("conv.weight").reshape(-1), w)


@pytest.mark.parametrize("location,problem", [
    ("../secret.bin", "outside the model's directory"),
    ("sub/../../secret.bin", "outside the model's directory"),
    ("/etc/passwd", "not a relative path"),
    ("link.bin", "symbolic link"),
    ("dir", "not a regular file"),
    ("fifo", "not a regular file"),
    ("missing.bin", "does not exist"),
    ("", "has no location"),
    ("short.bin", "lie outside"),
])
def test_hostile_external_data_is_refused(tmp_path, location, problem):
    (tmp_path / "secret.bin").write_bytes(bytes(96))
    d = tmp_path / "m"
    d.mkdir()
    os.symlink(tmp_path / "secret.bin", d / "link.bin")
    (d / "dir").mkdir()
    os.mkfifo(d / "fifo")
    (d / "short.bin").write_bytes(bytes(10))
    path = _external(tmp_path, location, length=96)
    msg = _read_error(path)
    assert problem in msg, msg
    r = run_cli("convert", path, tmp_path / "out.safetensors")
    assert r.returncode == 2 and problem in r.stderr, r.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_external_length_must_match_dims(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "w.bin").write_bytes(bytes(200))
    assert "external data of 100 bytes" in _read_error(_external(tmp_path, "w.bin", length=100))
