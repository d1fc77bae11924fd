"""The MXNet `.params` codec and name rules, without MXNet (one test uses mx.nd.load as the oracle)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np

import hubfmt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hubfmt import Checkpoint, LayerInfo, LazyTensor, TensorInfo
from hubfmt.io import hubfile
from hubfmt.adapters import mxnet as mxa
from hubfmt.adapters.mxnet import names, ndlist
from hubfmt.errors import ConversionError, OutputError

from conftest import require

DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"]


def _record(dims, flag, data: bytes, magic=ndlist.V2_MAGIC) -> bytes:
    head = struct.pack("<I", magic)
    if magic in (ndlist.V2_MAGIC, ndlist.V3_MAGIC):
        head += struct.pack("<i", 0)
    if magic in (ndlist.V1_MAGIC, ndlist.V2_MAGIC, ndlist.V3_MAGIC):
        head += struct.pack(f"<I{len(dims)}q", len(dims), *dims)
    else:                                   # legacy: the magic word was the rank
        head = struct.pack(f"<I{len(dims)}I", len(dims), *dims)
    return head + struct.pack("<iii", 1, 0, flag) + data


def _list_file(path, records: list[bytes], names_: list[str]):
    with open(path, "wb") as f:
        f.write(struct.pack("<QQQ", 0x112, 0, len(records)))
        for r in records:
            f.write(r)
        f.write(struct.pack("<Q", len(names_)))
        for n in names_:
            f.write(struct.pack("<Q", len(n.encode())) + n.encode())


def test_every_record_version_reads(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(4, dtype=np.int64)
    c = np.array([1.5], dtype=np.float64)
    p = tmp_path / "v.params"
    _list_file(p, [_record((2, 3), 0, a.tobytes(), ndlist.V1_MAGIC),
                   _record((4,), 6, b.tobytes(), 0),                     # legacy, uint32 dims
                   _record((), 1, c.tobytes(), ndlist.V3_MAGIC),          # V3 0-d
                   struct.pack("<Iii", ndlist.V2_MAGIC, 0, 0)],           # V2 'none' array
               ["a_weight", "b_bias", "c", "d"])
    ckpt = mxa.read(p)
    assert np.array_equal(ckpt.tensor("a.weight"), a)
    assert np.array_equal(ckpt.tensor("b.bias"), b)
    assert ckpt["c"].tensor.shape == () and ckpt.tensor("c") == 1.5
    assert "d" not in ckpt and ckpt.report.names("dropped") == ["d"]


def test_unnamed_list_gets_positions(tmp_path):
    p = tmp_path / "l.params"
    _list_file(p, [_record((2,), 0, np.ones(2, np.float32).tobytes())], [])
    assert list(mxa.read(p)) == ["0"]


def test_reader_is_lazy_and_spans_the_file(tmp_path):
    ckpt = _sample()
    out = tmp_path / "m-0000.params"
    mxa.write(ckpt, out)
    back = mxa.read(out)
    e = back["stage1_conv0.weight"]
    assert e.tensor.span is not None and e.tensor.span.path == str(out)
    with open(out, "rb") as f:
        f.seek(e.tensor.span.offset)
        raw = f.read(e.tensor.span.nbytes)
    assert raw == ckpt.tensor("stage1_conv0.weight").tobytes()


def _sample(seed=0) -> Checkpoint:
    rng = np.random.default_rng(seed)
    ckpt = Checkpoint()
    ckpt.source.framework = "test"

    def add(name, arr, kind):
        ckpt.add(name, LazyTensor.from_array(arr), TensorInfo(kind=kind))

    add("stage1_conv0.weight", rng.standard_normal((8, 2, 3, 3)).astype(np.float32), "conv2d")
    add("stage1_bn0.weight", rng.random(8).astype(np.float32), "batch_norm")
    add("stage1_bn0.bias", rng.standard_normal(8).astype(np.float32), "batch_norm")
    add("stage1_bn0.running_mean", rng.standard_normal(8).astype(np.float32), "batch_norm")
    add("stage1_bn0.running_var", rng.random(8).astype(np.float32), "batch_norm")
    add("stage1_bn0.num_batches_tracked", np.array(3, dtype=np.int64), "batch_norm")
    add("fc.weight", rng.standard_normal((4, 8)).astype(np.float16), "linear")
    add("fc.bias", rng.standard_normal(4).astype(np.float16), "linear")
    ckpt.layers["stage1_bn0"] = LayerInfo("batch_norm", {"eps": 1e-5, "momentum": 0.1})
    return ckpt


def test_module_style_names_and_arg_aux_split(tmp_path):
    out = tmp_path / "m-0000.params"
    report = mxa.write(_sample(), out)
    _, stored = ndlist.scan(str(out))
    assert stored == ["arg:stage1_conv0_weight", "arg:stage1_bn0_gamma", "arg:stage1_bn0_beta",
                      "aux:stage1_bn0_running_mean", "aux:stage1_bn0_running_var", "arg:fc_weight", "arg:fc_bias"]
    assert report.names("dropped") == ["stage1_bn0.num_batches_tracked"]
    assert not os.path.exists(tmp_path / "m-symbol.json")        # no graph known: none written, and said so
    assert "no -symbol.json written" in report.of("warning")[0].detail


def test_gluon_style_names_and_dtypes_restored(tmp_path):
    out = tmp_path / "net.params"
    mxa.write(_sample(), out)
    records, stored = ndlist.scan(str(out))
    assert stored == ["stage1_conv0.weight", "stage1_bn0.gamma", "stage1_bn0.beta", "stage1_bn0.running_mean",
                      "stage1_bn0.running_var", "fc.weight", "fc.bias"]
    assert [r.dtype for r in records][-2:] == ["float16", "float16"]
    back = mxa.read(out)
    assert back["stage1_bn0.weight"].info.kind == "batch_norm"


def test_name_rules():
    assert names.canonical("arg:resnetv10_stage1_conv0_weight")[0] == "resnetv10_stage1_conv0.weight"
    assert names.canonical("hybridsequential0_batchnorm0_gamma")[0] == "hybridsequential0_batchnorm0.weight"
    assert names.canonical("bn_moving_var")[0] == "bn.running_var"
    assert names.canonical("features.1.beta")[0] == "features.1.bias"
    assert names.canonical("odd")[0] == "odd"
    assert names.native("features.1", "weight", "batch_norm", "module") == "features_1_gamma"
    assert names.native("features.1", "running_var", "batch_norm", "gluon") == "features.1.running_var"


def test_refuses_existing_output(tmp_path):
    out = tmp_path / "m.params"
    out.write_bytes(b"keep")
    with pytest.raises(OutputError):
        mxa.write(_sample(), out)
    assert out.read_bytes() == b"keep"
    mxa.write(_sample(), out, overwrite=True)
    assert mxa.sniff(str(out)) == "mxnet-params"


def test_template_by_order_and_one_by_one_conv_reshape(tmp_path):
    # the target model names things its own way and has a 1x1 conv classifier (DPN's fc6)
    tpl = tmp_path / "tpl-0000.params"
    w = np.zeros((4, 8, 1, 1), np.float32)
    _list_file(tpl, [_record((4, 8, 1, 1), 0, w.tobytes()), _record((4,), 0, np.zeros(4, np.float32).tobytes())],
               ["arg:fc6_weight", "arg:fc6_bias"])
    src = Checkpoint()
    fw = np.arange(32, dtype=np.float32).reshape(4, 8)
    src.add("classifier.weight", LazyTensor.from_array(fw), TensorInfo(kind="linear"))
    src.add("classifier.bias", LazyTensor.from_array(np.ones(4, np.float32)), TensorInfo(kind="linear"))
    out = tmp_path / "o-0000.params"
    report = mxa.write(src, out, template=str(tpl))
    back = mxa.read(out)
    assert list(back) == ["fc6.weight", "fc6.bias"]
    assert np.array_equal(back.tensor("fc6.weight"), fw.reshape(4, 8, 1, 1))
    assert report.names("reshaped") == ["classifier.weight"]
    bad = Checkpoint()
    bad.add("classifier.weight", LazyTensor.from_array(np.zeros((4, 7), np.float32)), TensorInfo(kind="linear"))
    bad.add("classifier.bias", LazyTensor.from_array(np.ones(4, np.float32)), TensorInfo(kind="linear"))
    with pytest.raises(ConversionError, match="shape"):
        mxa.write(bad, tmp_path / "p-0000.params", template=str(tpl))
    assert not os.path.exists(tmp_path / "p-0000.params")


def test_symbol_json_travels_through_the_hub(tmp_path):
    sym = {"nodes": [{"op": "null", "name": "data", "inputs": []},
                     {"op": "null", "name": "fc_weight", "inputs": []},
                     {"op": "null", "name": "fc_bias", "inputs": []},
                     {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "4"},
                      "inputs": [[0, 0, 0], [1, 0, 0], [2, 0, 0]]}],
           "arg_nodes": [0, 1, 2], "heads": [[3, 0, 0]], "attrs": {"mxnet_version": ["int", 10901]}}
    (tmp_path / "s-symbol.json").write_text(json.dumps(sym))
    _list_file(tmp_path / "s-0000.params",
               [_record((4, 3), 0, np.ones((4, 3), np.float32).tobytes()), _record((4,), 0, np.zeros(4, np.float32).tobytes())],
               ["arg:fc_weight", "arg:fc_bias"])
    ckpt = mxa.read(tmp_path / "s-0000.params")
    assert ckpt.source.framework_version == "1.9.1" and ckpt.layers["fc"].kind == "linear"
    hubfile.write(ckpt, tmp_path / "s.safetensors")
    mxa.write(hubfile.read(tmp_path / "s.safetensors"), tmp_path / "t-0000.params")
    assert (tmp_path / "t-symbol.json").read_text() == (tmp_path / "s-symbol.json").read_text()   # verbatim
    assert ndlist.scan(str(tmp_path / "t-0000.params"))[1] == ["arg:fc_weight", "arg:fc_bias"]


# ---- round trips --------------------------------------------------------------------------

_names = st.from_regex(r"[a-z][a-z0-9]{0,6}(_[a-z0-9]{1,4}){0,2}", fullmatch=True)


@st.composite
def checkpoints(draw):
    ckpt = Checkpoint()
    layers = draw(st.lists(_names, min_size=1, max_size=5, unique=True))
    for layer in layers:
        for role in draw(st.sampled_from([("weight",), ("weight", "bias"), ("bias",)])):
            dt = draw(st.sampled_from(DTYPES))
            shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4))
            store = "uint16" if dt == "bfloat16" else dt
            arr = draw(hnp.arrays(np.dtype(store), shape))
            ckpt.add(f"{layer}.{role}", LazyTensor.from_array(arr, dtype=dt), TensorInfo(kind="tensor"))
    return ckpt


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(checkpoints(), st.sampled_from(["m-0000.params", "g.params"]))
def test_params_round_trip_is_bit_exact(tmp_path_factory, ckpt, name):
    out = tmp_path_factory.mktemp("rt") / name
    mxa.write(ckpt, out)
    back = mxa.read(out)
    assert list(back) == list(ckpt)
    for n in ckpt:
        assert back[n].tensor.dtype == ckpt[n].tensor.dtype
        a, b = back.tensor(n), ckpt.tensor(n)
        assert a.shape == b.shape and a.tobytes() == b.tobytes()


def test_round_trip_without_mxnet_importable(tmp_path):
    # the codec must not need MXNet: run it where `import mxnet` fails
    script = f"""
