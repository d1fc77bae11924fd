"""float8 (#15): kept as it is through the hub, bit for bit, with its scale tensors beside it; every
format that cannot hold it says so in one line and writes nothing."""
from __future__ import annotations

import pytest

import hubfmt
from hubfmt.codecs import safetensors as st_codec

from conftest import require, run_cli

torch = require("torch")


@pytest.fixture
def fp8_file(tmp_path):
    torch.manual_seed(0)
    sd = {"fc.weight": torch.randn(4, 8).to(torch.float8_e4m3fn), "fc.weight_scale": torch.rand(4, 1),
          "fc.bias": torch.zeros(4), "head.weight": torch.randn(2, 4).to(torch.float8_e5m2)}
    path = tmp_path / "q.pth"
    torch.save(sd, path)
    return path, sd


def _bits(t):
    return t.view(torch.uint8) if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else t


def test_float8_goes_through_the_hub_bit_exact(fp8_file, tmp_path):
    path, sd = fp8_file
    hub = tmp_path / "q.safetensors"
    r = run_cli("convert", path, hub)
    assert r.returncode == 0, r.stderr
    header, _, _ = st_codec.read_header(str(hub))
    assert (header["fc.weight"]["dtype"], header["head.weight"]["dtype"]) == ("F8_E4M3", "F8_E5M2")
    assert header["fc.weight_scale"]["dtype"] == "F32" and "cast" not in r.stdout
    for out, to in ((tmp_path / "back.pth", None), (tmp_path / "hf", "hf")):
        assert run_cli("convert", hub, out, *(("--to", to) if to else ()), "-q").returncode == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert {k: v.dtype for k, v in back.items()} == {k: v.dtype for k, v in sd.items()}
    assert all(torch.equal(_bits(back[k]), _bits(v)) for k, v in sd.items())
    from safetensors.torch import load_file
    hf = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert all(torch.equal(_bits(hf[k]), _bits(v)) for k, v in sd.items())
    # widening on request is exact: e4m3fn values are float32 values
    ckpt = hubfmt.read(hub)
    wide = hubfmt.format.dtypes.convert(ckpt.array("fc.weight"), "float8_e4m3fn", "float32")
    assert torch.equal(torch.from_numpy(wide), sd["fc.weight"].to(torch.float32))


@pytest.mark.parametrize("out", ["q.ckpt", "q.params", "q.index", "q.weights.h5", "q.oneflow"])
def test_formats_without_float8_refuse_in_one_line(fp8_file, tmp_path, out):
    path, _ = fp8_file
    r = run_cli("convert", path, tmp_path / out)
    assert r.returncode == 2 and "cannot hold float8_e4m3fn tensors (1, e.g. fc.weight)" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.pth"]          # nothing written
