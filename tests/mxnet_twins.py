"""Twin models for the MXNet oracle tests: the same network in Gluon / the symbol API and in torch,
declared so both list their parameters in the same order (MXNet: graph order; torch: module
registration order). Plus the two small bridges a test needs while no torch adapter is merged:
torch model -> canonical Checkpoint, and canonical Checkpoint -> torch model, both by order."""
from __future__ import annotations

import numpy as np

from hubfmt import Checkpoint, LayerInfo, LazyTensor, TensorInfo

IMAGE = (2, 3, 12, 12)


# ---- Gluon: stem -> DPN dual-path block -> ResNet basic block -> dense head ----------------

def gluon_net(mx):
    nn = mx.gluon.nn

    class DualPath(mx.gluon.HybridBlock):
        """DPN: a grouped-conv bottleneck whose output is split into a residual part (added) and
        a densely connected part (concatenated)."""

        def __init__(self, r, bw, inc, groups, **kw):
            super().__init__(**kw)
            self.bw = bw
            with self.name_scope():
                self.bn1, self.c1 = nn.BatchNorm(), nn.Conv2D(r, 1, use_bias=False)
                self.bn2, self.c2 = nn.BatchNorm(), nn.Conv2D(r, 3, padding=1, groups=groups, use_bias=False)
                self.bn3, self.c3 = nn.BatchNorm(), nn.Conv2D(bw + inc, 1, use_bias=False)

        def hybrid_forward(self, F, x):
            y = self.c1(F.relu(self.bn1(x)))
            y = self.c2(F.relu(self.bn2(y)))
            y = self.c3(F.relu(self.bn3(y)))
            res = F.slice_axis(x, axis=1, begin=0, end=self.bw) + F.slice_axis(y, axis=1, begin=0, end=self.bw)
            dense = F.concat(F.slice_axis(x, axis=1, begin=self.bw, end=None),
                             F.slice_axis(y, axis=1, begin=self.bw, end=None), dim=1)
            return F.concat(res, dense, dim=1)

    class Basic(mx.gluon.HybridBlock):
        """ResNet v1 basic block with a projection shortcut."""

        def __init__(self, c, stride, **kw):
            super().__init__(**kw)
            with self.name_scope():
                self.conv1, self.bn1 = nn.Conv2D(c, 3, stride, 1, use_bias=False), nn.BatchNorm()
                self.conv2, self.bn2 = nn.Conv2D(c, 3, 1, 1, use_bias=False), nn.BatchNorm()
                self.ds_conv, self.ds_bn = nn.Conv2D(c, 1, stride, use_bias=False), nn.BatchNorm()

        def hybrid_forward(self, F, x):
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(y + self.ds_bn(self.ds_conv(x)))

    net = nn.HybridSequential()
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                DualPath(8, 8, 4, 4), Basic(24, 2), nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize()
    net(mx.nd.zeros(IMAGE))
    return net


def torch_net(torch):
    nn = torch.nn

    class DualPath(nn.Module):
        def __init__(self, cin, r, bw, inc, groups):
            super().__init__()
            self.bw = bw
            self.bn1, self.c1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, r, 1, bias=False)
            self.bn2, self.c2 = nn.BatchNorm2d(r), nn.Conv2d(r, r, 3, padding=1, groups=groups, bias=False)
            self.bn3, self.c3 = nn.BatchNorm2d(r), nn.Conv2d(r, bw + inc, 1, bias=False)

        def forward(self, x):
            y = self.c1(torch.relu(self.bn1(x)))
            y = self.c2(torch.relu(self.bn2(y)))
            y = self.c3(torch.relu(self.bn3(y)))
            res = x[:, : self.bw] + y[:, : self.bw]
            return torch.cat([res, x[:, self.bw:], y[:, self.bw:]], dim=1)

    class Basic(nn.Module):
        def __init__(self, cin, c, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
            self.ds_conv, self.ds_bn = nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + self.ds_bn(self.ds_conv(x)))

    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         DualPath(16, 8, 8, 4, 4), Basic(20, 24, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))


# ---- symbol API: BatchNorm with fix_gamma both ways, a 1x1 conv classifier (DPN's fc6) ------

