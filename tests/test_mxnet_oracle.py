"""Real MXNet as the oracle, torch as the other side: MXNet -> hub -> torch and torch -> hub ->
MXNet (mx.nd.load, Block.load_parameters, mx.model.load_checkpoint + mx.mod.Module), same outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest

import hubfmt
from hubfmt.io import hubfile
from hubfmt.adapters import mxnet as mxa

import mxnet_twins as tw
from conftest import assert_same_outputs, require


@pytest.fixture(scope="module")
def mx():
    return require("mxnet")


@pytest.fixture(scope="module")
def torch():
    # Inference only here; restore autograd afterwards, other modules' tests train.
    t = require("torch")
    previous = t.is_grad_enabled()
    t.set_grad_enabled(False)
    yield t
    t.set_grad_enabled(previous)


def _randomize_gluon(mx, net, seed=0):
    rng = np.random.default_rng(seed)
    for p in net.collect_params().values():
        shape = p.shape
        v = rng.random(shape) + 0.5 if p.name.endswith("running_var") else rng.standard_normal(shape) * 0.5
        p.set_data(mx.nd.array(v.astype(np.float32)))


def _through_hub(src, tmp_path, name="m.safetensors"):
    """Native file -> hub file (hubfmt.convert, as the CLI does) -> lazy canonical checkpoint."""
    hubfmt.convert(src, tmp_path / name)
    return hubfile.read(tmp_path / name)


def _image(seed=1, shape=tw.IMAGE):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _module_forward(mx, prefix, inputs: dict, label_names=None):
    sym, args, auxs = mx.model.load_checkpoint(str(prefix), 0)
    mod = mx.mod.Module(sym, data_names=list(inputs), label_names=label_names, context=mx.cpu())
    mod.bind(data_shapes=[(k, v.shape) for k, v in inputs.items()], for_training=False)
    mod.set_params(args, auxs, allow_missing=False, allow_extra=False)
    mod.forward(mx.io.DataBatch([mx.nd.array(v) for v in inputs.values()]), is_train=False)
    return mod.get_outputs()[0].asnumpy()


# ---- MXNet -> hub -> torch -----------------------------------------------------------------

def test_gluon_export_to_torch(mx, torch, tmp_path):
    net = tw.gluon_net(mx)
    _randomize_gluon(mx, net)
    net.hybridize()
    x = _image()
    want = net(mx.nd.array(x)).asnumpy()
    net.export(str(tmp_path / "dpnres"), 0)
    ckpt = _through_hub(tmp_path / "dpnres-0000.params", tmp_path)
    assert ckpt["hybridsequential0_conv0.weight"].info.original_name == "arg:hybridsequential0_conv0_weight"
    assert ckpt["hybridsequential0_dualpath0_conv1.weight"].info.kind == "conv2d"
    assert ckpt.layers["hybridsequential0_dualpath0_conv1"].attrs["groups"] == 4
    bn = ckpt.layers["hybridsequential0_batchnorm0"]
    assert bn.kind == "batch_norm" and bn.attrs["eps"] == 1e-5 and bn.attrs["momentum"] == pytest.approx(0.1)
    assert bn.attrs["fix_gamma"] is False
    model = tw.torch_net(torch)
    tw.load_into_torch(torch, model, ckpt)
    assert_same_outputs(model(torch.from_numpy(x)).numpy(), want)


def test_gluon_save_parameters_to_torch(mx, torch, tmp_path):
    net = tw.gluon_net(mx)
    _randomize_gluon(mx, net, seed=3)
    x = _image()
    want = net(mx.nd.array(x)).asnumpy()
    net.save_parameters(str(tmp_path / "net.params"))
    ckpt = _through_hub(tmp_path / "net.params", tmp_path)
    assert "3.bn1.running_var" in ckpt and ckpt["3.bn1.weight"].info.original_name == "3.bn1.gamma"
    assert ckpt["3.c2.weight"].info.kind == "conv2d"
    model = tw.torch_net(torch)
    tw.load_into_torch(torch, model, ckpt)
    assert_same_outputs(model(torch.from_numpy(x)).numpy(), want)


@pytest.mark.parametrize("fix_gamma", [True, False])
def test_symbol_checkpoint_to_torch(mx, torch, tmp_path, fix_gamma):
    sym = tw.symbol_net(mx, **({} if fix_gamma else {"fix_gamma": False}))
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", tw.IMAGE)], for_training=False)
    mod.init_params()
    rng = np.random.default_rng(5)
    args, auxs = mod.get_params()
    args = {k: mx.nd.array(rng.standard_normal(v.shape).astype(np.float32)) for k, v in args.items()}
    auxs = {k: mx.nd.array((rng.random(v.shape) + 0.5).astype(np.float32)) for k, v in auxs.items()}
    mod.set_params(args, auxs)
    x = _image()
    mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
    want = mod.get_outputs()[0].asnumpy()
    mod.save_checkpoint(str(tmp_path / "sym"), 0)

    ckpt = _through_hub(tmp_path / "sym-0000.params", tmp_path)
    assert ckpt.layers["bn0"].attrs["eps"] == 1e-3                 # the symbol default, not gluon's
    assert ckpt.layers["bn0"].attrs["fix_gamma"] is fix_gamma
    assert ckpt.layers["bn1"].attrs == {"eps": 2e-5, "momentum": pytest.approx(0.05), "fix_gamma": False,
                                        "use_global_stats": False}
    assert ckpt["bn0.running_mean"].info.original_name == "aux:bn0_moving_mean"
    stored = mx.nd.load(str(tmp_path / "sym-0000.params"))["arg:bn0_gamma"].asnumpy()
    assert not np.all(stored == 1)                                  # what the file holds is random
    assert bool(np.all(ckpt.tensor("bn0.weight") == 1)) is fix_gamma
    model = tw.torch_symbol_twin(torch)
    tw.load_into_torch(torch, model, ckpt)                            # fc6 [5,8,1,1] -> Linear [5,8]
    assert_same_outputs(model(torch.from_numpy(x)).numpy(), want)


def test_dpn_symbol_checkpoint_to_torch_and_back(mx, torch, tmp_path):
    """The seed scenario: a DPN as its MXNet authors wrote it (symbol API, SoftmaxOutput head,
    fc6 a 1x1 conv), saved with save_checkpoint, ported to torch; then torch weights back in."""
    sym = tw.dpn_symbol(mx)
    mod = mx.mod.Module(sym, data_names=["data"], label_names=["softmax_label"])
    mod.bind(data_shapes=[("data", tw.IMAGE)], for_training=False)
    mod.init_params(mx.init.Normal(0.3))
    args, auxs = mod.get_params()
    rng = np.random.default_rng(20)
    auxs = {k: mx.nd.array((rng.random(v.shape) + 0.5 if "var" in k else rng.standard_normal(v.shape)).astype(np.float32))
            for k, v in auxs.items()}
    args = {k: mx.nd.array(rng.standard_normal(v.shape).astype(np.float32) * 0.3) for k, v in args.items()}
    mod.set_params(args, auxs)
    mod.save_checkpoint(str(tmp_path / "dpn"), 0)
    x = _image(21)
    want = _module_forward(mx, tmp_path / "dpn", {"data": x}, ["softmax_label"])

    ckpt = _through_hub(tmp_path / "dpn-0000.params", tmp_path)
    assert "softmax_label" not in ckpt                                   # an input, not a parameter
    assert ckpt["conv2_1_c1x1_w(s/1)__conv.weight"].info.original_name == "arg:conv2_1_c1x1_w(s/1)__conv_weight"
    assert ckpt["conv2_1_c3x3_b__conv.weight"].info.kind == "conv2d"
    assert ckpt.layers["conv2_1_c3x3_b__conv"].attrs["groups"] == 4
    assert all(li.attrs["eps"] == 1e-3 for li in ckpt.layers.values() if li.kind == "batch_norm")
    model = tw.torch_dpn(torch)
    tw.load_into_torch(torch, model, ckpt)
    assert_same_outputs(model(torch.from_numpy(x)).numpy(), want)

    tw.randomize_torch(torch, model, seed=22)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3
    back = tw.hub_from_torch(torch, model)
    mxa.write(back, tmp_path / "back-0000.params", template=str(tmp_path / "dpn-0000.params"))
    assert_same_outputs(_module_forward(mx, tmp_path / "back", {"data": x}, ["softmax_label"]),
                        model(torch.from_numpy(x)).numpy())


def test_fix_gamma_is_reported(mx, tmp_path):
    mod = mx.mod.Module(tw.symbol_net(mx), data_names=["data"], label_names=None)
    mod.bind(data_shapes=[("data", tw.IMAGE)], for_training=False)
    mod.init_params()
    mod.save_checkpoint(str(tmp_path / "s"), 0)
    report = mxa.read(tmp_path / "s-0000.params").report
    assert [e.name for e in report.of("warning")] == ["arg:bn0_gamma"]
    assert "fix_gamma" in report.of("warning")[0].detail


def test_grouped_deconvolution_both_ways(mx, torch, tmp_path):
    # MXNet Deconvolution [in, out/g, kh, kw] is torch's ConvTranspose2d layout: nothing may move
    # (and Deconvolution has no bias by default, unlike Convolution)
    sym = mx.sym.Deconvolution(mx.sym.var("data"), num_filter=6, kernel=(3, 3), stride=(2, 2), pad=(1, 1),
                               adj=(1, 1), num_group=2, name="up")
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None)
    mod.bind(data_shapes=[("data", (2, 4, 5, 5))], for_training=False)
    mod.init_params(mx.init.Normal(0.5))
    mod.save_checkpoint(str(tmp_path / "up"), 0)
    x = _image(17, (2, 4, 5, 5))
    want = _module_forward(mx, tmp_path / "up", {"data": x})
    ckpt = _through_hub(tmp_path / "up-0000.params", tmp_path)
    assert ckpt["up.weight"].info.kind == "conv_transpose2d" and ckpt["up.weight"].tensor.shape == (4, 3, 3, 3)
    model = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, bias=False)
    tw.load_into_torch(torch, model, ckpt)
    assert_same_outputs(model(torch.from_numpy(x)).numpy(), want)
    # and back: a torch ConvTranspose2d into the same graph
    tw.randomize_torch(torch, model, seed=18)
    hub = tw.hub_from_torch(torch, model)
    mxa.write(hub, tmp_path / "back-0000.params", template=str(tmp_path / "up-symbol.json"))
    assert_same_outputs(_module_forward(mx, tmp_path / "back", {"data": x}), model(torch.from_numpy(x)).numpy())


# ---- torch -> hub -> MXNet -----------------------------------------------------------------

def _torch_hub(torch, model, tmp_path, seed=0):
    tw.randomize_torch(torch, model, seed)
    hubfile.write(tw.hub_from_torch(torch, model), tmp_path / "t.safetensors")
    return hubfile.read(tmp_path / "t.safetensors")


def test_torch_to_gluon_export_template_module_and_symbolblock(mx, torch, tmp_path):
    model = tw.torch_net(torch)
    hub = _torch_hub(torch, model, tmp_path)
    x = _image(7)
    want = model(torch.from_numpy(x)).numpy()
    tpl = tw.gluon_net(mx)
    tpl.hybridize()
    tpl(mx.nd.array(x))
    tpl.export(str(tmp_path / "tpl"), 0)

    report = mxa.write(hub, tmp_path / "out-0000.params", template=str(tmp_path / "tpl-symbol.json"))
    assert [e.name for e in report.of("dropped")] == [n for n in hub if n.endswith("num_batches_tracked")]
    assert (tmp_path / "out-symbol.json").exists()
    loaded = mx.nd.load(str(tmp_path / "out-0000.params"))
    assert {k.split(":")[0] for k in loaded if k.endswith(("running_mean", "running_var"))} == {"aux"}
    assert {k.split(":")[0] for k in loaded if not k.endswith(("running_mean", "running_var"))} == {"arg"}
    assert_same_outputs(_module_forward(mx, tmp_path / "out", {"data": x}), want)
    block = mx.gluon.SymbolBlock.imports(str(tmp_path / "out-symbol.json"), ["data"],
                                         str(tmp_path / "out-0000.params"))
    assert_same_outputs(block(mx.nd.array(x)).asnumpy(), want)


def test_torch_to_gluon_load_parameters(mx, torch, tmp_path):
    model = tw.torch_net(torch)
    hub = _torch_hub(torch, model, tmp_path, seed=2)
    x = _image(8)
    want = model(torch.from_numpy(x)).numpy()
    net = tw.gluon_net(mx)
    net.save_parameters(str(tmp_path / "tpl.params"))
    mxa.write(hub, tmp_path / "net.params", template=str(tmp_path / "tpl.params"))
    fresh = tw.gluon_net(mx)
    fresh.load_parameters(str(tmp_path / "net.params"))
    assert_same_outputs(fresh(mx.nd.array(x)).asnumpy(), want)


def test_torch_to_symbol_defaults_are_patched(mx, torch, tmp_path):
    # the template keeps the symbol defaults (eps 1e-3, fix_gamma True): torch's eps and gamma win
    model = tw.torch_symbol_twin(torch)
    hub = _torch_hub(torch, model, tmp_path, seed=4)
    x = _image(9)
    want = model(torch.from_numpy(x)).numpy()
    tw.symbol_net(mx).save(str(tmp_path / "tpl-symbol.json"))
    report = mxa.write(hub, tmp_path / "out-0000.params", template=str(tmp_path / "tpl-symbol.json"))
    assert report.names("reshaped") == ["8.weight"]                  # Linear -> 1x1 conv fc6
    warned = {}
    for e in report.of("warning"):
        warned[e.name] = warned.get(e.name, "") + e.detail
    assert "fix_gamma" in warned["bn0"] and "eps" in warned["bn0"] and "eps" in warned["bn1"]
    bn0 = next(n for n in json.loads((tmp_path / "out-symbol.json").read_text())["nodes"] if n["name"] == "bn0")
    assert bn0["attrs"]["fix_gamma"] == "False" and float(bn0["attrs"]["eps"]) == 1e-5
    assert_same_outputs(_module_forward(mx, tmp_path / "out", {"data": x}), want)


def test_torch_to_multi_input_module(mx, torch, tmp_path):
    model = tw.torch_multi_input(torch)
    hub = _torch_hub(torch, model, tmp_path, seed=6)
    rng = np.random.default_rng(10)
    img = rng.standard_normal((3, 3, 9, 9)).astype(np.float32)
    vec = rng.standard_normal((3, 5)).astype(np.float32)
    want = model(torch.from_numpy(img), torch.from_numpy(vec)).numpy()
    tw.multi_input_symbol(mx).save(str(tmp_path / "tpl-symbol.json"))
    mxa.write(hub, tmp_path / "mi-0000.params", template=str(tmp_path / "tpl-symbol.json"))
    assert_same_outputs(_module_forward(mx, tmp_path / "mi", {"image": img, "features": vec}), want)


# ---- in memory -----------------------------------------------------------------------------

def test_from_model_to_model_and_torch(mx, torch, tmp_path):
    net = tw.gluon_net(mx)
    _randomize_gluon(mx, net, seed=11)
    x = _image(12)
    want = net(mx.nd.array(x)).asnumpy()
    ckpt = mxa.from_model(net)
    assert ckpt.layers["3.c2"].attrs["groups"] == 4 and ckpt.layers["1"].attrs["eps"] == 1e-5
    hubfile.write(ckpt, tmp_path / "g.safetensors")
    hub = hubfile.read(tmp_path / "g.safetensors")
    fresh = tw.gluon_net(mx)
    report = mxa.to_model(hub, fresh)
    assert not report.problems and report.tensors_out == len(ckpt)
    assert_same_outputs(fresh(mx.nd.array(x)).asnumpy(), want)
    model = tw.torch_net(torch)
    tw.load_into_torch(torch, model, hub)
    assert_same_outputs(model(torch.from_numpy(x)).numpy(), want)


def test_to_model_from_torch_by_order_and_strict(mx, torch, tmp_path):
    model = tw.torch_net(torch)
    hub = _torch_hub(torch, model, tmp_path, seed=13)
    x = _image(14)
    want = model(torch.from_numpy(x)).numpy()
    net = tw.gluon_net(mx)
    report = mxa.to_model(hub, net)
    assert report.names("dropped") and report.of("warning")           # by order, and said so
    assert_same_outputs(net(mx.nd.array(x)).asnumpy(), want)
    short = hubfmt.Checkpoint()
    for n in list(hub)[:-1]:
        short.add(n, hub[n].tensor, hub[n].info)
    with pytest.raises(hubfmt.ConversionError):
        mxa.to_model(short, tw.gluon_net(mx))
    # non-strict with names that match: fill what matches, say what is missing
    g = mxa.from_model(net)
    partial = hubfmt.Checkpoint()
    for n in list(g)[:-2]:
        partial.add(n, g[n].tensor, g[n].info)
    report = mxa.to_model(partial, tw.gluon_net(mx), strict=False)
    assert report.names("missing") == ["6.weight", "6.bias"]
    with pytest.raises(hubfmt.ConversionError):
        mxa.to_model(partial, tw.gluon_net(mx))


# ---- real architectures from MXNet's model zoo (constructed, not downloaded) ----------------

@pytest.mark.parametrize("arch", ["resnet18_v1", "mobilenet0.25"])
def test_model_zoo_export_through_hub_into_another_instance(mx, tmp_path, arch):
    vision = mx.gluon.model_zoo.vision
    net = vision.get_model(arch)
    net.initialize(mx.init.Xavier())
    x = _image(15, (2, 3, 64, 64))
    net(mx.nd.array(x))
    _randomize_gluon(mx, net, seed=16)
    net.hybridize()
    want = net(mx.nd.array(x)).asnumpy()
    net.export(str(tmp_path / "zoo"), 0)
    ckpt = _through_hub(tmp_path / "zoo-0000.params", tmp_path)
    assert hubfmt.validate(tmp_path / "m.safetensors") == []
    kinds = {e.info.kind for e in ckpt.entries.values()}
    assert "tensor" not in kinds and {"conv2d", "batch_norm", "linear"} <= kinds
    if arch.startswith("mobilenet"):
        assert "depthwise_conv2d" in kinds
    # a fresh instance has other flat names (resnetv11_ ...): matched without the model prefix
    fresh = vision.get_model(arch)
    report = mxa.to_model(ckpt, fresh)
    assert not report.problems
    assert_same_outputs(fresh(mx.nd.array(x)).asnumpy(), want)
    # and as a Module checkpoint following another instance's export
    other = vision.get_model(arch)
    other.initialize()
    other.hybridize()
    other(mx.nd.array(x))
    other.export(str(tmp_path / "other"), 0)
    mxa.write(ckpt, tmp_path / "back-0000.params", template=str(tmp_path / "other-0000.params"))
    assert_same_outputs(_module_forward(mx, tmp_path / "back", {"data": x}), want)


def test_shared_parameter_is_tied_and_written_under_both_names(mx, tmp_path):
    nn = mx.gluon.nn
    net = nn.HybridSequential()
    first = nn.Dense(6, in_units=6)
    net.add(first, nn.Dense(6, in_units=6, params=first.collect_params()))
    net.initialize()
    x = mx.nd.array(_image(19, (2, 6)))
    want = net(x).asnumpy()
    ckpt = mxa.from_model(net)
    assert ckpt["1.weight"].info.tied_to == "0.weight"
    hubfile.write(ckpt, tmp_path / "t.safetensors")
    report = mxa.write(hubfile.read(tmp_path / "t.safetensors"), tmp_path / "t.params")
    assert report.names("tied") == ["1.weight", "1.bias"]
    assert set(mx.nd.load(str(tmp_path / "t.params"))) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    fresh = nn.HybridSequential()
    f0 = nn.Dense(6, in_units=6)
    fresh.add(f0, nn.Dense(6, in_units=6, params=f0.collect_params()))
    fresh.load_parameters(str(tmp_path / "t.params"))
    assert_same_outputs(fresh(x).asnumpy(), want)


def test_from_model_refuses_uninitialised_block(mx):
    net = mx.gluon.nn.Dense(3)
    with pytest.raises(hubfmt.ConversionError, match="no data yet"):
        mxa.from_model(net)
    net.initialize()                       # deferred: in_units unknown until a forward pass
    with pytest.raises(hubfmt.ConversionError, match="forward pass"):
        mxa.from_model(net)
