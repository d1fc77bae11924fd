"""Real OneFlow 0.9 (Python 3.10 side environment) as the oracle: hubfmt reads what flow.save
writes, flow.load + load_state_dict(strict=True) accept what hubfmt writes, OneFlow -> hub -> torch
gives the same outputs, and from_model/to_model work in OneFlow's own process."""
from __future__ import annotations

import json

import numpy as np

from hubfmt import Checkpoint, LazyTensor, TensorInfo
from hubfmt.io import hubfile
from hubfmt.adapters import oneflow as of
from hubfmt.adapters.oneflow import meta

import yolo_twin
from conftest import assert_same_outputs, require, run_cli, run_oneflow

X = np.random.RandomState(0).randn(1, 3, 64, 64).astype(np.float32)

SAVE_ZOO = yolo_twin.oneflow_prelude() + r'''
import sys, os, numpy as np
import oneflow as flow
d = sys.argv[1]
model = perturb(Model(), seed=1)
flow.save(model.state_dict(), os.path.join(d, "sd"))
shared = flow.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
zoo = {
    "h.weight": flow.tensor(np.linspace(-2, 2, 12, dtype=np.float16).reshape(3, 4)),
    "bf.weight": flow.tensor(np.array([1.0, -2.5, 3.25], dtype=np.float32)).to(flow.bfloat16),
    "i32.bias": flow.tensor(np.array([1, -7, 2**31 - 1], dtype=np.int32)),
    "u8.bias": flow.tensor(np.array([0, 255], dtype=np.uint8)),
    "f64.weight": flow.tensor(np.array([np.pi], dtype=np.float64)),
    "flag.bias": flow.tensor(np.array([True, False])),
    "embed.weight": shared, "head.weight": shared,
}
flow.save(zoo, os.path.join(d, "zoo"))
flow.save({"model": model.state_dict(), "epoch": 5, "names": model.names, "best_fitness": np.float64(0.25),
           "optimizer": {"state": {0: {"momentum_buffer": flow.zeros(2)}}}}, os.path.join(d, "train"))
os.makedirs(os.path.join(d, "npy"))
for name, t in list(model.state_dict().items()) + [("zoo." + k, v) for k, v in zoo.items()]:
    np.save(os.path.join(d, "npy", name + ".npy"), (t.float() if t.dtype == flow.bfloat16 else t).numpy())
np.save(os.path.join(d, "out.npy"), model(flow.tensor(np.load(os.path.join(d, "x.npy")))).numpy())
'''


def test_reads_what_flow_save_writes(tmp_path):
    np.save(tmp_path / "x.npy", X)
    run_oneflow(SAVE_ZOO, str(tmp_path))
    sd = of.read(tmp_path / "sd")
    assert len(sd) == 119 and sd.source.format == "oneflow"
    for name in sd:
        want = np.load(tmp_path / "npy" / f"{name}.npy")
        assert sd[name].tensor.dtype == want.dtype.name and np.array_equal(sd.tensor(name), want), name
    assert sd["model.0.conv.weight"].info.kind == "conv2d" and sd["model.0.bn.running_var"].info.kind == "batch_norm"
    assert sd["model.0.bn.num_batches_tracked"].tensor.dtype == "int64" and sd.tensor("model.0.bn.num_batches_tracked") == 3
    assert sd["model.8.anchors"].tensor.shape == (2, 3, 2)

    zoo = of.read(tmp_path / "zoo")
    assert {n: zoo[n].tensor.dtype for n in zoo} == {
        "h.weight": "float16", "bf.weight": "float32", "i32.bias": "int32", "u8.bias": "uint8",
        "f64.weight": "float64", "flag.bias": "bool", "embed.weight": "float32", "head.weight": "float32"}
    for name in zoo:
        got = zoo.tensor(name)
        assert np.array_equal(got, np.load(tmp_path / "npy" / f"zoo.{name}.npy")), name
    # OneFlow 0.9 saved the bfloat16 tensor as float32 bytes: read exactly, original dtype kept.
    assert zoo["bf.weight"].info.original_dtype == "bfloat16" and zoo.report.names("cast") == ["bf.weight"]
    assert zoo["head.weight"].info.tied_to == "embed.weight" and zoo.report.names("tied") == ["head.weight"]

    train = of.read(tmp_path / "train")
    assert list(train) == list(sd)
    assert train.extra == {"epoch": 5, "names": yolo_twin.NAMES, "best_fitness": 0.25}
    assert train.report.names("dropped") == ["optimizer"]


