"""A YOLOv5-style training checkpoint that pickles whole nn.Modules of a class the reader cannot
import: read without the source and without running the pickle, converted to a hub file with all
tensors (fp16 -> fp32), the module attributes and the checkpoint's other fields kept."""
from __future__ import annotations

import importlib
import sys
import textwrap
import uuid

import numpy as np
import pytest

import hubfmt
from conftest import require
from hubfmt.adapters import torch as pt

MODEL_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    class Conv(nn.Module):
        def __init__(self, c1, c2, k=1, s=1, g=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
            self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Detect(nn.Module):
        def __init__(self, nc, ch):
            super().__init__()
            self.nc, self.no, self.nl = nc, nc + 5, len(ch)
            self.grid = [torch.empty(0) for _ in ch]          # plain attribute, not a buffer
            self.register_buffer("anchors", torch.arange(12.0).view(len(ch), 2, 2) if len(ch) == 3 else torch.ones(len(ch), 3, 2))
            self.register_buffer("scratch", torch.zeros(4), persistent=False)
            self.m = nn.ModuleList(nn.Conv2d(c, self.no * 3, 1) for c in ch)

        def forward(self, xs):
            return [m(x) for m, x in zip(self.m, xs)]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.yaml = {"nc": 3, "depth_multiple": 0.33, "backbone": [[-1, 1, "Conv", [8, 3, 2]]]}
            self.model = nn.Sequential(Conv(3, 8, 3, 2), Conv(8, 8, 3, 1, g=8), Conv(8, 16, 1), Detect(3, (16,)))
            self.names = ["cat", "dog", "emu"]
            self.stride = torch.tensor([8.0, 16.0, 32.0])
            self.nc = 3
            self.head = nn.Linear(16, 3)
            self.tail = self.head                            # the same module twice: tied weights
''')


@pytest.fixture()
def yolo_checkpoint(tmp_path, monkeypatch):
    """(path of the checkpoint, the model's float32 state dict, module name) — the class's module
    is gone from sys.modules, sys.path and disk when the test runs."""
    torch = require("torch")
    name = f"hubfmt_fake_yolo_{uuid.uuid4().hex[:8]}"
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    (src_dir / f"{name}.py").write_text(MODEL_SOURCE)
    sys.path.insert(0, str(src_dir))
    try:
        mod = importlib.import_module(name)
        torch.manual_seed(0)
        model = mod.Model()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn_like(m.running_mean))
                    m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
                    m.num_batches_tracked.fill_(11)
        ema = mod.Model()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.copy_(p * 0.5)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model.head(torch.randn(2, 16)).sum().backward()
        opt.step()
        reference = {k: v.detach().clone().half().float() for k, v in model.state_dict().items()}
        ema_reference = {k: v.detach().clone().half().float() for k, v in ema.state_dict().items()}
        ckpt = {
            "epoch": 7,
            "best_fitness": np.float64(0.625),
            "model": model.half(),
            "ema": ema.half(),
            "updates": 1234,
            "optimizer": opt.state_dict(),
            "opt": {"imgsz": 640, "epochs": 300},
            "date": "2026-11-23T12:00:00",
        }
        path = tmp_path / "yolo.pt"
        torch.save(ckpt, path)
    finally:
        sys.path.remove(str(src_dir))
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
    (src_dir / f"{name}.py").unlink()
    with pytest.raises(ImportError):
        importlib.import_module(name)
    return path, reference, ema_reference, name


def test_pickled_module_converts_without_its_source(yolo_checkpoint, tmp_path):
    path, reference, _, name = yolo_checkpoint
    ckpt = pt.read(path)
    # Exactly the names and order torch's state_dict() gives, the non-persistent buffer left out.
    assert list(ckpt.entries) == list(reference)
    assert "model.3.scratch" not in ckpt
    assert ckpt["tail.weight"].info.tied_to == "head.weight"
    for n, want in reference.items():
        e = ckpt[n]
        assert e.info.original_dtype == ("int64" if n.endswith("num_batches_tracked") else "float16")
        np.testing.assert_array_equal(e.tensor.load().astype(np.float64), want.numpy().astype(np.float64), err_msg=n)

    hub = tmp_path / "yolo.safetensors"
    report = hubfmt.convert(path, hub)
    assert "optimizer" in " ".join(e.name for e in report.of("dropped"))
    back = hubfmt.read(hub)
    assert list(back.entries) == list(reference)
    for n, want in reference.items():
        t = back[n].tensor
        assert t.dtype == ("int64" if n.endswith("num_batches_tracked") else "float32"), n
        np.testing.assert_array_equal(t.load(), want.numpy().astype(t.load().dtype), err_msg=n)
    # Non-tensor content kept: the checkpoint's fields and the model's attributes.
    extra = back.extra
    assert extra["epoch"] == 7 and extra["best_fitness"] == 0.625 and extra["updates"] == 1234
    assert extra["opt"] == {"imgsz": 640, "epochs": 300}
    assert extra["model_class"] == f"{name}.Model"
    attrs = extra["model_attributes"]
    assert attrs["names"] == ["cat", "dog", "emu"] and attrs["nc"] == 3
    assert attrs["yaml"]["depth_multiple"] == 0.33
    np.testing.assert_array_equal(attrs["stride"], [8.0, 16.0, 32.0])
    assert "optimizer" not in extra and "ema" not in extra


def test_module_classes_give_kinds_and_attributes(yolo_checkpoint):
    path, _, _, _ = yolo_checkpoint
    ckpt = pt.read(path)
    assert ckpt["model.0.conv.weight"].info.kind == "conv2d"
    assert ckpt["model.1.conv.weight"].info.kind == "depthwise_conv2d"
    assert ckpt.layers["model.1.conv"].attrs["groups"] == 8
    assert ckpt.layers["model.0.conv"].attrs["stride"] == [2, 2]
    bn = ckpt.layers["model.0.bn"]
    assert bn.kind == "batch_norm" and bn.attrs["eps"] == 1e-3 and bn.attrs["momentum"] == 0.03
    assert ckpt["head.weight"].info.kind == "linear"
    assert ckpt["model.3.anchors"].info.kind == "tensor"


def test_prefer_ema_takes_the_ema_module_and_says_so(yolo_checkpoint):
    path, reference, ema_reference, _ = yolo_checkpoint
    plain = pt.read(path)
    ema = pt.read(path, prefer_ema=True)
    np.testing.assert_array_equal(ema.tensor("head.weight"), ema_reference["head.weight"].numpy().astype(np.float16))
    assert not np.array_equal(ema.tensor("head.weight"), plain.tensor("head.weight"))
    chosen = [e for e in ema.report.of("warning") if "weights taken from here" in e.detail]
    assert chosen and chosen[0].name == "checkpoint['ema']" and "EMA" in chosen[0].detail
    assert "checkpoint['model']" in ema.report.names("dropped")
    hint = [e for e in plain.report.of("warning") if "weights taken from here" in e.detail]
    assert hint[0].name == "checkpoint['model']" and "--prefer-ema" in hint[0].detail


def test_pickled_module_to_torch_file_loads_into_a_fresh_model(yolo_checkpoint, tmp_path):
    torch = require("torch")
    path, reference, _, _ = yolo_checkpoint
    out = tmp_path / "weights.pth"
    hubfmt.convert(path, out)
    loaded = torch.load(out, weights_only=True)
    assert list(loaded) == list(reference)
    for n, want in reference.items():
        assert loaded[n].dtype == (torch.int64 if n.endswith("num_batches_tracked") else torch.float16), n
        assert torch.equal(loaded[n].float(), want.float()), n
    assert loaded["tail.weight"].data_ptr() == loaded["head.weight"].data_ptr()


def test_legacy_format_whole_module(tmp_path):
    """Legacy files pickle a module's class as a ('module', class, file, source) persistent id:
    the source text is ignored, the class stays an inert stand-in."""
    torch = require("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.zeros(1, 3, 5, 5))
    path = tmp_path / "legacy_module.pt"
    torch.save({"model": net, "epoch": 1}, path, _use_new_zipfile_serialization=False)
    ckpt = pt.read(path)
    assert list(ckpt.entries) == list(net.state_dict())
    for n, t in net.state_dict().items():
        np.testing.assert_array_equal(ckpt.tensor(n), t.numpy(), err_msg=n)
    assert ckpt["1.running_var"].info.kind == "batch_norm" and ckpt["3.weight"].info.kind == "linear"
    assert ckpt.extra["epoch"] == 1 and ckpt.extra["model_class"] == "torch.nn.modules.container.Sequential"