def symbol_net(mx, **bn0):
    """bn0 keeps the symbol defaults (eps 1e-3, fix_gamma True) unless overridden."""
    data = mx.sym.var("data")
    x = mx.sym.Convolution(data, num_filter=8, kernel=(3, 3), pad=(1, 1), name="conv0")
    x = mx.sym.Activation(mx.sym.BatchNorm(x, name="bn0", **bn0), act_type="relu")
    x = mx.sym.Convolution(x, num_filter=8, kernel=(3, 3), pad=(1, 1), num_group=4, no_bias=True, name="conv1")
    x = mx.sym.BatchNorm(x, fix_gamma=False, eps=2e-5, momentum=0.95, name="bn1")
    x = mx.sym.Pooling(mx.sym.Activation(x, act_type="relu"), global_pool=True, pool_type="avg", kernel=(1, 1))
    x = mx.sym.Convolution(x, num_filter=5, kernel=(1, 1), name="fc6")
    return mx.sym.flatten(x)


def torch_symbol_twin(torch):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def multi_input_symbol(mx):
    """Two inputs: an image branch and a vector branch, concatenated into one classifier."""
    img, vec = mx.sym.var("image"), mx.sym.var("features")
    x = mx.sym.Convolution(img, num_filter=6, kernel=(3, 3), stride=(2, 2), name="conv")
    x = mx.sym.Activation(mx.sym.BatchNorm(x, name="bn"), act_type="relu")
    x = mx.sym.flatten(mx.sym.Pooling(x, global_pool=True, pool_type="max", kernel=(1, 1)))
    v = mx.sym.Activation(mx.sym.FullyConnected(vec, num_hidden=7, name="proj"), act_type="tanh")
    return mx.sym.FullyConnected(mx.sym.concat(x, v, dim=1), num_hidden=4, name="head")


def torch_multi_input(torch):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 6, 3, stride=2), nn.BatchNorm2d(6)
            self.proj, self.head = nn.Linear(5, 7), nn.Linear(13, 4)

        def forward(self, image, features):
            x = torch.relu(self.bn(self.conv(image))).amax(dim=(2, 3))
            return self.head(torch.cat([x, torch.tanh(self.proj(features))], dim=1))

    return Net()


# ---- bridges -------------------------------------------------------------------------------