LOAD_CHECK = yolo_twin.oneflow_prelude() + r'''
import sys, os, json, numpy as np
import oneflow as flow
d, layout = sys.argv[1], sys.argv[2]
obj = flow.load(os.path.join(d, "m.oneflow"))
sd = obj["model"] if layout == "training" else obj
model = Model().eval()
print(json.dumps({
    "load": str(model.load_state_dict(sd, strict=True)),
    "dtypes": {k: str(v.dtype) for k, v in sd.items()},
    "types": {k: type(v).__name__ for k, v in sd.items()},
    "extra": {k: v for k, v in obj.items() if k != "model"} if layout == "training"
             else flow.load(os.path.join(d, "m.oneflow", "hubfmt_extra")),
}))
np.save(os.path.join(d, "out.npy"), model(flow.tensor(np.load(os.path.join(d, "x.npy")))).numpy())
'''


def _twin_checkpoint(tmp_path) -> Checkpoint:
    """The twin's weights as OneFlow saved them, plus non-tensor content."""
    np.save(tmp_path / "x.npy", X)
    run_oneflow(SAVE_ZOO, str(tmp_path))
    ckpt = of.read(tmp_path / "sd")
    ckpt.extra = {"epoch": 7, "names": {0: "person", 1: "bus"}, "yaml": {"nc": 4}}
    return ckpt


def test_flow_load_accepts_hubfmt_output_in_both_layouts(tmp_path):
    ckpt = _twin_checkpoint(tmp_path)
    want = np.load(tmp_path / "out.npy")
    yolo_twin.assert_lively(want)
    for layout in ("state_dict", "training"):
        hubfile.write(ckpt, tmp_path / "m.safetensors", overwrite=True)      # through the hub: fp32
        of.write(hubfile.read(tmp_path / "m.safetensors"), tmp_path / "m.oneflow", layout=layout, overwrite=True)
        res = json.loads(run_oneflow(LOAD_CHECK, str(tmp_path), layout).stdout.strip().splitlines()[-1])
        assert res["load"] == "<All keys matched successfully>"
        assert res["dtypes"]["model.0.bn.num_batches_tracked"] == "oneflow.int64"
        assert res["types"]["model.0.conv.weight"] == "Parameter" and res["types"]["model.0.bn.running_mean"] == "Tensor"
        assert res["extra"] == {"epoch": 7, "names": {"0": "person", "1": "bus"}, "yaml": {"nc": 4}}
        assert_same_outputs(np.load(tmp_path / "out.npy"), want)


DTYPE_CHECK = r'''
import sys, os, json, numpy as np
import oneflow as flow
d = sys.argv[1]
sd = flow.load(os.path.join(d, "z.oneflow"))
print(json.dumps({
    "dtypes": {k: str(v.dtype) for k, v in sd.items()},
    "values": {k: (v.float() if v.dtype == flow.bfloat16 else v).numpy().astype(np.float64).ravel().tolist() for k, v in sd.items()},
    "tied": sd["head.weight"] is sd["embed.weight"],
}))
'''


