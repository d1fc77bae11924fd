"""A small EfficientNet written twice, in PyTorch and in MindSpore, for the MindSpore oracle tests.

Same architecture and the same layer order, different names (as two independent implementations
would have): torch `_blocks.1._depthwise_conv` vs MindSpore `blocks.1.dw_conv`. Stem conv + BN,
three MBConv blocks (expand 1x1, depthwise kxk, squeeze-excite, project 1x1, skip when shapes
allow), swish, head conv + BN, global average pooling, Dense. BatchNorm uses EfficientNet's eps=1e-3
and momentum 0.01 (torch convention; MindSpore's argument is 0.99).

Frameworks are imported inside the builders, so importing this module needs neither.
"""
from __future__ import annotations

import numpy as np

# (expand ratio, kernel, stride, in channels, out channels, squeeze-excite channels)
BLOCKS = ((1, 3, 1, 8, 8, 2), (4, 5, 2, 8, 12, 2), (4, 3, 1, 12, 12, 3))
STEM, HEAD, CLASSES = 8, 32, 10
EPS = 1e-3


def torch_effnet(seed: int = 0):
    import torch
    from torch import nn

    def swish(x):
        return x * torch.sigmoid(x)

    class MBConv(nn.Module):
        def __init__(self, expand, k, stride, cin, cout, se):
            super().__init__()
            mid = cin * expand
            self.expand = expand
            if expand != 1:
                self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
                self._bn0 = nn.BatchNorm2d(mid, eps=EPS, momentum=0.01)
            self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False)
            self._bn1 = nn.BatchNorm2d(mid, eps=EPS, momentum=0.01)
            self._se_reduce = nn.Conv2d(mid, se, 1)
            self._se_expand = nn.Conv2d(se, mid, 1)
            self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
            self._bn2 = nn.BatchNorm2d(cout, eps=EPS, momentum=0.01)
            self.skip = stride == 1 and cin == cout

        def forward(self, x):
            h = swish(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
            h = swish(self._bn1(self._depthwise_conv(h)))
            s = torch.sigmoid(self._se_expand(swish(self._se_reduce(h.mean((2, 3), keepdim=True)))))
            h = self._bn2(self._project_conv(h * s))
            return h + x if self.skip else h

    class EffNet(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem = nn.Conv2d(3, STEM, 3, 2, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(STEM, eps=EPS, momentum=0.01)
            self._blocks = nn.ModuleList([MBConv(*b) for b in BLOCKS])
            self._conv_head = nn.Conv2d(BLOCKS[-1][4], HEAD, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(HEAD, eps=EPS, momentum=0.01)
            self._fc = nn.Linear(HEAD, CLASSES)

        def forward(self, x):
            x = swish(self._bn0(self._conv_stem(x)))
            for b in self._blocks:
                x = b(x)
            x = swish(self._bn1(self._conv_head(x)))
            return self._fc(x.mean((2, 3)))

    torch.manual_seed(seed)
    net = EffNet()
    rng = np.random.RandomState(seed)
    with torch.no_grad():   # trained-looking statistics, so swapped mean/var or gamma/beta would show
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, m.num_features).astype(np.float32)))
                m.bias.copy_(torch.from_numpy(rng.normal(0, 0.2, m.num_features).astype(np.float32)))
                m.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.3, m.num_features).astype(np.float32)))
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, m.num_features).astype(np.float32)))
                m.num_batches_tracked.fill_(1234)
    return net.eval()


