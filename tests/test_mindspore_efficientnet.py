"""The seed scenario: an EfficientNet trained in PyTorch runs in MindSpore, and back.

PyTorch and MindSpore implementations of the same network (tests/effnet_models.py) with different
module names; real torch and real MindSpore compute the outputs (eval mode), compared at a relative
difference <= 1e-5. Every MindSpore parameter must be loaded by load_param_into_net.
"""
import os

import numpy as np
import pytest

import hubfmt
from conftest import assert_same_outputs, require
from effnet_models import input_batch, layer_order, mindspore_effnet, rename_layers, torch_checkpoint, torch_effnet
from hubfmt.io import hubfile
from hubfmt.adapters import mindspore as adapter
from hubfmt.errors import ConversionError


def _torch_out(model, x):
    torch = require("torch")
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _ms_out(net, x):
    ms = require("mindspore")
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


def _torch_to_hub(tmp_path):
    require("torch")
    tnet = torch_effnet()
    hub = tmp_path / "effnet.safetensors"
    hubfile.write(torch_checkpoint(tnet), hub)
    return tnet, hubfmt.read(hub)


def _to_mindspore_names(ckpt, msnet):
    target = adapter.from_model(msnet)
    mapping = dict(zip(layer_order(ckpt), layer_order(target), strict=True))
    return rename_layers(ckpt, mapping)


def test_torch_to_mindspore_ckpt_same_outputs(tmp_path):
    ms = require("mindspore")
    tnet, hub = _torch_to_hub(tmp_path)
    msnet = mindspore_effnet(seed=7)        # different weights until loaded
    x = input_batch()
    before = _ms_out(msnet, x)
    out = tmp_path / "effnet.ckpt"
    renamed = _to_mindspore_names(hub, msnet)
    report = adapter.write(renamed, out, template=msnet)
    assert sorted(report.names("dropped")) == sorted(n for n in renamed if n.endswith("num_batches_tracked"))
    assert not report.problems
    params = ms.load_checkpoint(str(out))
    not_loaded, unused = ms.load_param_into_net(msnet, params, strict_load=True)
    assert not_loaded == [] and unused == []
    after = _ms_out(msnet, x)
    assert not np.allclose(before, after)
    assert_same_outputs(after, _torch_out(tnet, x))
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o644 & ~_umask())


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_torch_to_mindspore_in_memory(tmp_path):
    require("mindspore")
    tnet, hub = _torch_to_hub(tmp_path)
    msnet = mindspore_effnet(seed=3)
    report = adapter.to_model(_to_mindspore_names(hub, msnet), msnet)
    assert not report.problems
    x = input_batch(1)
    assert_same_outputs(_ms_out(msnet, x), _torch_out(tnet, x))


def test_mindspore_to_torch_same_outputs(tmp_path):
    ms = require("mindspore")
    torch = require("torch")
    msnet = mindspore_effnet(seed=5)
    src = tmp_path / "ms_effnet.ckpt"
    ms.save_checkpoint(msnet, str(src))            # MindSpore writes it read-only (0400)
    assert os.stat(src).st_mode & 0o777 == 0o400
    hub = tmp_path / "hub.safetensors"
    hubfmt.convert(src, hub)
    ckpt = hubfmt.read(hub)
    assert ckpt.source.framework == "mindspore"
    tnet = torch_effnet(seed=9)
    mapping = dict(zip(layer_order(ckpt), layer_order(torch_checkpoint(tnet)), strict=True))
    renamed = rename_layers(ckpt, mapping)
    state = {n: torch.from_numpy(renamed.tensor(n).copy()) for n in renamed}
    missing, unexpected = tnet.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    x = input_batch(2)
    assert_same_outputs(_torch_out(tnet.eval(), x), _ms_out(msnet, x))


def test_mindspore_layer_attributes_reach_the_hub(tmp_path):
    require("mindspore")
    ckpt = adapter.from_model(mindspore_effnet())
    assert ckpt.layers["stem_bn"].attrs == {"eps": pytest.approx(1e-3), "momentum": pytest.approx(0.01)}
    dw = ckpt.layers["blocks.1.dw_conv"]
    assert dw.kind == "depthwise_conv2d" and dw.attrs["groups"] == 32 and dw.attrs["stride"] == [2, 2]
    assert ckpt["blocks.1.dw_conv.weight"].tensor.shape == (32, 1, 5, 5)
    assert ckpt["classifier.weight"].info.kind == "linear"


def test_template_missing_parameters_fail_loudly(tmp_path):
    require("mindspore")
    _, hub = _torch_to_hub(tmp_path)
    msnet = mindspore_effnet()
    out = tmp_path / "partial.ckpt"
    # Without the rename the torch names do not fit the MindSpore net: nothing may be written.
    with pytest.raises(ConversionError) as e:
        adapter.write(hub, out, template=msnet)
    assert "missing 64" in str(e.value) and "stem_conv.weight" in str(e.value)
    assert not out.exists() and os.listdir(tmp_path) == ["effnet.safetensors"]
    with pytest.raises(ConversionError):
        adapter.to_model(hub, msnet)


def test_files_end_to_end_with_the_torch_adapter(tmp_path):
    """torch.save .pt -> hub (CLI) -> MindSpore .ckpt -> load_checkpoint; and MindSpore .ckpt ->
    hub (CLI) -> torch adapter .pt -> torch.load(weights_only=True). Every step a real file."""
    ms = require("mindspore")
    torch = require("torch")
    from conftest import run_cli
    from hubfmt import registry

    tnet = torch_effnet(seed=11)
    torch.save(tnet.state_dict(), tmp_path / "eff.pt")
    assert run_cli("convert", tmp_path / "eff.pt", tmp_path / "eff.safetensors").returncode == 0
    msnet = mindspore_effnet(seed=12)
    adapter.write(_to_mindspore_names(hubfmt.read(tmp_path / "eff.safetensors"), msnet), tmp_path / "eff.ckpt",
                  template=msnet)
    not_loaded, _ = ms.load_param_into_net(msnet, ms.load_checkpoint(str(tmp_path / "eff.ckpt")), strict_load=True)
    assert not_loaded == []
    x = input_batch(3)
    assert_same_outputs(_ms_out(msnet, x), _torch_out(tnet, x))

    msnet2 = mindspore_effnet(seed=13)
    ms.save_checkpoint(msnet2, str(tmp_path / "ms2.ckpt"))
    proc = run_cli("convert", tmp_path / "ms2.ckpt", tmp_path / "ms2.safetensors")
    assert proc.returncode == 0, proc.stderr
    hub = hubfmt.read(tmp_path / "ms2.safetensors")
    tnet2 = torch_effnet(seed=14)
    renamed = rename_layers(hub, dict(zip(layer_order(hub), layer_order(torch_checkpoint(tnet2)), strict=True)))
    registry.adapter("torch").write(renamed, tmp_path / "ms2.pt")
    state = torch.load(tmp_path / "ms2.pt", weights_only=True)
    missing, unexpected = tnet2.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    assert_same_outputs(_torch_out(tnet2.eval(), x), _ms_out(msnet2, x))
