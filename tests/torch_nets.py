"""Pairs of independently written torch implementations of one network, with different module
names and registration orders, for the alignment scenario tests; and the bridge between a torch
model and a canonical Checkpoint (the torch adapter's from_model/to_model when it is installed)."""
from __future__ import annotations

import numpy as np

from hubfmt import Checkpoint, LazyTensor, TensorInfo

from conftest import require

torch = require("torch")
nn = torch.nn
F = nn.functional

_KINDS = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d",
          nn.BatchNorm1d: "batch_norm", nn.BatchNorm2d: "batch_norm", nn.LayerNorm: "layer_norm",
          nn.Embedding: "embedding", nn.LSTM: "lstm", nn.GRU: "gru"}


def _adapter():
    try:
        from hubfmt.adapters import torch as adapter
    except ImportError:
        return None
    return adapter if hasattr(adapter, "from_model") else None


def checkpoint_of(model) -> Checkpoint:
    """A canonical Checkpoint of `model`'s parameters and buffers (adapter from_model if present)."""
    adapter = _adapter()
    if adapter is not None:
        return adapter.from_model(model)
    ckpt = Checkpoint()
    kinds = {}
    for path, mod in model.named_modules():
        kind = _KINDS.get(type(mod), "tensor")
        if isinstance(mod, nn.Conv2d) and mod.groups == mod.in_channels == mod.out_channels and mod.groups > 1:
            kind = "depthwise_conv2d"
        kinds[path] = kind
    for name, t in model.state_dict().items():
        layer = name.rpartition(".")[0]
        ckpt.add(name, LazyTensor.from_array(t.detach().cpu().numpy().copy()), TensorInfo(kind=kinds.get(layer, "tensor")))
    return ckpt


def load_into(model, ckpt: Checkpoint) -> None:
    """Load `ckpt` into `model`, strictly (adapter to_model if present)."""
    adapter = _adapter()
    if adapter is not None:
        adapter.to_model(ckpt, model, strict=True)
        return
    state = {n: torch.from_numpy(ckpt.tensor(n)) for n in ckpt}
    model.load_state_dict(state, strict=True)