import sys; sys.modules['mxnet'] = None
import numpy as np
from hubfmt import Checkpoint, LazyTensor
from hubfmt.io import hubfile
from hubfmt.adapters import mxnet as mxa
c = Checkpoint()
c.add('a.weight', LazyTensor.from_array(np.arange(6, dtype=np.float16).reshape(2, 3)))
mxa.write(c, r'{tmp_path}/x-0000.params')
hubfile.write(mxa.read(r'{tmp_path}/x-0000.params'), r'{tmp_path}/x.safetensors')
mxa.write(hubfile.read(r'{tmp_path}/x.safetensors'), r'{tmp_path}/y-0000.params')
assert open(r'{tmp_path}/x-0000.params', 'rb').read() == open(r'{tmp_path}/y-0000.params', 'rb').read()
print('ok')
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_mx_nd_load_reads_what_hubfmt_writes(tmp_path):
    mx = require("mxnet")
    ckpt = _sample()
    bits = np.array([0x3F80, 0xC000, 0x7F80], dtype=np.uint16)
    ckpt.add("extra.weight", LazyTensor.from_array(bits, dtype="bfloat16"), TensorInfo(kind="tensor"))
    ckpt.add("flags.weight", LazyTensor.from_array(np.array([True, False])), TensorInfo(kind="tensor"))
    out = tmp_path / "m-0000.params"
    mxa.write(ckpt, out)
    loaded = mx.nd.load(str(out))
    assert list(loaded) == ndlist.scan(str(out))[1]
    for full, arr in loaded.items():
        canon = names.canonical(full)[0]
        if canon == "extra.weight":
            assert np.array_equal(arr.astype("float32").asnumpy(), np.array([1.0, -2.0, np.inf], np.float32))
            continue
        want = ckpt.tensor(canon)
        assert arr.asnumpy().dtype == want.dtype
        assert np.array_equal(arr.asnumpy(), want)
    # and hubfmt reads what mx.nd.save writes, dtypes included
    mx.nd.save(str(tmp_path / "n.params"), {"a_weight": mx.nd.array(np.arange(6).reshape(2, 3), dtype="int64"),
                                            "b_bias": mx.nd.array([1.5, 2.5], dtype="float16")})
    back = mxa.read(tmp_path / "n.params")
    assert back["a.weight"].tensor.dtype == "int64" and np.array_equal(back.tensor("a.weight"), np.arange(6).reshape(2, 3))
    assert back["b.bias"].tensor.dtype == "float16"