def mindspore_effnet(seed: int = 0):
    import mindspore as ms
    from mindspore import nn, ops

    def swish(x):
        return x * ops.sigmoid(x)

    def conv(cin, cout, k, stride=1, group=1, bias=False):
        return nn.Conv2d(cin, cout, k, stride, pad_mode="pad", padding=k // 2, group=group, has_bias=bias)

    def bn(c):
        return nn.BatchNorm2d(c, eps=EPS, momentum=0.99)

    class MBConv(nn.Cell):
        def __init__(self, expand, k, stride, cin, cout, se):
            super().__init__()
            mid = cin * expand
            self.expand = expand
            if expand != 1:
                self.expand_conv = conv(cin, mid, 1)
                self.bn0 = bn(mid)
            self.dw_conv = conv(mid, mid, k, stride, group=mid)
            self.bn1 = bn(mid)
            self.se_reduce = conv(mid, se, 1, bias=True)
            self.se_expand = conv(se, mid, 1, bias=True)
            self.project_conv = conv(mid, cout, 1)
            self.bn2 = bn(cout)
            self.skip = stride == 1 and cin == cout

        def construct(self, x):
            h = swish(self.bn0(self.expand_conv(x))) if self.expand != 1 else x
            h = swish(self.bn1(self.dw_conv(h)))
            s = ops.sigmoid(self.se_expand(swish(self.se_reduce(ops.mean(h, (2, 3), keep_dims=True)))))
            h = self.bn2(self.project_conv(h * s))
            return h + x if self.skip else h

    class EffNet(nn.Cell):
        def __init__(self):
            super().__init__()
            self.stem_conv = conv(3, STEM, 3, 2)
            self.stem_bn = bn(STEM)
            self.blocks = nn.SequentialCell([MBConv(*b) for b in BLOCKS])
            self.head_conv = conv(BLOCKS[-1][4], HEAD, 1)
            self.head_bn = bn(HEAD)
            self.classifier = nn.Dense(HEAD, CLASSES)

        def construct(self, x):
            x = swish(self.stem_bn(self.stem_conv(x)))
            x = self.blocks(x)
            x = swish(self.head_bn(self.head_conv(x)))
            return self.classifier(ops.mean(x, (2, 3)))

    net = EffNet()
    rng = np.random.RandomState(seed + 1)
    for name, p in net.parameters_dict().items():   # random everything, statistics included
        role = name.rpartition(".")[2]
        if role == "moving_variance" or role == "gamma":
            v = rng.uniform(0.5, 1.5, p.shape)
        else:
            v = rng.normal(0, 0.3, p.shape)
        p.set_data(ms.Tensor(v.astype(np.float32)))
    net.set_train(False)
    return net


def input_batch(seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)


def torch_checkpoint(model):
    """A canonical Checkpoint from a torch model's state_dict(), with layer kinds (what the torch
    adapter produces; built here so these tests do not depend on it)."""
    from torch import nn

    from hubfmt.format import dtypes
    from hubfmt.format.checkpoint import Checkpoint, LayerInfo, TensorInfo
    from hubfmt.format.tensor import LazyTensor

    kinds = {}
    for path, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            kinds[path] = ("batch_norm", {"eps": m.eps, "momentum": m.momentum})
        elif isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            kinds[path] = ("depthwise_conv2d" if depthwise else "conv2d", {"groups": m.groups})
        elif isinstance(m, nn.Linear):
            kinds[path] = ("linear", {})
    ckpt = Checkpoint()
    for name, v in model.state_dict().items():
        layer = name.rpartition(".")[0]
        arr = v.detach().numpy()
        # LazyTensor.from_array would make the 0-d num_batches_tracked [1]
        ckpt.add(name, LazyTensor(arr.shape, dtypes.name_of(arr.dtype), lambda a=arr: a), TensorInfo(kind=kinds[layer][0]))
    for layer, (kind, attrs) in kinds.items():
        ckpt.layers[layer] = LayerInfo(kind, dict(attrs))
    ckpt.source.framework = "torch"
    return ckpt


def layer_order(ckpt) -> list[str]:
    """Layer paths in the order their first tensor appears."""
    return list(dict.fromkeys(e.info.layer for e in ckpt.entries.values()))


def rename_layers(ckpt, mapping: dict[str, str]):
    """The explicit rename the alignment engine will automate: module path -> module path."""
    import dataclasses

    from hubfmt.format.checkpoint import Checkpoint

    out = Checkpoint(source=ckpt.source, extra=dict(ckpt.extra))
    for e in ckpt.entries.values():
        layer = mapping[e.info.layer]
        out.add(f"{layer}.{e.info.role}", e.tensor, dataclasses.replace(e.info, layer=layer))
    out.layers = {mapping.get(k, k): v for k, v in ckpt.layers.items()}
    return out
