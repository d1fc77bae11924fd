"""Damaged or hostile MXNet inputs: one-line FormatError naming the file, CLI exit 2, nothing written."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubfmt import Checkpoint, LazyTensor, TensorInfo
from hubfmt.adapters import mxnet as mxa
from hubfmt.adapters.mxnet import ndlist
from hubfmt.errors import FormatError

from conftest import run_cli


def _good(path, dtype_flag=0, n=2):
    with open(path, "wb") as f:
        f.write(struct.pack("<QQQ", 0x112, 0, n))
        for _ in range(n):
            f.write(struct.pack("<IiIqqiii", ndlist.V2_MAGIC, 0, 2, 3, 4, 1, 0, dtype_flag))
            f.write(np.arange(12, dtype=np.float32).tobytes())
        f.write(struct.pack("<Q", n))
        for i in range(n):
            name = f"arg:l{i}_weight".encode()
            f.write(struct.pack("<Q", len(name)) + name)
    return path


def _patch(path, offset, fmt, value):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


# offset of the first record's fields in _good(): 24 header bytes, then magic(4) stype(4) ndim(4) dims(16) ctx(8)
_MAGIC, _STYPE, _NDIM, _DIM0, _FLAG = 24, 28, 32, 36, 60


def _damage(kind, p):
    if kind == "list magic":
        _patch(p, 0, "<Q", 0x113)
    elif kind == "record magic":
        _patch(p, _MAGIC, "<I", 0xDEADBEEF)
    elif kind == "dtype code":
        _patch(p, _FLAG, "<i", 99)
    elif kind == "sparse":
        _patch(p, _STYPE, "<i", 2)
    elif kind == "rank":
        _patch(p, _NDIM, "<I", 1000)
    elif kind == "huge dim":
        _patch(p, _DIM0, "<q", 1 << 40)
    elif kind == "negative dim":
        _patch(p, _DIM0, "<q", -3)
    elif kind == "array count":
        _patch(p, 16, "<Q", 1 << 60)
    elif kind == "name count":
        size = os.path.getsize(p)
        _patch(p, size - 2 * (8 + len("arg:l0_weight")) - 8, "<Q", 5)
    elif kind == "truncated record":
        with open(p, "r+b") as f:
            f.truncate(24 + 40 + 20)            # inside the first array's data
    elif kind == "truncated header":
        with open(p, "r+b") as f:
            f.truncate(24 + 10)
    elif kind == "duplicate name":
        data = open(p, "rb").read().replace(b"arg:l1_weight", b"aux:l0_weight")
        open(p, "wb").write(data)


CASES = {
    "list magic": "not an MXNet NDArray file", "record magic": "unknown record magic",
    "dtype code": "unknown dtype code 99", "sparse": "csr", "rank": "implausible rank",
    "huge dim": "truncated", "negative dim": "negative dimension", "array count": "cannot fit",
    "name count": "names for 2 arrays", "truncated record": "truncated", "truncated header": "truncated",
    "duplicate name": "stored twice",
}


@pytest.mark.parametrize("kind", list(CASES))
def test_damaged_file_is_one_line_error(tmp_path, kind):
    p = _good(tmp_path / "m-0000.params")
    _damage(kind, p)
    with pytest.raises(FormatError) as ei:
        mxa.read(p)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg and CASES[kind] in msg, msg


@pytest.mark.parametrize("kind", ["dtype code", "truncated record", "list magic"])
def test_cli_exit_2_and_nothing_written(tmp_path, kind):
    p = _good(tmp_path / "m-0000.params")
    _damage(kind, p)
    out = tmp_path / "out.safetensors"
    proc = run_cli("convert", p, out, "--from", "mxnet")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(p) in lines[0] and CASES[kind] in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["m-0000.params"]


def test_symbol_naming_absent_parameters(tmp_path):
    p = _good(tmp_path / "m-0000.params")
    sym = {"nodes": [{"op": "null", "name": "data", "inputs": []},
                     {"op": "null", "name": "l0_weight", "inputs": []},
                     {"op": "null", "name": "fc_weight", "inputs": []},
                     {"op": "null", "name": "fc_bias", "inputs": []},
                     {"op": "FullyConnected", "name": "l0", "attrs": {"num_hidden": "3", "no_bias": "True"},
                      "inputs": [[0, 0, 0], [1, 0, 0]]},
                     {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "3"},
                      "inputs": [[4, 0, 0], [2, 0, 0], [3, 0, 0]]}],
           "arg_nodes": [0, 1, 2, 3], "heads": [[5, 0, 0]]}
    (tmp_path / "m-symbol.json").write_text(json.dumps(sym))
    with pytest.raises(FormatError) as ei:
        mxa.read(p)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg and "m-symbol.json" in msg and "fc_weight, fc_bias" in msg
    proc = run_cli("convert", p, tmp_path / "o.safetensors")
    assert proc.returncode == 2 and "m-symbol.json" in proc.stderr
    assert not (tmp_path / "o.safetensors").exists()
    # the same file with the symbol ignored reads fine
    assert list(mxa.read(p, symbol_file=False)) == ["l0.weight", "l1.weight"]


def test_broken_symbol_json(tmp_path):
    p = _good(tmp_path / "m-0000.params")
    (tmp_path / "m-symbol.json").write_text("{not json")
    with pytest.raises(FormatError, match="m-symbol.json: symbol file is not valid JSON"):
        mxa.read(p)
    (tmp_path / "m-symbol.json").write_text(json.dumps({"nodes": [{"op": "FullyConnected", "name": "fc",
                                                                    "inputs": [[7, 0, 0]]}]}))
    with pytest.raises(FormatError, match="bad input"):
        mxa.read(p)
    # unreadable attribute values are treated as absent, never a traceback
    garbage = {"nodes": [{"op": "null", "name": "data", "inputs": []},
                         {"op": "null", "name": "l0_weight", "inputs": []},
                         {"op": "Convolution", "name": "c", "attrs": {"kernel": "((((", "num_group": "x",
                                                                       "stride": "('a', 1)", "num_filter": [1]},
                          "inputs": [[0, 0, 0], [1, 0, 0]]}]}
    (tmp_path / "m-symbol.json").write_text(json.dumps(garbage))
    assert mxa.read(p).layers["l0"].attrs["groups"] == 1


def test_writer_failure_leaves_nothing(tmp_path):
    # a tensor whose data cannot be produced, after others were written: no file, no temporaries
    tpl = tmp_path / "tpl-0000.params"
    _good(tpl)
    sym = {"nodes": [{"op": "null", "name": "data", "inputs": []},
                     {"op": "null", "name": "l0_weight", "inputs": []},
                     {"op": "null", "name": "l1_weight", "inputs": []},
                     {"op": "FullyConnected", "name": "a", "attrs": {"num_hidden": "3", "no_bias": "True"},
                      "inputs": [[0, 0, 0], [1, 0, 0]]},
                     {"op": "FullyConnected", "name": "b", "attrs": {"num_hidden": "3", "no_bias": "True"},
                      "inputs": [[3, 0, 0], [2, 0, 0]]}],
           "arg_nodes": [0, 1, 2], "heads": [[4, 0, 0]]}
    (tmp_path / "tpl-symbol.json").write_text(json.dumps(sym))
    ckpt = Checkpoint()
    ckpt.add("l0.weight", LazyTensor.from_array(np.ones((3, 4), np.float32)), TensorInfo(kind="linear"))

    def boom():
        raise FormatError("file ends inside a tensor", "src.bin")

    ckpt.add("l1.weight", LazyTensor((3, 4), "float32", boom), TensorInfo(kind="linear"))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(FormatError):
        mxa.write(ckpt, tmp_path / "out-0000.params", template=str(tpl))
    assert sorted(os.listdir(tmp_path)) == before          # neither -symbol.json nor .params


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_corruption_reads_or_raises_format_error(tmp_path_factory, data):
    p = _good(tmp_path_factory.mktemp("fz") / "m.params")
    raw = bytearray(p.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    p.write_bytes(bytes(raw))
    try:
        ckpt = mxa.read(p)
    except FormatError as e:
        assert "\n" not in str(e) and str(p) in str(e)
        return
    for name in ckpt:
        ckpt.tensor(name)          # every span the reader accepted lies inside the file