def test_symbol_kinds_attrs_and_shape_hints(tmp_path):
    nodes = [{"op": "null", "name": "data", "inputs": []},
             {"op": "null", "name": "emb_weight", "attrs": {"__shape__": "(10, 0)"}, "inputs": []},
             {"op": "Embedding", "name": "emb", "attrs": {"input_dim": "10", "output_dim": "4"}, "inputs": [[0, 0, 0], [1, 0, 0]]},
             {"op": "null", "name": "dw_weight", "inputs": []},
             {"op": "Convolution", "name": "dw", "attrs": {"kernel": "(3, 3)", "num_filter": "4", "num_group": "4",
                                                          "no_bias": "True"}, "inputs": [[2, 0, 0], [3, 0, 0]]},
             {"op": "null", "name": "up_weight", "inputs": []},
             {"op": "null", "name": "up_bias", "inputs": []},
             {"op": "Deconvolution", "name": "up", "attrs": {"kernel": "(2, 2)", "num_filter": "6", "num_group": "2",
                                                            "stride": "(2, 2)", "adj": "(1, 1)"},
              "inputs": [[4, 0, 0], [5, 0, 0], [6, 0, 0]]},
             {"op": "null", "name": "ln_gamma", "inputs": []}, {"op": "null", "name": "ln_beta", "inputs": []},
             {"op": "LayerNorm", "name": "ln", "inputs": [[7, 0, 0], [8, 0, 0], [9, 0, 0]]}]
    (tmp_path / "k-symbol.json").write_text(json.dumps({"nodes": nodes, "heads": [[10, 0, 0]]}))
    arrays = {"emb_weight": (10, 4), "dw_weight": (4, 1, 3, 3), "up_weight": (4, 3, 2, 2), "up_bias": (6,),
              "ln_gamma": (6,), "ln_beta": (6,)}
    _list_file(tmp_path / "k-0000.params",
               [_record(s, 0, np.zeros(s, np.float32).tobytes()) for s in arrays.values()],
               [("arg:" + n) for n in arrays])
    ckpt = mxa.read(tmp_path / "k-0000.params")
    kinds = {n: e.info.kind for n, e in ckpt.entries.items()}
    assert kinds == {"emb.weight": "embedding", "dw.weight": "depthwise_conv2d", "up.weight": "conv_transpose2d",
                     "up.bias": "conv_transpose2d", "ln.weight": "layer_norm", "ln.bias": "layer_norm"}
    assert ckpt.layers["up"].attrs["groups"] == 2 and ckpt.layers["up"].attrs["output_padding"] == [1, 1]
    assert ckpt.layers["ln"].attrs == {"eps": 1e-5}
    from hubfmt.adapters.mxnet import symbol
    g = symbol.load(str(tmp_path / "k-symbol.json"))
    assert g.params["emb_weight"].shape == (10, 4) and g.params["up_weight"].shape == (None, None, 2, 2)
    assert g.params["dw_weight"].shape == (4, None, 3, 3) and g.params["up_bias"].shape == (6,)


