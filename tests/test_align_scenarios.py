"""Seed scenarios across frameworks: a network written independently in two frameworks, with
different module names and parameter orders, converted file to file with `--template` (the
destination's own initialised checkpoint) and no hand-written table. Each framework writes its
own files and computes its own outputs; outputs equal (relative difference <= 1e-5)."""
from __future__ import annotations

import importlib
import shutil

import numpy as np
import pytest

from conftest import assert_same_outputs, require, run_cli
from torch_nets import EfficientNetA, ResNetA, randomize

X = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)


def adapter(name: str):
    """The adapter module, or skip while it is not merged into this branch."""
    try:
        mod = importlib.import_module(f"hubfmt.adapters.{name}")
    except ImportError:
        mod = None
    if not hasattr(mod, "read"):
        pytest.skip(f"the {name} adapter is not on this branch yet")
    return mod


def _convert(src, dst, template, *extra):
    r = run_cli("convert", src, dst, "--template", template, *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _torch_out(model, x=X):
    torch = require("torch")
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


# ---- MXNet DPN-style (Gluon export, flat symbol names, 1x1 conv classifier) -> PyTorch -------

def mxnet_dpn(mx):
    """Pre-activation dual-path block (BN-ReLU-conv), grouped 3x3 conv, classifier `fc6` as a
    1x1 convolution on the pooled features, as in the MXNet DPN release."""
    nn = mx.gluon.nn

    class DualPath(mx.gluon.HybridBlock):
        def __init__(self, r, bw, inc, groups, **kw):
            super().__init__(**kw)
            self.bw = bw
            with self.name_scope():
                self.bn_a, self.c1x1_a = nn.BatchNorm(), nn.Conv2D(r, 1, use_bias=False)
                self.bn_b, self.c3x3_b = nn.BatchNorm(), nn.Conv2D(r, 3, padding=1, groups=groups, use_bias=False)
                self.bn_c, self.c1x1_c = nn.BatchNorm(), nn.Conv2D(bw + inc, 1, use_bias=False)

        def hybrid_forward(self, F, x):
            y = self.c1x1_a(F.relu(self.bn_a(x)))
            y = self.c3x3_b(F.relu(self.bn_b(y)))
            y = self.c1x1_c(F.relu(self.bn_c(y)))
            res = F.slice_axis(x, axis=1, begin=0, end=self.bw) + F.slice_axis(y, axis=1, begin=0, end=self.bw)
            dense = F.concat(F.slice_axis(x, axis=1, begin=self.bw, end=None),
                             F.slice_axis(y, axis=1, begin=self.bw, end=None), dim=1)
            return F.concat(res, dense, dim=1)

    net = nn.HybridSequential(prefix="dpn_")
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, padding=1, use_bias=False, prefix="conv1_x_1__conv_"),
                DualPath(8, 8, 4, 4, prefix="conv2_x__1_"), DualPath(8, 8, 4, 4, prefix="conv2_x__2_"),
                nn.BatchNorm(prefix="conv5_x_x__bn_"), nn.Activation("relu"), nn.GlobalAvgPool2D(),
                nn.Conv2D(10, 1, prefix="fc6_"), nn.Flatten())
    net.initialize()
    net(mx.nd.zeros(X.shape))
    rng = np.random.default_rng(5)
    for p in net.collect_params().values():
        v = rng.random(p.shape) + 0.5 if p.name.endswith(("running_var", "gamma")) else rng.standard_normal(p.shape) * 0.3
        p.set_data(mx.nd.array(v.astype(np.float32)))
    return net


