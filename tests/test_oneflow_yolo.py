"""The seed scenario of issue 6: a YOLOv5-style training checkpoint from PyTorch (the whole model
pickled in fp16 under 'model', its class in a module nobody can import, plus epoch, best_fitness and
optimizer state) -> hub -> OneFlow directory -> flow.load + load_state_dict(strict=True) in OneFlow
gives the torch model's outputs (fp16 weights cast to fp32), and the non-tensor fields survive.

Reading the torch checkpoint is the torch adapter's job (hubfmt.adapters.torch).
"""
from __future__ import annotations

import copy
import json

import numpy as np

import hubfmt
from hubfmt.adapters import oneflow as of

import yolo_twin
from conftest import assert_same_outputs, require, run_cli, run_oneflow

X = np.random.RandomState(1).randn(1, 3, 64, 64).astype(np.float32)


def _yolov5_checkpoint(tmp_path):
    """Write tmp_path/last.pt as YOLOv5's train.py does; return (reference output, tensor count)."""
    torch = require("torch")
    mod = yolo_twin.torch_module(tmp_path)
    try:
        model = mod.perturb(mod.Model(), seed=3)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        model.train()
        model(torch.randn(2, 3, 32, 32)).mean().backward()
        opt.step()                                  # the optimizer now holds momentum tensors
        model.eval()
        torch.save({"model": copy.deepcopy(model).half(), "ema": None, "epoch": 3,
                    "best_fitness": np.float64(0.5), "optimizer": opt.state_dict()}, tmp_path / "last.pt")
        reference = copy.deepcopy(model).half().float().eval()      # what the fp16 file holds, in fp32
        with torch.no_grad():
            out = reference(torch.from_numpy(X)).numpy()
        count = len(model.state_dict())
        yolo_twin.assert_lively(out)
    finally:
        yolo_twin.forget(mod)
    (tmp_path / f"{mod.__name__}.py").unlink()      # the class's source is gone, as on a deploy box
    np.save(tmp_path / "x.npy", X)
    return out, count


RUN = yolo_twin.oneflow_prelude() + r'''
import sys, os, json, numpy as np
import oneflow as flow
d, layout = sys.argv[1], sys.argv[2]
obj = flow.load(os.path.join(d, "yolo.oneflow"))
sd = obj["model"] if layout == "training" else obj
model = Model().eval()
loaded = str(model.load_state_dict(sd, strict=True))
extra = ({k: v for k, v in obj.items() if k != "model"} if layout == "training"
         else flow.load(os.path.join(d, "yolo.oneflow", "hubfmt_extra")))
np.save(os.path.join(d, "out_oneflow.npy"), model(flow.tensor(np.load(os.path.join(d, "x.npy")))).numpy())
print(json.dumps({"load": loaded, "file_dtype": str(sd["model.0.conv.weight"].dtype),
                  "param_dtype": str(model.model[0].conv.weight.dtype), "extra": extra}, default=repr))
'''


def _check_extra(extra, *, oneflow_user: bool):
    assert extra["epoch"] == 3 and extra["best_fitness"] == 0.5
    attrs = extra["model_attributes"]          # the torch adapter's home for a pickled module's attributes
    assert attrs["names"] == yolo_twin.NAMES
    assert attrs["yaml"] == {"nc": 4, "depth_multiple": 0.33, "width_multiple": 0.25}
    if oneflow_user:                           # plain data: arrays as hubfmt.extra's marker dicts
        assert set(attrs["stride"]) == {"__ndarray__"}
    else:
        assert np.array_equal(attrs["stride"], [4.0, 8.0])


def test_yolov5_fp16_training_checkpoint_to_oneflow_with_the_cli(tmp_path):
    want, count = _yolov5_checkpoint(tmp_path)
    r = run_cli("convert", tmp_path / "last.pt", tmp_path / "yolo.safetensors")
    assert r.returncode == 0, r.stderr
    r = run_cli("convert", tmp_path / "yolo.safetensors", tmp_path / "yolo.oneflow")
    assert r.returncode == 0, r.stderr
    assert f"{count} tensors written" in r.stdout and f"{count} -> {count} tensors = {count} kept" in r.stdout, r.stdout
    res = json.loads(run_oneflow(RUN, str(tmp_path), "state_dict").stdout.strip().splitlines()[-1])
    assert res["load"] == "<All keys matched successfully>"
    # The CLI restores the source dtype (fp16); OneFlow's load_state_dict casts into the fp32 model.
    assert res["file_dtype"] == "oneflow.float16" and res["param_dtype"] == "oneflow.float32"
    assert_same_outputs(np.load(tmp_path / "out_oneflow.npy"), want)
    _check_extra(res["extra"], oneflow_user=True)
    _check_extra(hubfmt.read(tmp_path / "yolo.oneflow").extra, oneflow_user=False)


def test_yolov5_to_fp32_oneflow_training_layout_with_the_api(tmp_path):
    want, count = _yolov5_checkpoint(tmp_path)
    ckpt = hubfmt.read(tmp_path / "last.pt")
    hubfmt.write(ckpt, tmp_path / "yolo.safetensors")
    report = of.write(hubfmt.read(tmp_path / "yolo.safetensors"), tmp_path / "yolo.oneflow",
                      restore_dtype=False, layout="training")
    assert (report.tensors_in, report.tensors_out) == (count, count)
    res = json.loads(run_oneflow(RUN, str(tmp_path), "training").stdout.strip().splitlines()[-1])
    assert res["load"] == "<All keys matched successfully>"
    assert res["file_dtype"] == "oneflow.float32"               # the OneFlow model is fp32: so is the file
    assert_same_outputs(np.load(tmp_path / "out_oneflow.npy"), want)
    _check_extra(res["extra"], oneflow_user=True)
    _check_extra(of.read(tmp_path / "yolo.oneflow").extra, oneflow_user=False)