def test_old_symbol_attribute_keys(tmp_path):
    # pre-nnvm files keep operator parameters in "param", MXNet 0.9-1.1 in "attr"
    nodes = [{"op": "null", "name": "data", "inputs": []},
             {"op": "null", "name": "bn_gamma", "inputs": []}, {"op": "null", "name": "bn_beta", "inputs": []},
             {"op": "null", "name": "bn_moving_mean", "inputs": []}, {"op": "null", "name": "bn_moving_var", "inputs": []},
             {"op": "BatchNorm", "name": "bn", "param": {"eps": "2e-05", "fix_gamma": "False"},
              "attr": {"ctx_group": "dev1"}, "inputs": [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0]]}]
    (tmp_path / "o-symbol.json").write_text(json.dumps({"nodes": nodes, "heads": [[5, 0]]}))
    arrays = ["arg:bn_gamma", "arg:bn_beta", "aux:bn_moving_mean", "aux:bn_moving_var"]
    _list_file(tmp_path / "o-0000.params", [_record((3,), 0, np.full(3, 2, np.float32).tobytes())] * 4, arrays)
    ckpt = mxa.read(tmp_path / "o-0000.params")
    assert ckpt.layers["bn"].attrs["eps"] == 2e-5 and ckpt.layers["bn"].attrs["fix_gamma"] is False
    assert list(ckpt) == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    ckpt.layers["bn"].attrs["eps"] = 1e-5            # as if the weights came from elsewhere
    report = mxa.write(ckpt, tmp_path / "p-0000.params")
    written = json.loads((tmp_path / "p-symbol.json").read_text())["nodes"][5]
    assert written["param"]["eps"] == "1e-05" and "eps" not in written["attr"]
    assert report.of("warning")[0].name == "bn"
    assert ndlist.scan(str(tmp_path / "p-0000.params"))[1] == arrays