def test_flow_load_reads_every_dtype_and_ties(tmp_path):
    ckpt = Checkpoint()
    values = {
        "h.weight": np.array([0.5, -1.25], dtype=np.float16), "f64.weight": np.array([np.pi]),
        "i64.bias": np.array([-(2**40), 3], dtype=np.int64), "i8.bias": np.array([-128, 127], dtype=np.int8),
        "u8.bias": np.array([0, 255], dtype=np.uint8), "flag.bias": np.array([True, False]),
    }
    for n, v in values.items():
        ckpt.add(n, LazyTensor.from_array(v))
    ckpt.add("bf.weight", LazyTensor.from_array(np.array([0x3F80, 0xC020], dtype=np.uint16), dtype="bfloat16"))
    shared = LazyTensor.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))
    ckpt.add("embed.weight", shared, TensorInfo(kind="embedding"))
    ckpt.add("head.weight", shared, TensorInfo(kind="linear", tied_to="embed.weight"))
    of.write(ckpt, tmp_path / "z.oneflow")
    res = json.loads(run_oneflow(DTYPE_CHECK, str(tmp_path)).stdout.strip().splitlines()[-1])
    assert res["dtypes"] == {"h.weight": "oneflow.float16", "f64.weight": "oneflow.float64", "i64.bias": "oneflow.int64",
                             "i8.bias": "oneflow.int8", "u8.bias": "oneflow.uint8", "flag.bias": "oneflow.bool",
                             "bf.weight": "oneflow.float32", "embed.weight": "oneflow.float32", "head.weight": "oneflow.float32"}
    for n, v in values.items():
        assert res["values"][n] == v.astype(np.float64).tolist(), n
    assert res["values"]["bf.weight"] == [1.0, -2.5]
    assert res["tied"] is True


def test_oneflow_to_hub_to_torch_same_outputs(tmp_path):
    torch = require("torch")
    np.save(tmp_path / "x.npy", X)
    run_oneflow(SAVE_ZOO, str(tmp_path))
    r = run_cli("convert", tmp_path / "sd", tmp_path / "m.safetensors")
    assert r.returncode == 0, r.stderr
    assert "119 tensors written" in r.stdout and "119 -> 119 tensors = 119 kept" in r.stdout
    r = run_cli("convert", tmp_path / "m.safetensors", tmp_path / "m.pt")
    assert r.returncode == 0, r.stderr
    mod = yolo_twin.torch_module(tmp_path)
    try:
        model = mod.Model().eval()
        model.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
        with torch.no_grad():
            out = model(torch.from_numpy(X)).numpy()
    finally:
        yolo_twin.forget(mod)
    yolo_twin.assert_lively(out)
    assert_same_outputs(out, np.load(tmp_path / "out.npy"))


IN_MEMORY = yolo_twin.oneflow_prelude() + r'''
import sys, os, json, numpy as np
import oneflow as flow
from hubfmt import ConversionError
from hubfmt.io import hubfile
from hubfmt.adapters import oneflow as of
d = sys.argv[1]
x = flow.tensor(np.load(os.path.join(d, "x.npy")))
src = perturb(Model(), seed=2)
ckpt = of.from_model(src)
hubfile.write(ckpt, os.path.join(d, "mem.safetensors"))
dst = Model().eval()
report = of.to_model(hubfile.read(os.path.join(d, "mem.safetensors")), dst)
diff = float((dst(x) - src(x)).abs().max().numpy())
hub = hubfile.read(os.path.join(d, "mem.safetensors"))
del hub.entries["model.0.bn.num_batches_tracked"]
created = of.to_model(hub, Model()).names("created")
pair = fw.nn.Sequential(fw.nn.Linear(3, 3), fw.nn.Linear(3, 3))
pair[1].weight = pair[0].weight
tied = of.from_model(pair)["1.weight"].info.tied_to
small = Model()
del small.model[8]
try:
    of.to_model(hubfile.read(os.path.join(d, "mem.safetensors")), small)
    refused = ""
except ConversionError as e:
    refused = str(e)
print(json.dumps({"text": report.to_text(), "diff": diff, "refused": refused, "std": float(src(x).std().numpy()), "created": created, "tied": tied,
                  "layers": {k: [v.kind, v.attrs] for k, v in ckpt.layers.items()}}))
'''