def torch_dpn():
    """The same network written for torch by someone else: a Linear classifier, BNs and convs
    kept in separate lists, other names."""
    torch = require("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, r, bw, inc, groups):
            super().__init__()
            self.bw = bw
            self.convs = nn.ModuleList([nn.Conv2d(cin, r, 1, bias=False),
                                        nn.Conv2d(r, r, 3, padding=1, groups=groups, bias=False),
                                        nn.Conv2d(r, bw + inc, 1, bias=False)])
            self.norms = nn.ModuleList([nn.BatchNorm2d(cin), nn.BatchNorm2d(r), nn.BatchNorm2d(r)])

        def forward(self, x):
            y = x
            for bn, conv in zip(self.norms, self.convs, strict=True):
                y = conv(torch.relu(bn(y)))
            return torch.cat([x[:, :self.bw] + y[:, :self.bw], x[:, self.bw:], y[:, self.bw:]], dim=1)

    class DPN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.stages = nn.Sequential(Block(16, 8, 8, 4, 4), Block(20, 8, 8, 4, 4))
            self.final_norm = nn.BatchNorm2d(24)
            self.classifier = nn.Linear(24, 10)

        def forward(self, x):
            x = torch.relu(self.final_norm(self.stages(self.stem(x))))
            return self.classifier(x.mean((2, 3)))

    return DPN()


def test_mxnet_dpn_to_torch(tmp_path):
    mx = require("mxnet")
    torch = require("torch")
    adapter("mxnet"), adapter("torch")
    net = mxnet_dpn(mx)
    net.hybridize()
    want = net(mx.nd.array(X)).asnumpy()
    net.export(str(tmp_path / "dpn"), 0)                       # dpn-symbol.json + dpn-0000.params
    model = torch_dpn()
    torch.save(model.state_dict(), tmp_path / "dpn_init.pth")
    _convert(tmp_path / "dpn-0000.params", tmp_path / "dpn.pth", tmp_path / "dpn_init.pth")
    model.load_state_dict(torch.load(tmp_path / "dpn.pth", weights_only=True), strict=True)
    assert_same_outputs(_torch_out(model), want)


# ---- PyTorch ResNet -> MXNet symbol -------------------------------------------------------

def mxnet_resnet(mx):
    """Gluon ResNet v1 with the shortcut registered after the body (the torch twin registers it first)."""
    nn = mx.gluon.nn

    class Basic(mx.gluon.HybridBlock):
        def __init__(self, c, stride, project, **kw):
            super().__init__(**kw)
            with self.name_scope():
                self.body = nn.HybridSequential(prefix="")
                self.body.add(nn.Conv2D(c, 3, stride, 1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
                              nn.Conv2D(c, 3, 1, 1, use_bias=False), nn.BatchNorm())
                self.downsample = None
                if project:
                    self.downsample = nn.HybridSequential(prefix="")
                    self.downsample.add(nn.Conv2D(c, 1, stride, use_bias=False), nn.BatchNorm())

        def hybrid_forward(self, F, x):
            y = self.body(x)
            return F.relu(y + (self.downsample(x) if self.downsample is not None else x))

    net = nn.HybridSequential(prefix="resnetv10_")
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, 1, 1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
                Basic(8, 1, False), Basic(8, 1, False), Basic(16, 2, True), Basic(16, 1, False),
                nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize()
    net(mx.nd.zeros(X.shape))
    return net


def test_torch_resnet_to_mxnet_symbol(tmp_path):
    mx = require("mxnet")
    torch = require("torch")
    adapter("mxnet"), adapter("torch")
    model = randomize(ResNetA(), 7)
    torch.save(model.state_dict(), tmp_path / "resnet.pth")
    tpl = mxnet_resnet(mx)
    tpl.hybridize()
    tpl(mx.nd.zeros(X.shape))
    tpl.export(str(tmp_path / "init"), 0)                      # init-symbol.json + init-0000.params
    _convert(tmp_path / "resnet.pth", tmp_path / "resnet-0000.params", tmp_path / "init-0000.params")
    shutil.copy(tmp_path / "init-symbol.json", tmp_path / "resnet-symbol.json")
    sym, args, auxs = mx.model.load_checkpoint(str(tmp_path / "resnet"), 0)
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", X.shape)], for_training=False)
    mod.set_params(args, auxs, allow_missing=False, allow_extra=False)
    mod.forward(mx.io.DataBatch([mx.nd.array(X)]), is_train=False)
    assert_same_outputs(mod.get_outputs()[0].asnumpy(), _torch_out(model))


# ---- PyTorch EfficientNet -> MindSpore ----------------------------------------------------

def mindspore_effnet(widths=((8, 8), (8, 8), (8, 16), (16, 16)), classes=10):
    """EfficientNet as a MindSpore port writes it: `layers.0._bn1`, the projection registered
    before the squeeze-excite, a Dense head."""
    ms = require("mindspore")
    from mindspore import nn, ops

    def swish(x):
        return x * ops.sigmoid(x)

    def conv(cin, cout, k, stride=1, group=1, bias=False):
        return nn.Conv2d(cin, cout, k, stride, pad_mode="pad", padding=k // 2, group=group, has_bias=bias)

    class MBConv(nn.Cell):
        def __init__(self, c, co):
            super().__init__()
            r = max(1, c // 4)
            self._project_conv = conv(c, co, 1)
            self._bn2 = nn.BatchNorm2d(co, eps=1e-3)
            self._depthwise_conv = conv(c, c, 3, group=c)
            self._bn1 = nn.BatchNorm2d(c, eps=1e-3)
            self._se_reduce = conv(c, r, 1, bias=True)
            self._se_expand = conv(r, c, 1, bias=True)

        def construct(self, x):
            x = swish(self._bn1(self._depthwise_conv(x)))
            s = ops.sigmoid(self._se_expand(swish(self._se_reduce(ops.mean(x, (2, 3), keep_dims=True)))))
            return self._bn2(self._project_conv(x * s))

    class EffNet(nn.Cell):
        def __init__(self):
            super().__init__()
            self.stem_conv = conv(3, widths[0][0], 3, 2)
            self.stem_bn = nn.BatchNorm2d(widths[0][0], eps=1e-3)
            self.layers = nn.SequentialCell([MBConv(c, co) for c, co in widths])
            self.head_conv = conv(widths[-1][1], 32, 1)
            self.head_bn = nn.BatchNorm2d(32, eps=1e-3)
            self.dense = nn.Dense(32, classes)

        def construct(self, x):
            x = swish(self.stem_bn(self.stem_conv(x)))
            x = swish(self.head_bn(self.head_conv(self.layers(x))))
            return self.dense(ops.mean(x, (2, 3)))

    net = EffNet()
    net.set_train(False)
    return net, ms


def test_torch_efficientnet_to_mindspore(tmp_path):
    torch = require("torch")
    adapter("mindspore"), adapter("torch")
    model = randomize(EfficientNetA(), 11)
    torch.save(model.state_dict(), tmp_path / "effnet.pth")
    net, ms = mindspore_effnet()
    ms.save_checkpoint(net, str(tmp_path / "init.ckpt"))
    _convert(tmp_path / "effnet.pth", tmp_path / "effnet.ckpt", tmp_path / "init.ckpt")
    not_loaded, unused = ms.load_param_into_net(net, ms.load_checkpoint(str(tmp_path / "effnet.ckpt")), strict_load=True)
    assert not_loaded == [] and unused == []
    got = net(ms.Tensor(X)).asnumpy()
    assert_same_outputs(got, _torch_out(model))
    # The verification API across frameworks: torch with named intermediates, MindSpore final only.
    from hubfmt.adapters.torch.verify import runner
    from hubfmt.verification import verify

    v = verify(runner(model), lambda x: {"output": net(ms.Tensor(x)).asnumpy()}, X)
    assert v.ok and len(v.rows) == 1 and len(v.unpaired) > 20, v.to_text()


# ---- TF1 UNet (name-based checkpoint bundle) -> PyTorch -------------------------------------

def tf1_unet(tf, path):
    """A small UNet in the TF1 graph API (NHWC), variables named as tf.layers names them
    (`down1/conv/kernel`, `down1/bn/moving_variance`, `upconv1/kernel`), randomised, saved with
    Saver. Returns the network's output for X, as NCHW."""
    v1 = tf.compat.v1
    g = tf.Graph()
    rng = np.random.default_rng(9)

    def var(name, shape, positive=False):
        val = rng.random(shape) + 0.5 if positive else rng.standard_normal(shape) * 0.3
        return v1.get_variable(name, initializer=val.astype(np.float32))

    def block(h, cin, c, scope):
        with v1.variable_scope(scope):
            with v1.variable_scope("conv"):
                h = tf.nn.conv2d(h, var("kernel", (3, 3, cin, c)), 1, "SAME")
            with v1.variable_scope("bn"):
                gamma, beta = var("gamma", (c,), True), var("beta", (c,))
                mean, variance = var("moving_mean", (c,)), var("moving_variance", (c,), True)
                h = tf.nn.batch_normalization(h, mean, variance, beta, gamma, 1e-3)
            return tf.nn.relu(h)

    with g.as_default():
        x = v1.placeholder(tf.float32, (X.shape[0], 16, 16, 3))
        d1 = block(x, 3, 8, "down1")
        d2 = block(tf.nn.max_pool2d(d1, 2, 2, "VALID"), 8, 16, "down2")
        with v1.variable_scope("upconv1"):
            u1 = tf.nn.conv2d_transpose(d2, var("kernel", (2, 2, 8, 16)), (X.shape[0], 16, 16, 8), 2, "SAME")
            u1 = tf.nn.bias_add(u1, var("bias", (8,)))
        y = block(tf.concat([d1, u1], axis=3), 16, 8, "up1")
        with v1.variable_scope("logits"):
            out = tf.nn.bias_add(tf.nn.conv2d(y, var("kernel", (1, 1, 8, 2)), 1, "SAME"), var("bias", (2,)))
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            want = sess.run(out, {x: X.transpose(0, 2, 3, 1)})
            v1.train.Saver().save(sess, str(path))
    return want.transpose(0, 3, 1, 2)


def torch_unet():
    torch = require("torch")
    nn = torch.nn

    def block(cin, c):
        return nn.Sequential(nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c, eps=1e-3), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc1, self.enc2 = block(3, 8), block(8, 16)
            self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.dec1 = block(16, 8)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
            return self.head(self.dec1(torch.cat([e1, self.up(e2)], dim=1)))

    return UNet()


def test_tf1_unet_to_torch(tmp_path):
    tf = require("tensorflow")
    torch = require("torch")
    adapter("tensorflow"), adapter("torch")
    want = tf1_unet(tf, tmp_path / "unet.ckpt")
    model = torch_unet()
    torch.save(model.state_dict(), tmp_path / "unet_init.pth")
    _convert(tmp_path / "unet.ckpt", tmp_path / "unet.pth", tmp_path / "unet_init.pth")
    model.load_state_dict(torch.load(tmp_path / "unet.pth", weights_only=True), strict=True)
    assert_same_outputs(_torch_out(model), want)


# ---- PyTorch YOLO-style -> OneFlow -----------------------------------------------------------

def torch_yolo():
    """YOLOv5-style names: model.N.{conv,bn}, a C3 block (cv1/cv2 branches, bottleneck, cv3), SPPF, Detect."""
    torch = require("torch")
    nn = torch.nn

    class Conv(nn.Module):
        def __init__(self, cin, cout, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.cv1, self.cv2 = Conv(c, c, 1), Conv(c, c, 3)

        def forward(self, x):
            return x + self.cv2(self.cv1(x))

    class C3(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            c = cout // 2
            self.cv1, self.cv2, self.cv3 = Conv(cin, c), Conv(cin, c), Conv(2 * c, cout)
            self.m = nn.Sequential(Bottleneck(c))

        def forward(self, x):
            return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))

    class SPPF(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.cv1, self.cv2 = Conv(cin, cin // 2), Conv(cin * 2, cout)
            self.m = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))

    class Detect(nn.Module):
        def __init__(self, c, no):
            super().__init__()
            self.m = nn.ModuleList([nn.Conv2d(c, no, 1)])

        def forward(self, x):
            return self.m[0](x)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(Conv(3, 8, 3, 2), Conv(8, 16, 3, 2), C3(16, 16), SPPF(16, 16), Detect(16, 27))

        def forward(self, x):
            return self.model(x)

    return Model()


ONEFLOW_YOLO = r'''
import sys, os, numpy as np
import oneflow as flow
nn = flow.nn

class ConvBnAct(nn.Module):
    def __init__(self, cin, cout, k=1, s=1):
        super().__init__()
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)       # registered before its conv
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)

    def forward(self, x):
        return flow.nn.functional.silu(self.bn(self.conv(x)))

class CSP(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        c = cout // 2
        self.branch2 = ConvBnAct(cin, c)          # the shortcut branch first
        self.branch1 = ConvBnAct(cin, c)
        self.res1 = ConvBnAct(c, c, 1)
        self.res2 = ConvBnAct(c, c, 3)
        self.fuse = ConvBnAct(2 * c, cout)

    def forward(self, x):
        y = self.branch1(x)
        y = y + self.res2(self.res1(y))
        return self.fuse(flow.cat([y, self.branch2(x)], 1))

class Pyramid(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.reduce = ConvBnAct(cin, cin // 2)
        self.expand = ConvBnAct(cin * 2, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.reduce(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.expand(flow.cat([x, y1, y2, self.pool(y2)], 1))

class Yolo(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvBnAct(3, 8, 3, 2)
        self.down = ConvBnAct(8, 16, 3, 2)
        self.csp = CSP(16, 16)
        self.spp = Pyramid(16, 16)
        self.head = nn.Conv2d(16, 27, 1)

    def forward(self, x):
        return self.head(self.spp(self.csp(self.down(self.stem(x)))))

mode, d = sys.argv[1], sys.argv[2]
model = Yolo().eval()
if mode == "init":
    flow.save(model.state_dict(), os.path.join(d, "init.oneflow"))
else:
    print(model.load_state_dict(flow.load(os.path.join(d, "yolo.oneflow")), strict=True))
    x = flow.tensor(np.load(os.path.join(d, "x.npy")))
    np.save(os.path.join(d, "out.npy"), model(x).numpy())
'''


def test_torch_yolo_to_oneflow(tmp_path):
    from conftest import run_oneflow

    torch = require("torch")
    adapter("oneflow"), adapter("torch")
    model = randomize(torch_yolo(), 13)
    torch.save(model.state_dict(), tmp_path / "yolo.pt")
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run_oneflow(ONEFLOW_YOLO, "init", str(tmp_path))
    r = _convert(tmp_path / "yolo.pt", tmp_path / "yolo.oneflow", tmp_path / "init.oneflow")
    assert "ambiguous" not in r.stdout
    run_oneflow(ONEFLOW_YOLO, "run", str(tmp_path))
    assert_same_outputs(np.load(tmp_path / "out.npy"), _torch_out(model, x))
