"""Independently written model zoos, file to file (#14): `hubfmt convert SRC DST --template T`,
T a file saved from the destination zoo's model, then the destination framework's own loader and
forward pass against the source model's outputs (rel diff <= 1e-5), or a non-zero exit naming the
layer where the two zoos' models are different architectures. Random init, no downloads.

The pairs and why each is (or is not) the same architecture:
- torchvision <-> timm resnet18, efficientnet_b0, mobilenet_v2 (timm mobilenetv2_100), densenet121:
  the same networks written twice; exact.
- torchvision vgg11_bn <-> timm vgg11_bn: timm's head is a 7x7 conv (ConvMlp) on the 7x7 map where
  torchvision has a Linear over the flattened map: the same computation, exact by reshape.
- torchvision efficientnet_b0 <-> timm tf_efficientnet_b0: another model (TF 'same' padding at run
  time in Conv2dSame, BatchNorm eps 1e-3). Two state dicts cannot show it; whole pickled modules
  do, and the conversion warns naming both values.
- torchvision <-> Gluon model zoo resnet18_v1, densenet121, vgg11_bn: exact. Gluon mobilenetv2_1.0
  (an expansion conv in the first block, a bias-free 1x1 conv head) and resnet50_v1 (biased convs,
  stride on the first 1x1 conv) are other architectures: refused, naming layers.
- keras.applications ResNet50 <-> torchvision resnet50: Keras's convs have biases and the stride
  on the first 1x1 conv: refused. A stride moved between convs whose shapes still agree (a caffe-
  style ResNet) is refused when both files record strides (pickled modules).
- mindcv resnet18 (MindSpore) <-> torchvision resnet18: the weights convert exactly; mindcv's stem
  max pool pads 'same' (TF style), so the shipped net computes other outputs from the same weights
  (no file can show a pool's padding); with torchvision's pool padding the outputs agree.
- flowvision resnet18 (OneFlow) <-> torchvision resnet18: exact.
"""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from conftest import assert_same_outputs, rel_diff, require, run_cli, run_oneflow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

X64 = np.random.default_rng(0).normal(0, 1, (2, 3, 64, 64)).astype(np.float32)
X224 = np.random.default_rng(1).normal(0, 1, (1, 3, 224, 224)).astype(np.float32)


@pytest.fixture(scope="module")
def torch():
    t = require("torch")
    previous = t.is_grad_enabled()
    t.set_grad_enabled(False)
    yield t
    t.set_grad_enabled(previous)


@pytest.fixture(scope="module")
def tv(torch):
    from zoo import import_torchvision
    return import_torchvision().models


@pytest.fixture(scope="module")
def timm(tv):
    return require("timm")


def randomize(torch, model, seed):
    """Random weights with norm layers that keep the signal (gamma ~1, real running stats): a
    net whose output is its last bias would hide any wrong conversion."""
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            if name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.1)
        else:
            p.normal_(0, (2.0 / max(1, p[0].numel())) ** 0.5)
    for name, b in model.named_buffers():
        if name.endswith("running_var"):
            b.uniform_(0.5, 1.5)
        elif name.endswith("running_mean"):
            b.normal_(0, 0.1)
    return model.eval()


def torch_out(torch, model, x):
    return model(torch.from_numpy(x)).numpy()


def convert(src, dst, template, *extra):
    return run_cli("convert", src, dst, "--template", template, "-q", *extra)


def assert_converted(r):
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def assert_refused(r, *layers):
    """A non-zero exit whose message names the layers, and that does not suggest relaxing the
    check (--allow-missing would write a wrong model here)."""
    text = r.stdout + r.stderr
    assert r.returncode != 0, text[-3000:]
    for layer in layers:
        assert layer in text, f"{layer} not named in:\n{text[-3000:]}"
    first = r.stderr.strip().splitlines()[-1]
    assert "relax those" not in first, first
    return first


def load_torch(torch, model, path):
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return model


# ---- torchvision <-> timm -------------------------------------------------------------------

TIMM_PAIRS = [("resnet18", "resnet18"), ("efficientnet_b0", "efficientnet_b0"), ("mobilenet_v2", "mobilenetv2_100"),
              ("densenet121", "densenet121")]


