"""A small YOLOv5-style detector, written once for torch and OneFlow (both spell nn the same way).

SOURCE is Python text that expects `fw` (the framework module) in scope: the torch side writes it
to a throw-away module (`import torch as fw` + SOURCE) so torch.save pickles the class by a name
hubfmt's reader cannot import, and the OneFlow side runs it in the Python 3.10 environment with
`import oneflow as fw`. Same structure, same parameter names.
"""
from __future__ import annotations

import importlib
import sys
import uuid

SOURCE = '''
nn = fw.nn


class Conv(nn.Module):
    """Conv + BN + SiLU, with YOLOv5's BatchNorm settings."""

    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=0.001, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True):
        super().__init__()
        self.cv1 = Conv(c1, c2, 1, 1)
        self.cv2 = Conv(c2, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=True):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1, 1)
        self.m = nn.Sequential(*[Bottleneck(c_, c_, shortcut) for _ in range(n)])

    def forward(self, x):
        return self.cv3(fw.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class Detect(nn.Module):
    def __init__(self, nc, ch, na=3):
        super().__init__()
        self.no, self.na = nc + 5, na
        self.m = nn.ModuleList([nn.Conv2d(c, self.no * na, 1) for c in ch])
        self.register_buffer("anchors", fw.tensor([[10.0, 13, 16, 30, 33, 23], [30.0, 61, 62, 45, 59, 119]]).view(2, 3, 2))

    def forward(self, xs):
        out = []
        for i, x in enumerate(xs):
            y = self.m[i](x)
            bs, _, ny, nx = y.shape
            y = y.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
            out.append(y.reshape(bs, -1, self.no) * self.anchors[i].mean())
        return fw.cat(out, 1)


class Model(nn.Module):
    def __init__(self, nc=4):
        super().__init__()
        self.model = nn.ModuleList([
            Conv(3, 8, 3, 2), Conv(8, 16, 3, 2), C3(16, 16, 1), Conv(16, 32, 3, 2), C3(32, 32, 1),
            Conv(32, 16, 1, 1), nn.Upsample(scale_factor=2.0, mode="nearest"), C3(32, 16, 1, shortcut=False),
            Detect(nc, (16, 32)),
        ])
        self.names = [f"class{i}" for i in range(nc)]
        self.yaml = {"nc": nc, "depth_multiple": 0.33, "width_multiple": 0.25}
        self.stride = fw.tensor([4.0, 8.0])

    def forward(self, x):
        m = self.model
        p3 = m[2](m[1](m[0](x)))
        p4 = m[4](m[3](p3))
        up = m[6](m[5](p4))
        return m[8]([m[7](fw.cat([up, p3], 1)), p4])


def perturb(model, seed=0):
    """Move every parameter off its initial value and give BatchNorm real running statistics."""
    fw.manual_seed(seed)
    with fw.no_grad():
        for p in model.parameters():
            p.add_(fw.randn(*p.shape) * 0.1)
    model.train()
    for _ in range(3):
        model(fw.randn(2, 3, 32, 32))
    return model.eval()
'''

NAMES = [f"class{i}" for i in range(4)]


def torch_module(tmp_path):
    """Import SOURCE for torch as a module living only in `tmp_path` (drop it with forget())."""
    name = f"hubfmt_yolo_twin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import torch as fw\n" + SOURCE)
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


def assert_lively(out) -> None:
    """Outputs worth comparing: a saturated detector (all sigmoids at 0) would match anything."""
    import numpy as np

    out = np.asarray(out)
    assert np.std(out) > 0.1 and np.percentile(np.abs(out), 1) > 1e-3, "degenerate test model outputs"


def forget(module) -> None:
    sys.modules.pop(module.__name__, None)


def oneflow_prelude() -> str:
    """Side-env script text defining the OneFlow twin (Model, Conv, ...) at top level."""
    return "import oneflow as fw\n" + SOURCE
