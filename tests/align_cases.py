"""In-memory checkpoint pairs for the alignment tests: two implementations of one network that name
and order their modules differently. Each builder returns (source, template, expected) where
`expected` maps every source tensor name to the template name it must land on."""
from __future__ import annotations

import numpy as np

from hubfmt import Checkpoint, LazyTensor, TensorInfo

BN = ("weight", "bias", "running_mean", "running_var")


class Builder:
    def __init__(self, seed: int):
        self.ckpt = Checkpoint()
        self.rng = np.random.default_rng(seed)

    def tensor(self, name: str, shape, kind: str) -> None:
        arr = self.rng.standard_normal(shape).astype(np.float32)
        self.ckpt.add(name, LazyTensor.from_array(arr), TensorInfo(kind=kind))

    def conv(self, path: str, shape, kind: str = "conv2d", bias: bool = False) -> None:
        self.tensor(f"{path}.weight", shape, kind)
        if bias:
            self.tensor(f"{path}.bias", shape[:1], kind)

    def bn(self, path: str, c: int, tracked: bool = False) -> None:
        for role in BN:
            self.tensor(f"{path}.{role}", (c,), "batch_norm")
        if tracked:
            self.ckpt.add(f"{path}.num_batches_tracked", LazyTensor.from_array(np.array(5, dtype=np.int64)),
                          TensorInfo(kind="batch_norm"))


def efficientnet_pair(widths=((8, 8), (8, 8), (8, 16), (16, 16)), target_widths=None, classes: int = 10):
    """efficientnet-pytorch names (`_blocks.0._bn1`) vs a MindSpore-style port (`0.dw_bn`) that
    registers each block's projection before its squeeze-excite and has no num_batches_tracked."""
    target_widths = target_widths or widths
    src, dst, expected = Builder(0), Builder(1), {}

    def both(s: str, t: str, roles) -> None:
        for r in roles:
            expected[f"{s}.{r}"] = f"{t}.{r}"

    c0 = widths[0][0]
    src.conv("_conv_stem", (c0, 3, 3, 3))
    src.bn("_bn0", c0, tracked=True)
    dst.conv("stem.conv", (target_widths[0][0], 3, 3, 3))
    dst.bn("stem.bn", target_widths[0][0])
    both("_conv_stem", "stem.conv", ["weight"])
    both("_bn0", "stem.bn", BN)
    for i, ((cin, cout), (tin, tout)) in enumerate(zip(widths, target_widths, strict=True)):
        r, tr = max(1, cin // 4), max(1, tin // 4)
        p = f"_blocks.{i}"
        src.conv(f"{p}._depthwise_conv", (cin, 1, 3, 3), "depthwise_conv2d")
        src.bn(f"{p}._bn1", cin, tracked=True)
        src.conv(f"{p}._se_reduce", (r, cin, 1, 1), bias=True)
        src.conv(f"{p}._se_expand", (cin, r, 1, 1), bias=True)
        src.conv(f"{p}._project_conv", (cout, cin, 1, 1))
        src.bn(f"{p}._bn2", cout, tracked=True)
        q = f"{i}"
        dst.conv(f"{q}.dw", (tin, 1, 3, 3), "depthwise_conv2d")
        dst.bn(f"{q}.dw_bn", tin)
        dst.conv(f"{q}.proj", (tout, tin, 1, 1))
        dst.bn(f"{q}.proj_bn", tout)
        dst.conv(f"{q}.se.conv_reduce", (tr, tin, 1, 1), bias=True)
        dst.conv(f"{q}.se.conv_expand", (tin, tr, 1, 1), bias=True)
        both(f"{p}._depthwise_conv", f"{q}.dw", ["weight"])
        both(f"{p}._bn1", f"{q}.dw_bn", BN)
        both(f"{p}._se_reduce", f"{q}.se.conv_reduce", ["weight", "bias"])
        both(f"{p}._se_expand", f"{q}.se.conv_expand", ["weight", "bias"])
        both(f"{p}._project_conv", f"{q}.proj", ["weight"])
        both(f"{p}._bn2", f"{q}.proj_bn", BN)
    last, tlast = widths[-1][1], target_widths[-1][1]
    src.conv("_conv_head", (4 * last, last, 1, 1))
    src.bn("_bn1", 4 * last, tracked=True)
    src.conv("_fc", (classes, 4 * last), "linear", bias=True)
    dst.conv("head.conv", (4 * tlast, tlast, 1, 1))
    dst.bn("head.bn", 4 * tlast)
    dst.conv("classifier", (classes, 4 * tlast), "linear", bias=True)
    both("_conv_head", "head.conv", ["weight"])
    both("_bn1", "head.bn", BN)
    both("_fc", "classifier", ["weight", "bias"])
    return src.ckpt, dst.ckpt, expected


def dpn_pair(classes: int = 10, width: int = 16):
    """MXNet-DPN-style (a 1x1 conv `fc6` as classifier) vs a torch port with a Linear classifier."""
    src, dst = Builder(2), Builder(3)
    src.conv("conv1_x_1__conv", (width, 3, 7, 7))
    src.bn("conv1_x_1__bn", width)
    src.conv("conv2_x__1_c1x1_w", (width, width, 1, 1))
    src.conv("fc6", (classes, width, 1, 1), bias=True)
    dst.conv("features.conv1_1.conv", (width, 3, 7, 7))
    dst.bn("features.conv1_1.bn", width, tracked=True)
    dst.conv("features.conv2_1.c1x1_w_s1.conv", (width, width, 1, 1))
    dst.conv("classifier", (classes, width), "linear", bias=True)
    expected = {"conv1_x_1__conv.weight": "features.conv1_1.conv.weight",
                "conv2_x__1_c1x1_w.weight": "features.conv2_1.c1x1_w_s1.conv.weight",
                "fc6.weight": "classifier.weight", "fc6.bias": "classifier.bias"}
    expected.update({f"conv1_x_1__bn.{r}": f"features.conv1_1.bn.{r}" for r in BN})
    return src.ckpt, dst.ckpt, expected


def ambiguous_pair():
    """The source has two same-shape convs where the template has one; neither order nor names
    can say which one the template means."""
    src, dst = Builder(4), Builder(5)
    src.conv("stem", (8, 3, 3, 3))
    src.conv("a", (8, 8, 3, 3))
    src.conv("b", (8, 8, 3, 3))
    src.conv("fc", (4, 8), "linear", bias=True)
    dst.conv("stem", (8, 3, 3, 3))
    dst.conv("body", (8, 8, 3, 3))
    dst.conv("fc", (4, 8), "linear", bias=True)
    return src.ckpt, dst.ckpt