@pytest.mark.parametrize("tv_name,timm_name", TIMM_PAIRS)
@pytest.mark.parametrize("direction", ["torchvision->timm", "timm->torchvision"])
def test_torchvision_and_timm_same_architecture(torch, tv, timm, tmp_path, tv_name, timm_name, direction):
    def make(zoo, seed):
        m = getattr(tv, tv_name)(num_classes=10) if zoo == "torchvision" else timm.create_model(timm_name, num_classes=10)
        return randomize(torch, m, seed)

    src_zoo, dst_zoo = direction.split("->")
    src = make(src_zoo, 1)
    torch.save(src.state_dict(), tmp_path / "src.pth")
    torch.save(make(dst_zoo, 2).state_dict(), tmp_path / "tmpl.pth")
    assert_converted(convert(tmp_path / "src.pth", tmp_path / "out.pth", tmp_path / "tmpl.pth"))
    dst = load_torch(torch, make(dst_zoo, 3), tmp_path / "out.pth")
    assert_same_outputs(torch_out(torch, dst, X64), torch_out(torch, src, X64))


@pytest.mark.parametrize("direction", ["torchvision->timm", "timm->torchvision"])
def test_torchvision_vgg11_bn_and_timm_vgg11_bn_linear_is_the_7x7_conv(torch, tv, timm, tmp_path, direction):
    # timm's head (ConvMlp) is a 7x7 conv on the 7x7 map where torchvision flattens it into a
    # Linear: [4096, 25088] rows in channels-first order are the conv's [4096, 512, 7, 7].
    def make(zoo, seed):
        m = tv.vgg11_bn(num_classes=10) if zoo == "torchvision" else timm.create_model("vgg11_bn", num_classes=10)
        return randomize(torch, m, seed)

    src_zoo, dst_zoo = direction.split("->")
    src = make(src_zoo, 1)
    torch.save(src.state_dict(), tmp_path / "src.pth")
    torch.save(make(dst_zoo, 2).state_dict(), tmp_path / "tmpl.pth")
    r = run_cli("convert", tmp_path / "src.pth", tmp_path / "out.pth", "--template", tmp_path / "tmpl.pth")
    assert_converted(r)
    assert "[4096, 25088] -> [4096, 512, 7, 7]" in r.stdout or "[4096, 512, 7, 7] -> [4096, 25088]" in r.stdout, r.stdout
    dst = load_torch(torch, make(dst_zoo, 3), tmp_path / "out.pth")
    x = X64[:1]
    assert_same_outputs(torch_out(torch, dst, x), torch_out(torch, src, x))


def test_tf_efficientnet_is_another_model_and_whole_modules_say_so(torch, tv, timm, tmp_path):
    # timm's tf_ variant pads 'same' at run time (Conv2dSame, padding 0 stored) and has BatchNorm
    # eps 1e-3 (BatchNormAct2d): timm subclasses of nn.Conv2d/BatchNorm2d. Their attributes are
    # read from the pickle like the base classes', so both differences are named.
    torch.save(randomize(torch, tv.efficientnet_b0(num_classes=10), 1), tmp_path / "tv.pth")
    torch.save(randomize(torch, timm.create_model("tf_efficientnet_b0", num_classes=10), 2), tmp_path / "tf.pth")
    for src, tmpl, stem, bn in (("tv", "tf", "conv_stem", "bn1"), ("tf", "tv", "features.0.0", "features.0.1")):
        r = run_cli("convert", tmp_path / f"{src}.pth", tmp_path / "o.pth", "--template", tmp_path / f"{tmpl}.pth",
                    "--overwrite", "--verbose")
        text = r.stdout + r.stderr
        assert r.returncode == 0, text[-3000:]
        assert re.search(rf"\n  {re.escape(bn)} +batch_norm eps (1e-05|0.001) in the source, (0.001|1e-05) in the template",
                         text), text[-3000:]
        assert re.search(rf"\n  {re.escape(stem)} +padding: source \[[01], [01]\], template \[[01], [01]\]", text), text[-3000:]


# ---- torchvision <-> the Gluon model zoo (MXNet) -------------------------------------------

@pytest.fixture(scope="module")
def mx():
    return require("mxnet")