def test_from_model_and_to_model_in_oneflow(tmp_path):
    np.save(tmp_path / "x.npy", X)
    res = json.loads(run_oneflow(IN_MEMORY, str(tmp_path)).stdout.strip().splitlines()[-1])
    assert res["diff"] == 0.0 and res["std"] > 0.1
    assert res["created"] == ["model.0.bn.num_batches_tracked"]
    assert res["tied"] == "0.weight"
    assert "119 tensors written" in res["text"]
    assert res["refused"].startswith("5 tensor(s) do not fit the module (first: unexpected model.8.anchors")
    assert "strict=False" in res["refused"]
    layers = res["layers"]
    assert layers["model.0.bn"] == ["batch_norm", {"eps": 0.001, "momentum": 0.03}]
    assert layers["model.0.conv"] == ["conv2d", {"stride": [2, 2], "padding": [1, 1], "dilation": [1, 1], "groups": 1}]
    assert layers["model.8.m.0"][0] == "conv2d"
    # Read back in the main environment: the hub file from OneFlow's process is a normal hub file.
    hub = hubfile.read(tmp_path / "mem.safetensors")
    assert hub.source.framework == "oneflow" and hub.layers["model.0.bn"].attrs["momentum"] == 0.03


LEGACY = r'''
import sys, json
import oneflow as flow
sd = flow.load(sys.argv[1])
print(json.dumps({k: [str(v.dtype), list(v.shape), v.numpy().ravel().tolist()] for k, v in sorted(sd.items())}))
'''


def test_legacy_layout_matches_what_flow_load_reads(tmp_path):
    d = tmp_path / "snap"
    d.mkdir()
    (d / "snapshot_done").write_bytes(b"")
    arrays = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "fc.bias": np.array([1, -2], dtype=np.int64)}
    for name, arr in arrays.items():
        (d / name).mkdir()
        (d / name / "out").write_bytes(arr.tobytes())
        (d / name / "meta").write_bytes(meta.render(arr.shape, arr.dtype.name))
    res = json.loads(run_oneflow(LEGACY, str(d)).stdout.strip().splitlines()[-1])
    ckpt = of.read(d)
    assert sorted(ckpt) == sorted(res)
    for name, (dt, shape, values) in res.items():
        assert dt == f"oneflow.{ckpt[name].tensor.dtype}" and tuple(shape) == ckpt[name].tensor.shape
        assert ckpt.tensor(name).ravel().tolist() == values


RECURRENT = r'''
import sys, os, numpy as np
import oneflow as flow
d = sys.argv[1]
x = flow.tensor(np.load(os.path.join(d, "seq.npy")))
for kind, cls in (("lstm", flow.nn.LSTM), ("gru", flow.nn.GRU)):
    layer = cls(3, 5, batch_first=True).eval()
    layer.load_state_dict(flow.load(os.path.join(d, kind + ".oneflow")), strict=True)
    np.save(os.path.join(d, kind + "_out.npy"), layer(x)[0].numpy())
'''


def test_recurrent_layers_share_torch_names_and_gate_order(tmp_path):
    torch = require("torch")
    torch.manual_seed(0)
    seq = np.random.RandomState(2).randn(2, 4, 3).astype(np.float32)
    np.save(tmp_path / "seq.npy", seq)
    want = {}
    for kind, cls in (("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU)):
        layer = cls(3, 5, batch_first=True).eval()
        ckpt = Checkpoint()
        for n, t in layer.state_dict().items():
            ckpt.add(n, LazyTensor.from_array(t.numpy()), TensorInfo(kind=kind, layer=""))
        of.write(ckpt, tmp_path / f"{kind}.oneflow")
        with torch.no_grad():
            want[kind] = layer(torch.from_numpy(seq))[0].numpy()
    run_oneflow(RECURRENT, str(tmp_path))
    for kind in want:
        assert_same_outputs(np.load(tmp_path / f"{kind}_out.npy"), want[kind])
