"""torch models exported with torch.onnx.export, for the ONNX oracle tests and fuzz samples."""
from __future__ import annotations

import os
import warnings

from conftest import require

torch = require("torch")
nn = torch.nn


class CNN(nn.Module):
    """Conv + BatchNorm (one conv without bias, in a Sequential) + Linear (Gemm, transB=1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.block(x).flatten(1))


class Block(nn.Module):
    """A pre-norm transformer block over token ids: Embedding (Gather), LayerNorm, q/k/v/o and an
    MLP whose Linear layers on 3-D inputs export as MatMul + Add."""

    def __init__(self, d: int = 16, heads: int = 2, vocab: int = 50):
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, d)
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, d))

    def forward(self, ids):
        x = self.emb(ids)
        b, t, d = x.shape

        def split(z):
            return z.view(b, t, self.heads, -1).transpose(1, 2)
        y = self.ln1(x)
        att = torch.softmax(split(self.q(y)) @ split(self.k(y)).transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
        x = x + self.o((att @ split(self.v(y))).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


def perturbed(model, seed: int, scale: float = 0.1):
    """`model` with every floating parameter and buffer moved (distinct values: torch's exporter
    merges initializers of equal values, and fresh BatchNorm statistics are all equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if p.dtype.is_floating_point:
                p.add_(torch.randn(p.shape, generator=g) * scale)
                if name.endswith("running_var"):
                    p.abs_().add_(0.5)
    return model.eval()


def example_input(kind: str):
    g = torch.Generator().manual_seed(1)
    if kind == "cnn":
        return torch.randn(2, 3, 8, 8, generator=g)
    return torch.randint(0, 50, (2, 5), generator=g)


def build(kind: str):
    return perturbed(CNN() if kind == "cnn" else Block(), seed=0)


def export(model, x, path: str, *, fold: bool) -> str:
    """torch.onnx.export (the TorchScript exporter: the new one needs onnxscript). `fold`: constant
    folding, which fuses Conv+BatchNorm in eval mode and pre-transposes MatMul weights
    (`onnx::MatMul_96`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False, do_constant_folding=fold,
                          input_names=["x"], output_names=["y"])
    assert os.path.isfile(path)
    return path