def randomize(model, seed: int = 0):
    """Non-trivial weights AND batch-norm statistics (fresh BN stats would hide a wrong mapping)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                v = torch.randn(t.shape, generator=g) * 0.5
                if name.endswith("running_var"):
                    v = v.abs() + 0.5
                t.copy_(v)
    return model.eval()


# --- EfficientNet-style: efficientnet-pytorch names vs a port with other names and order ------

class MBConvA(nn.Module):
    def __init__(self, c, co):
        super().__init__()
        r = max(1, c // 4)
        self._depthwise_conv = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self._bn1 = nn.BatchNorm2d(c, eps=1e-3)
        self._se_reduce = nn.Conv2d(c, r, 1)
        self._se_expand = nn.Conv2d(r, c, 1)
        self._project_conv = nn.Conv2d(c, co, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(co, eps=1e-3)

    def forward(self, x):
        x = F.silu(self._bn1(self._depthwise_conv(x)))
        s = torch.sigmoid(self._se_expand(F.silu(self._se_reduce(x.mean((2, 3), keepdim=True)))))
        return self._bn2(self._project_conv(x * s))


class EfficientNetA(nn.Module):
    def __init__(self, widths=((8, 8), (8, 8), (8, 16), (16, 16)), classes=10):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, widths[0][0], 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(widths[0][0], eps=1e-3)
        self._blocks = nn.ModuleList(MBConvA(c, co) for c, co in widths)
        self._conv_head = nn.Conv2d(widths[-1][1], 32, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(32, eps=1e-3)
        self._fc = nn.Linear(32, classes)

    def forward(self, x):
        x = F.silu(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = F.silu(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        r = max(1, c // 4)
        self.conv_reduce = nn.Conv2d(c, r, 1)
        self.conv_expand = nn.Conv2d(r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True)))))


class MBConvB(nn.Module):
    # Registers the projection first: its parameters come before the depthwise conv's.
    def __init__(self, c, co):
        super().__init__()
        self.conv_pwl = nn.Conv2d(c, co, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(co, eps=1e-3)
        self.conv_dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn1 = nn.BatchNorm2d(c, eps=1e-3)
        self.se = SqueezeExcite(c)

    def forward(self, x):
        x = F.silu(self.bn1(self.conv_dw(x)))
        return self.bn2(self.conv_pwl(self.se(x)))


class EfficientNetB(nn.Module):
    def __init__(self, widths=((8, 8), (8, 8), (8, 16), (16, 16)), classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0][0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0][0], eps=1e-3), nn.SiLU())
        self.blocks = nn.Sequential(*(MBConvB(c, co) for c, co in widths))
        self.head = nn.Sequential(nn.Conv2d(widths[-1][1], 32, 1, bias=False), nn.BatchNorm2d(32, eps=1e-3), nn.SiLU())
        self.classifier = nn.Linear(32, classes)

    def forward(self, x):
        return self.classifier(self.head(self.blocks(self.stem(x))).mean((2, 3)))


# --- DPN-style: a 1x1 conv classifier vs a Linear one -------------------------------------------

class ConvClassifierNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1_x_1__conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.conv1_x_1__bn = nn.BatchNorm2d(16)
        self.conv2_x__1_c1x1_w = nn.Conv2d(16, 24, 1, bias=False)
        self.conv2_x__1_bn = nn.BatchNorm2d(24)
        self.fc6 = nn.Conv2d(24, classes, 1)

    def forward(self, x):
        x = F.relu(self.conv1_x_1__bn(self.conv1_x_1__conv(x)))
        x = F.relu(self.conv2_x__1_bn(self.conv2_x__1_c1x1_w(x)))
        return self.fc6(F.adaptive_avg_pool2d(x, 1)).flatten(1)


class DenseClassifierNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.classifier = nn.Linear(24, classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


# --- ResNet-style: torchvision order vs a port registering the shortcut first ----------------

class BasicBlockA(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.conv_a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = F.relu(self.bn_a(self.conv_a(x)))
        return F.relu(self.bn_b(self.conv_b(y)) + self.shortcut(x))


class ResNetA(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem_conv = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.stage1 = nn.Sequential(BasicBlockA(8, 8, 1), BasicBlockA(8, 8, 1))
        self.stage2 = nn.Sequential(BasicBlockA(8, 16, 2), BasicBlockA(16, 16, 1))
        self.logits = nn.Linear(16, classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        return self.logits(self.stage2(self.stage1(x)).mean((2, 3)))


class BasicBlockB(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNetB(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlockB(8, 8, 1), BasicBlockB(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlockB(8, 16, 2), BasicBlockB(16, 16, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.fc(self.layer2(self.layer1(x)).mean((2, 3)))


# --- LSTM: one Linear per gate vs torch's fused nn.LSTM ---------------------------------------

class GateLSTM(nn.Module):
    """An LSTM written out gate by gate: i, f, g, o each with its own input and hidden Linear."""

    def __init__(self, n_in, h):
        super().__init__()
        self.h = h
        for gate in "ifgo":
            setattr(self, f"{gate}_x", nn.Linear(n_in, h))
            setattr(self, f"{gate}_h", nn.Linear(h, h))

    def forward(self, x):   # x: [T, N, n_in] -> [T, N, h]
        h = x.new_zeros(x.shape[1], self.h)
        c = torch.zeros_like(h)
        out = []
        for xt in x:
            z = {g: getattr(self, f"{g}_x")(xt) + getattr(self, f"{g}_h")(h) for g in "ifgo"}
            c = torch.sigmoid(z["f"]) * c + torch.sigmoid(z["i"]) * torch.tanh(z["g"])
            h = torch.sigmoid(z["o"]) * torch.tanh(c)
            out.append(h)
        return torch.stack(out)


class TorchLSTM(nn.Module):
    def __init__(self, n_in, h):
        super().__init__()
        self.rnn = nn.LSTM(n_in, h)

    def forward(self, x):
        return self.rnn(x)[0]


# --- Attention: torch's fused nn.MultiheadAttention vs separate q/k/v projections -------------

class FusedAttention(nn.Module):
    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.attn(x, x, x, need_weights=False)[0])


class SplitAttention(nn.Module):
    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(dim)         # registered first
        self.mha = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self.mha, name, nn.Linear(dim, dim))

    def forward(self, x):
        n, t, d = x.shape
        h = self.heads

        def split(y):
            return y.view(n, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.mha.q_proj(x)), split(self.mha.k_proj(x)), split(self.mha.v_proj(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1) @ v
        return self.ln(x + self.mha.o_proj(a.transpose(1, 2).reshape(n, t, d)))


def as_numpy(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()