def gluon(mx, arch, x, seed):
    net = mx.gluon.model_zoo.vision.get_model(arch, classes=10)
    net.initialize(mx.init.Xavier())
    net(mx.nd.array(x))
    rng = np.random.default_rng(seed)
    for p in net.collect_params().values():
        if p.name.endswith(("running_var", "gamma")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
        elif p.name.endswith(("running_mean", "beta", "bias")):
            p.set_data(mx.nd.array(rng.normal(0, 0.1, p.shape).astype(np.float32)))
    net.hybridize()
    net(mx.nd.array(x))
    return net


def torchvision_for_gluon(torch, tv, name, seed):
    m = getattr(tv, name)(num_classes=10)
    if name.startswith("vgg"):
        # Gluon's VGG flattens the map it gets (2x2 at 64x64, channels first like torch);
        # torchvision pools to 7x7 first. Without the pool both are the same net at this size.
        m.avgpool = torch.nn.Identity()
        m.classifier[0] = torch.nn.Linear(512 * 2 * 2, 4096)
    return randomize(torch, m, seed)


GLUON_PAIRS = [("resnet18", "resnet18_v1", X64), ("densenet121", "densenet121", X224), ("vgg11_bn", "vgg11_bn", X64)]


@pytest.mark.parametrize("tv_name,gluon_name,x", GLUON_PAIRS, ids=[p[0] for p in GLUON_PAIRS])
def test_torchvision_and_gluon_zoo_both_ways(torch, tv, mx, tmp_path, tv_name, gluon_name, x):
    # torch -> MXNet: the template is a Gluon export (symbol + params); the output is loaded by
    # MXNet's own SymbolBlock.imports.
    src = torchvision_for_gluon(torch, tv, tv_name, 1)
    torch.save(src.state_dict(), tmp_path / "src.pth")
    gluon(mx, gluon_name, x, 2).export(str(tmp_path / "tmpl"), 0)
    assert_converted(convert(tmp_path / "src.pth", tmp_path / "out-0000.params", tmp_path / "tmpl-0000.params"))
    block = mx.gluon.SymbolBlock.imports(str(tmp_path / "out-symbol.json"), ["data"], str(tmp_path / "out-0000.params"))
    assert_same_outputs(block(mx.nd.array(x)).asnumpy(), torch_out(torch, src, x))
    # MXNet -> torch: a Gluon export as source, a torchvision state dict as template.
    net = gluon(mx, gluon_name, x, 3)
    net.export(str(tmp_path / "gsrc"), 0)
    torch.save(torchvision_for_gluon(torch, tv, tv_name, 4).state_dict(), tmp_path / "tmpl.pth")
    assert_converted(convert(tmp_path / "gsrc-0000.params", tmp_path / "out.pth", tmp_path / "tmpl.pth"))
    dst = load_torch(torch, torchvision_for_gluon(torch, tv, tv_name, 5), tmp_path / "out.pth")
    assert_same_outputs(torch_out(torch, dst, x), net(mx.nd.array(x)).asnumpy())


@pytest.mark.parametrize("tv_name,gluon_name,torch_layer,gluon_layer", [
    # Gluon's first bottleneck expands 32 -> 32 with a 1x1 conv torchvision's has not; its head
    # is a bias-free 1x1 conv where torchvision has a Linear with a bias.
    ("mobilenet_v2", "mobilenetv2_1.0", "classifier.1", "linearbottleneck0_conv0"),
    # Gluon's BottleneckV1 1x1 convs have biases (and the stride on the first one).
    ("resnet50", "resnet50_v1", "layer1.0.conv1", "stage1_conv0"),
])
def test_gluon_zoo_architecture_mismatches_are_refused(torch, tv, mx, tmp_path, tv_name, gluon_name, torch_layer,
                                                       gluon_layer):
    torch.save(getattr(tv, tv_name)(num_classes=10).state_dict(), tmp_path / "t.pth")
    gluon(mx, gluon_name, X64, 0).export(str(tmp_path / "g"), 0)
    assert_refused(convert(tmp_path / "t.pth", tmp_path / "o-0000.params", tmp_path / "g-0000.params"),
                   torch_layer, gluon_layer)
    assert_refused(convert(tmp_path / "g-0000.params", tmp_path / "o.pth", tmp_path / "t.pth"), torch_layer, gluon_layer)
    assert not (tmp_path / "o.pth").exists() and not (tmp_path / "o-0000.params").exists()


# ---- keras.applications ResNet50 <-> torchvision resnet50 ---------------------------------

def test_keras_resnet50_and_torchvision_resnet50_are_refused(torch, tv, tmp_path):
    require("tensorflow")
    keras = require("keras")
    k = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None)
    k.save(str(tmp_path / "k.keras"))
    k.save_weights(str(tmp_path / "k.weights.h5"))
    t = tv.resnet50(num_classes=10)
    torch.save(t.state_dict(), tmp_path / "t.pth")
    torch.save(t, tmp_path / "module.pth")
    for src in ("k.keras", "k.weights.h5"):
        for tmpl in ("t.pth", "module.pth"):
            assert_refused(convert(tmp_path / src, tmp_path / "o.pth", tmp_path / tmpl), "conv2_block1_1_conv",
                           "architecture mismatch")
    for out in ("o.keras", "o.weights.h5"):
        assert_refused(convert(tmp_path / "t.pth", tmp_path / out, tmp_path / "k.keras"), "conv2_block1_1_conv",
                       "architecture mismatch")


