"""Real torch as the oracle: files made by torch.save (zip and legacy) read bit-exactly, files we
write loaded by torch.load(weights_only=True) and load_state_dict(strict=True), torch -> hub ->
torch bit-exact for generated state dicts, a real CNN giving the same outputs."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hubfmt
from conftest import assert_same_outputs, require, run_cli
from hubfmt.adapters import torch as pt

torch = require("torch")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool]


def _raw(t) -> bytes:
    """A tensor's values as bytes, C order (bit-exact comparison, NaN-safe)."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _random(shape, dtype, gen):
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 3).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=gen, dtype=torch.int64).to(dtype)


@st.composite
def state_dicts(draw):
    """Generated state dicts: every dtype, scalars, empty tensors, ties, non-contiguous views."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    sd = {}
    for i in range(draw(st.integers(1, 6))):
        dtype = draw(st.sampled_from(DTYPES))
        form = draw(st.sampled_from(["plain", "scalar", "empty", "transposed", "sliced", "tied", "offset"]))
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        name = f"layer{i}.{draw(st.sampled_from(['weight', 'bias', 'running_mean', 'extra']))}"
        if form == "scalar":
            t = _random((), dtype, gen)
        elif form == "empty":
            t = _random(shape[:-1] + (0,), dtype, gen)
        elif form == "transposed":
            t = _random(shape + (2,), dtype, gen).transpose(0, -1)
        elif form == "sliced":
            t = _random(shape + (4,), dtype, gen)[..., 1::2]
        elif form == "offset":
            t = _random((7,) + shape, dtype, gen)[3]
        else:
            t = _random(shape, dtype, gen)
        sd[name] = t
        if form == "tied":
            sd[f"layer{i}.tied"] = t
    return sd


def _check_same(loaded: dict, sd: dict) -> None:
    assert list(loaded) == list(sd)
    for n, t in sd.items():
        assert loaded[n].dtype == t.dtype and loaded[n].shape == t.shape, n
        assert _raw(loaded[n]) == _raw(t), n


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sd=state_dicts(), legacy=st.booleans())
def test_torch_hub_torch_round_trip_is_bit_exact(sd, legacy):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        torch.save(sd, d / "src.pth", _use_new_zipfile_serialization=not legacy)
        ckpt = pt.read(d / "src.pth")
        for n, t in sd.items():                       # the reader alone, before any conversion
            assert _raw(torch.from_numpy(np.array(ckpt.tensor(n)))) == _raw(t.view(torch.int16) if t.dtype == torch.bfloat16 else t), n
        hubfmt.convert(d / "src.pth", d / "hub.safetensors")
        hubfmt.convert(d / "hub.safetensors", d / "back.pth")
        loaded = torch.load(d / "back.pth", weights_only=True)
        _check_same(loaded, sd)
        for n in sd:
            if n.endswith(".tied") and sd[n].numel():
                first = next(k for k in sd if k.startswith(n.split(".")[0] + ".") and k != n)
                assert loaded[n].data_ptr() == loaded[first].data_ptr(), "tie not kept"


@settings(max_examples=15, deadline=None)
@given(sd=state_dicts())
def test_file_to_file_keeps_float64_and_views(sd):
    sd = dict(sd, extra_f64=torch.randn(3, 2, dtype=torch.float64).t())
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        torch.save(sd, d / "src.pth")
        pt.write(pt.read(d / "src.pth"), d / "out.pth")
        _check_same(torch.load(d / "out.pth", weights_only=True), sd)


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.classifier = torch.nn.Linear(8, 5)


def _trained_cnn(seed=0):
    torch.manual_seed(seed)
    net = SmallCNN()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_()
                m.num_batches_tracked.fill_(42)
    return net.eval()


def _forward(net, x):
    with torch.no_grad():
        return net.classifier(net.features(x)).numpy()


def test_real_cnn_through_hub_gives_the_same_outputs(tmp_path):
    net = _trained_cnn()
    torch.save(net.state_dict(), tmp_path / "cnn.pth")
    hubfmt.convert(tmp_path / "cnn.pth", tmp_path / "cnn.safetensors")
    hubfmt.convert(tmp_path / "cnn.safetensors", tmp_path / "back.pth")
    fresh = _trained_cnn(seed=1)
    fresh.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True), strict=True)
    x = torch.randn(4, 3, 16, 16)
    assert_same_outputs(_forward(fresh, x), _forward(net, x))
    hub = hubfmt.read(tmp_path / "cnn.safetensors")
    assert hub["features.0.weight"].info.kind == "conv2d"
    assert hub["features.1.running_mean"].info.kind == "batch_norm"
    assert hub["classifier.weight"].info.kind == "linear"


def test_from_model_to_model(tmp_path):
    net = _trained_cnn().half()
    ckpt = pt.from_model(net)
    assert ckpt["features.3.weight"].info.kind == "depthwise_conv2d"
    assert ckpt.layers["features.3"].attrs["groups"] == 8
    assert ckpt.layers["features.1"].attrs["eps"] == 1e-5 and ckpt.layers["features.1"].attrs["momentum"] == 0.1
    assert ckpt["features.0.weight"].info.original_dtype == "float16"
    hubfmt.write(ckpt, tmp_path / "m.safetensors")
    fresh = SmallCNN().half().eval()
    report = pt.to_model(hubfmt.read(tmp_path / "m.safetensors"), fresh)
    assert not report.problems
    for (n, a), b in zip(net.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and _raw(a) == _raw(b), n
    with pytest.raises(hubfmt.ConversionError, match="load_state_dict"):
        pt.to_model(ckpt, torch.nn.Linear(2, 2))


def test_from_model_state_dict_and_ties():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    ckpt = pt.from_model(model)
    assert ckpt["head.weight"].info.tied_to == "emb.weight"
    assert ckpt["emb.weight"].info.kind == "embedding"
    sd_ckpt = pt.from_model(model.state_dict())
    assert sd_ckpt["head.weight"].info.tied_to == "emb.weight"


def test_training_layout_keeps_extra_and_loads_weights_only(tmp_path):
    net = _trained_cnn()
    src = {"state_dict": net.state_dict(), "epoch": 12, "names": ["a", "b"], "lr": 0.01,
           "stride": torch.tensor([8.0, 16.0]), "optimizer": {"state": {}, "param_groups": []}}
    torch.save(src, tmp_path / "train.pth")
    ckpt = pt.read(tmp_path / "train.pth")
    assert "checkpoint['optimizer']" in ckpt.report.names("dropped")
    report = pt.write(ckpt, tmp_path / "out.pth", layout="training")
    # where each non-tensor entry went is said, one event each (#17)
    assert set(report.names("stored")) == {"extra['epoch']", "extra['names']", "extra['lr']", "extra['stride']"}
    loaded = torch.load(tmp_path / "out.pth", weights_only=True)
    assert loaded["epoch"] == 12 and loaded["names"] == ["a", "b"] and loaded["lr"] == 0.01
    assert torch.equal(loaded["stride"], torch.tensor([8.0, 16.0]))
    SmallCNN().load_state_dict(loaded["state_dict"], strict=True)
    bare = pt.write(ckpt, tmp_path / "bare.pth")
    assert "extra['epoch']" in bare.names("dropped")
    assert set(torch.load(tmp_path / "bare.pth", weights_only=True)) == set(net.state_dict())


def test_lightning_style_ckpt_and_nested_keys(tmp_path):
    net = _trained_cnn()
    sd = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 99, "hyper_parameters": {"lr": 0.1},
                "optimizer_states": [{"state": {}}], "callbacks": {}}, tmp_path / "last.ckpt")
    assert pt.sniff(tmp_path / "last.ckpt") == "torch-zip"
    ckpt = hubfmt.read(tmp_path / "last.ckpt")
    assert list(ckpt.entries) == list(sd)
    assert ckpt.extra["global_step"] == 99 and ckpt.extra["hyper_parameters"] == {"lr": 0.1}
    torch.save({"model_ema": net.state_dict(), "model": {"state_dict": sd}}, tmp_path / "ema.pth")
    assert list(pt.read(tmp_path / "ema.pth", prefer_ema=True).entries) == list(net.state_dict())
    assert list(pt.read(tmp_path / "ema.pth").entries) == list(sd)


def test_zip64_records_read_by_torch_and_zipfile(tmp_path, monkeypatch):
    import zipfile

    from hubfmt.adapters.torch import zipwriter
    monkeypatch.setattr(zipwriter, "ZIP64_LIMIT", 16)     # every size/offset past 16 bytes goes zip64
    net = _trained_cnn()
    torch.save(net.state_dict(), tmp_path / "cnn.pth")
    pt.write(pt.read(tmp_path / "cnn.pth"), tmp_path / "z64.pth")
    assert zipfile.ZipFile(tmp_path / "z64.pth").testzip() is None
    _check_same(torch.load(tmp_path / "z64.pth", weights_only=True), net.state_dict())
    _check_same(torch.load(tmp_path / "z64.pth", weights_only=True, mmap=True), net.state_dict())


def test_written_storages_are_64_byte_aligned_and_copied_file_to_file(tmp_path):
    import zipfile
    net = _trained_cnn()
    torch.save(net.state_dict(), tmp_path / "cnn.pth")
    ckpt = pt.read(tmp_path / "cnn.pth")
    assert all(e.tensor.span is not None for e in ckpt.entries.values())
    pt.write(ckpt, tmp_path / "out.pth")
    out = pt.read(tmp_path / "out.pth")
    assert all(e.tensor.span is not None and e.tensor.span.offset % 64 == 0 for e in out.entries.values())
    assert zipfile.ZipFile(tmp_path / "out.pth").testzip() is None


def test_cli_convert_and_diff(tmp_path):
    net = _trained_cnn()
    torch.save(net.state_dict(), tmp_path / "model.pth")
    r = run_cli("convert", "model.pth", "model.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("convert", "model.safetensors", "back.pth", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("diff", "model.pth", "back.pth", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "EQUAL" in r.stdout
    with torch.no_grad():
        net.classifier.weight[0, 0] += 1
    torch.save(net.state_dict(), tmp_path / "changed.pth")
    assert run_cli("diff", "changed.pth", "back.pth", cwd=tmp_path).returncode == 1


def test_legacy_file_with_storages_pickled_by_value(tmp_path):
    """Tensors pickled with plain pickle embed each storage as a whole torch file
    (torch.storage._load_from_bytes); the reader opens those with the same restricted reader."""
    import pickle

    from hubfmt.adapters.torch import legacy
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int32)[1:4]}
    head = b"".join(pickle.dumps(v, protocol=2) for v in
                    (legacy.MAGIC, legacy.PROTOCOL, {"protocol_version": 1001, "little_endian": True}))
    body = pickle.dumps(sd, protocol=2)
    assert b"_load_from_bytes" in body
    path = tmp_path / "by_value.pth"
    path.write_bytes(head + body + pickle.dumps([], protocol=2))
    ckpt = pt.read(path)
    for n, t in sd.items():
        np.testing.assert_array_equal(ckpt.tensor(n), t.numpy())


def test_top_level_tensors_mixed_with_other_values(tmp_path):
    torch.save({"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2), "epoch": 4,
                "scale": torch.tensor([1.5], dtype=torch.bfloat16)}, tmp_path / "mixed.pth")
    ckpt = pt.read(tmp_path / "mixed.pth")
    assert list(ckpt.entries) == ["fc.weight", "fc.bias", "scale"]
    assert ckpt.extra == {"epoch": 4}
    assert any("top-level tensors" in e.detail for e in ckpt.report.of("warning"))