def test_symbol_output_options(tmp_path):
    with pytest.raises(ConversionError, match="no graph"):
        mxa.write(_sample(), tmp_path / "a-0000.params", symbol_file=True)
    with pytest.raises(ConversionError, match="--keep-dtype: the mxnet-params writer has no such option"):
        hubfmt.write(_sample(), tmp_path / "a-0000.params", keep_dtype=True)
    with pytest.raises(ConversionError, match="'caffe' is not one of 'module', 'gluon'"):
        hubfmt.write(_sample(), tmp_path / "a.params", style="caffe")
    with pytest.raises(ConversionError, match="unknown style"):
        mxa.write(_sample(), tmp_path / "a.params", style="caffe")
    assert os.listdir(tmp_path) == []
    # a graph known, but not wanted; and a symbol already there is not silently replaced
    sym = {"nodes": [{"op": "null", "name": "data", "inputs": []}, {"op": "null", "name": "fc_weight", "inputs": []},
                     {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "4", "no_bias": "True"},
                      "inputs": [[0, 0, 0], [1, 0, 0]]}], "heads": [[2, 0, 0]]}
    (tmp_path / "s-symbol.json").write_text(json.dumps(sym))
    _list_file(tmp_path / "s-0000.params", [_record((4, 3), 0, np.ones((4, 3), np.float32).tobytes())], ["arg:fc_weight"])
    ckpt = mxa.read(tmp_path / "s-0000.params")
    mxa.write(ckpt, tmp_path / "n-0000.params", symbol_file=False)
    assert not (tmp_path / "n-symbol.json").exists()
    (tmp_path / "m-symbol.json").write_text("keep")
    with pytest.raises(OutputError):
        mxa.write(ckpt, tmp_path / "m-0000.params")
    assert not (tmp_path / "m-0000.params").exists() and (tmp_path / "m-symbol.json").read_text() == "keep"
    mxa.write(ckpt, tmp_path / "g.params", style="gluon")
    assert ndlist.scan(str(tmp_path / "g.params"))[1] == ["fc_weight"]