def test_a_stride_moved_between_convs_is_refused_when_both_files_record_it(torch, tv, tmp_path):
    # Caffe-style ResNet v1 (Keras, Gluon resnet*_v1): the stride on the first 1x1 conv of a
    # downsampling block, torchvision's on the 3x3. Same shapes, another model: with both strides
    # recorded (pickled modules) it is refused, naming the layer and both strides.
    src = randomize(torch, tv.resnet50(num_classes=10), 1)
    torch.save(src, tmp_path / "src.pth")
    caffe = tv.resnet50(num_classes=10)
    for layer in (caffe.layer2, caffe.layer3, caffe.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    torch.save(caffe, tmp_path / "caffe.pth")
    first = assert_refused(convert(tmp_path / "src.pth", tmp_path / "o.pth", tmp_path / "caffe.pth"),
                           "layer2.0.conv1", "layer2.0.conv2", "stride [1, 1]", "[2, 2]")
    assert "stride" in first
    assert not (tmp_path / "o.pth").exists()
    # Strides that agree: exact, as any resnet50 pair.
    torch.save(tv.resnet50(num_classes=10), tmp_path / "same.pth")
    assert_converted(convert(tmp_path / "src.pth", tmp_path / "o.pth", tmp_path / "same.pth"))
    dst = load_torch(torch, tv.resnet50(num_classes=10).eval(), tmp_path / "o.pth")
    assert_same_outputs(torch_out(torch, dst, X64), torch_out(torch, src, X64))


# ---- mindcv (MindSpore) <-> torchvision -------------------------------------------------

@pytest.fixture(scope="module")
def ms():
    m = require("mindspore")
    m.set_context(mode=m.PYNATIVE_MODE)
    return m


def mindcv_resnet18(ms, seed, torch_pool=True):
    mindcv = require("mindcv")
    net = mindcv.create_model("resnet18", num_classes=10, pretrained=False)
    if torch_pool:
        # mindcv's stem max pool pads 'same' (TF style: 0 before, 1 after at an even size),
        # torchvision's pads 1 on both sides: the only difference, and no weight shows it.
        net.max_pool = ms.nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        if p.name.endswith(("moving_variance", "gamma")):
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
        elif p.name.endswith(("moving_mean", "beta", "bias")):
            p.set_data(ms.Tensor(rng.normal(0, 0.1, p.shape).astype(np.float32)))
    net.set_train(False)
    return net


def test_mindcv_resnet18_and_torchvision_both_ways(torch, tv, ms, tmp_path):
    net = mindcv_resnet18(ms, 1)
    ms.save_checkpoint(net, str(tmp_path / "src.ckpt"))
    torch.save(randomize(torch, tv.resnet18(num_classes=10), 2).state_dict(), tmp_path / "tmpl.pth")
    assert_converted(convert(tmp_path / "src.ckpt", tmp_path / "out.pth", tmp_path / "tmpl.pth"))
    dst = load_torch(torch, randomize(torch, tv.resnet18(num_classes=10), 3), tmp_path / "out.pth")
    assert_same_outputs(torch_out(torch, dst, X64), net(ms.Tensor(X64)).asnumpy())

    src = randomize(torch, tv.resnet18(num_classes=10), 4)
    torch.save(src.state_dict(), tmp_path / "src.pth")
    ms.save_checkpoint(mindcv_resnet18(ms, 5), str(tmp_path / "tmpl.ckpt"))
    assert_converted(convert(tmp_path / "src.pth", tmp_path / "out.ckpt", tmp_path / "tmpl.ckpt"))
    dst_net = mindcv_resnet18(ms, 6)
    not_loaded, unused = ms.load_param_into_net(dst_net, ms.load_checkpoint(str(tmp_path / "out.ckpt")),
                                                strict_load=True)
    assert not_loaded == [] and unused == []
    dst_net.set_train(False)
    assert_same_outputs(dst_net(ms.Tensor(X64)).asnumpy(), torch_out(torch, src, X64))
    # As mindcv ships it, the pool makes it another model: the same weights, other outputs.
    shipped = mindcv_resnet18(ms, 6, torch_pool=False)
    ms.load_param_into_net(shipped, ms.load_checkpoint(str(tmp_path / "out.ckpt")), strict_load=True)
    shipped.set_train(False)
    assert rel_diff(shipped(ms.Tensor(X64)).asnumpy(), torch_out(torch, src, X64)) > 1e-2


# ---- flowvision (OneFlow, Python 3.10 side environment) <-> torchvision ---------------------

FLOWVISION = r'''
import sys, os, numpy as np
import oneflow as flow
import flowvision
mode, d, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
flow.manual_seed(seed)
net = flowvision.models.resnet18(num_classes=10)
rng = np.random.default_rng(seed)
sd = net.state_dict()
for name, t in sd.items():
    if name.endswith(("running_var", "bn1.weight", "bn2.weight", "downsample.1.weight")):
        t.copy_(flow.tensor(rng.uniform(0.5, 1.5, tuple(t.shape)).astype(np.float32)))
    elif name.endswith(("running_mean", ".bias")):
        t.copy_(flow.tensor(rng.normal(0, 0.1, tuple(t.shape)).astype(np.float32)))
if mode == "load":
    net.load_state_dict(flow.load(os.path.join(d, "out.oneflow")), strict=True)
else:
    flow.save(net.state_dict(), os.path.join(d, mode))
net.eval()
with flow.no_grad():
    np.save(os.path.join(d, mode + "-out.npy"), net(flow.tensor(np.load(os.path.join(d, "x.npy")))).numpy())
'''


def test_flowvision_resnet18_and_torchvision_both_ways(torch, tv, tmp_path):
    np.save(tmp_path / "x.npy", X64)
    run_oneflow(FLOWVISION, "src", str(tmp_path), "1")
    torch.save(randomize(torch, tv.resnet18(num_classes=10), 2).state_dict(), tmp_path / "tmpl.pth")
    assert_converted(convert(tmp_path / "src", tmp_path / "out.pth", tmp_path / "tmpl.pth"))
    dst = load_torch(torch, randomize(torch, tv.resnet18(num_classes=10), 3), tmp_path / "out.pth")
    assert_same_outputs(torch_out(torch, dst, X64), np.load(tmp_path / "src-out.npy"))

    src = randomize(torch, tv.resnet18(num_classes=10), 4)
    torch.save(src.state_dict(), tmp_path / "src.pth")
    run_oneflow(FLOWVISION, "tmpl", str(tmp_path), "5")
    assert_converted(convert(tmp_path / "src.pth", tmp_path / "out.oneflow", tmp_path / "tmpl"))
    run_oneflow(FLOWVISION, "load", str(tmp_path), "6")
    got = np.load(tmp_path / "load-out.npy")
    assert rel_diff(got, np.load(tmp_path / "tmpl-out.npy")) > 1e-2      # the weights did change
    assert_same_outputs(got, torch_out(torch, src, X64))


def test_keras_and_torch_strides_that_disagree_are_refused_both_ways(torch, tmp_path):
    # The ResNet v1 question between frameworks: Keras with the stride on the 1x1 conv, torch on
    # the 3x3, shapes equal. A .keras file and a pickled module both record strides.
    require("tensorflow")
    keras = require("keras")
    L = keras.layers
    k = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(8, 1, strides=2, use_bias=False, name="reduce"),
                          L.BatchNormalization(epsilon=1e-5, name="bn"),
                          L.Conv2D(8, 3, padding="same", use_bias=False, name="conv")])
    k.save(str(tmp_path / "k.keras"))
    nn = torch.nn
    t = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False))
    torch.save(t, tmp_path / "t.pth")
    first = assert_refused(convert(tmp_path / "t.pth", tmp_path / "o.keras", tmp_path / "k.keras"), "stride [1, 1]",
                           "[2, 2]")
    assert "another architecture" in first and "stride" in first
    first = assert_refused(convert(tmp_path / "k.keras", tmp_path / "o.pth", tmp_path / "t.pth"), "0: stride [2, 2]",
                           "2: stride [1, 1]")
    assert not (tmp_path / "o.keras").exists() and not (tmp_path / "o.pth").exists()
    # The same strides on both sides: converted, and Keras computes what torch does.
    t[0].stride, t[2].stride = (2, 2), (1, 1)
    randomize(torch, t, 1)
    torch.save(t, tmp_path / "t.pth")
    assert_converted(convert(tmp_path / "t.pth", tmp_path / "o.keras", tmp_path / "k.keras"))
    x = np.random.default_rng(3).normal(0, 1, (2, 16, 16, 3)).astype(np.float32)
    got = keras.saving.load_model(str(tmp_path / "o.keras")).predict(x, verbose=0)
    assert_same_outputs(got.transpose(0, 3, 1, 2), torch_out(torch, t, np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