def randomize_torch(torch, model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                v = torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var") else \
                    torch.randn(t.shape, generator=g) * 0.5
                t.copy_(v)
    return model.eval()


def hub_from_torch(torch, model) -> Checkpoint:
    """A torch model as a canonical Checkpoint (what the torch adapter's from_model will give)."""
    ckpt = Checkpoint()
    ckpt.source.framework = "torch"
    for mname, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            ckpt.layers[mname] = LayerInfo("conv2d", {"stride": list(m.stride), "padding": list(m.padding),
                                                      "dilation": list(m.dilation), "groups": m.groups})
        elif isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            ckpt.layers[mname] = LayerInfo("batch_norm", {"eps": m.eps, "momentum": m.momentum})
        elif isinstance(m, torch.nn.Linear):
            ckpt.layers[mname] = LayerInfo("linear", {})
    for name, t in model.state_dict().items():
        layer = name.rpartition(".")[0]
        kind = ckpt.layers[layer].kind if layer in ckpt.layers else "tensor"
        ckpt.add(name, LazyTensor.from_array(t.detach().numpy().copy()), TensorInfo(kind=kind))
    return ckpt


def load_into_torch(torch, model, ckpt: Checkpoint) -> None:
    """Fill a torch twin from a canonical checkpoint by order (shapes checked, a 1x1-conv
    classifier reshaped to its Linear), and give each BatchNorm the eps the checkpoint records."""
    sd = model.state_dict()
    targets = [n for n in sd if not n.endswith("num_batches_tracked")]
    sources = [n for n in ckpt if ckpt[n].info.role != "num_batches_tracked"]
    assert len(targets) == len(sources), (targets, sources)
    modules = dict(model.named_modules())
    new = {}
    for t, s in zip(targets, sources, strict=True):
        arr = ckpt.tensor(s)
        if arr.shape != tuple(sd[t].shape):
            assert arr.ndim == 4 and arr.shape[2:] == (1, 1) and arr.shape[:2] == tuple(sd[t].shape), (t, s, arr.shape)
            arr = arr.reshape(arr.shape[:2])
        new[t] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        layer, role = t.rpartition(".")[0], t.rpartition(".")[2]
        li = ckpt.layers.get(ckpt[s].info.layer)
        if role == "weight" and isinstance(modules[layer], torch.nn.BatchNorm2d) and li and "eps" in li.attrs:
            modules[layer].eps = li.attrs["eps"]
    model.load_state_dict(new, strict=False)
    model.eval()


# ---- a DPN written as its MXNet authors did (symbol API, BN-ReLU-Conv units, names with '__') --

def _bn_ac_conv(mx, x, num_filter, kernel, name, pad=(0, 0), stride=(1, 1), num_group=1):
    # fix_gamma=False, eps left at the SYMBOL default 1e-3 (what the DPN ports to torch rely on)
    bn = mx.sym.BatchNorm(x, fix_gamma=False, momentum=0.9, name=f"{name}__bn")
    return mx.sym.Convolution(mx.sym.Activation(bn, act_type="relu", name=f"{name}__relu"), num_filter=num_filter,
                              kernel=kernel, pad=pad, stride=stride, num_group=num_group, no_bias=True,
                              name=f"{name}__conv")


def _dpn_unit(mx, data, a, b, c, inc, groups, name, proj):
    x = data if not isinstance(data, list) else mx.sym.Concat(*data, dim=1, name=f"{name}_cat")
    if proj:
        w = _bn_ac_conv(mx, x, c + 2 * inc, (1, 1), f"{name}_c1x1_w(s/1)")
        res, dense = (mx.sym.slice_axis(w, axis=1, begin=0, end=c),
                      mx.sym.slice_axis(w, axis=1, begin=c, end=c + 2 * inc))
    else:
        res, dense = data
    y = _bn_ac_conv(mx, x, a, (1, 1), f"{name}_c1x1_a")
    y = _bn_ac_conv(mx, y, b, (3, 3), f"{name}_c3x3_b", pad=(1, 1), num_group=groups)
    y = _bn_ac_conv(mx, y, c + inc, (1, 1), f"{name}_c1x1_c")
    summ = mx.sym.ElementWiseSum(res, mx.sym.slice_axis(y, axis=1, begin=0, end=c), name=f"{name}_sum")
    dense = mx.sym.Concat(dense, mx.sym.slice_axis(y, axis=1, begin=c, end=c + inc), dim=1, name=f"{name}_cat2")
    return [summ, dense]


def dpn_symbol(mx):
    x = mx.sym.Convolution(mx.sym.var("data"), num_filter=16, kernel=(3, 3), pad=(1, 1), no_bias=True,
                           name="conv1_x__conv")
    x = mx.sym.Activation(mx.sym.BatchNorm(x, fix_gamma=False, name="conv1_x__bn"), act_type="relu")
    x = _dpn_unit(mx, x, 8, 8, 16, 4, 4, "conv2_1", proj=True)
    x = _dpn_unit(mx, x, 8, 8, 16, 4, 4, "conv2_2", proj=False)
    x = mx.sym.BatchNorm(mx.sym.Concat(*x, dim=1), fix_gamma=False, name="conv5_x_x__relu-sp__bn")
    x = mx.sym.Pooling(mx.sym.Activation(x, act_type="relu"), global_pool=True, pool_type="avg", kernel=(1, 1))
    x = mx.sym.Convolution(x, num_filter=5, kernel=(1, 1), name="fc6")         # the classifier is a 1x1 conv
    return mx.sym.SoftmaxOutput(mx.sym.flatten(x), name="softmax")


def torch_dpn(torch):
    nn = torch.nn

    class BnAcConv(nn.Module):
        def __init__(self, cin, cout, k, pad=0, groups=1):
            super().__init__()
            self.bn = nn.BatchNorm2d(cin)
            self.conv = nn.Conv2d(cin, cout, k, padding=pad, groups=groups, bias=False)

        def forward(self, x):
            return self.conv(torch.relu(self.bn(x)))

    class Unit(nn.Module):
        def __init__(self, cin, a, b, c, inc, groups, proj):
            super().__init__()
            self.c, self.inc = c, inc
            if proj:
                self.w = BnAcConv(cin, c + 2 * inc, 1)
            self.a = BnAcConv(cin, a, 1)
            self.b = BnAcConv(a, b, 3, 1, groups)
            self.cc = BnAcConv(b, c + inc, 1)

        def forward(self, data):
            x = data if not isinstance(data, tuple) else torch.cat(data, 1)
            if hasattr(self, "w"):
                w = self.w(x)
                res, dense = w[:, : self.c], w[:, self.c:]
            else:
                res, dense = data
            y = self.cc(self.b(self.a(x)))
            return res + y[:, : self.c], torch.cat([dense, y[:, self.c:]], 1)

    class DPN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.u1 = Unit(16, 8, 8, 16, 4, 4, True)
            self.u2 = Unit(28, 8, 8, 16, 4, 4, False)
            self.bn_last = nn.BatchNorm2d(32)
            self.fc6 = nn.Conv2d(32, 5, 1)

        def forward(self, x):
            x = self.u2(self.u1(torch.relu(self.bn1(self.conv1(x)))))
            x = torch.relu(self.bn_last(torch.cat(x, 1))).mean(dim=(2, 3), keepdim=True)
            return torch.softmax(self.fc6(x).flatten(1), dim=1)

    return DPN()
