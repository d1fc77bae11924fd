"""The input-row order of a Dense layer that follows a Flatten (spec section 3.3).

A channels-last model (Keras, TensorFlow) flattens a feature map [H, W, C] in H,W,C order; a
channels-first one (torch, MXNet, MindSpore, OneFlow) flattens [C, H, W] in C,H,W order. The first
Dense after the Flatten sees the same numbers in another order, so its weight's input rows must be
permuted, not transposed: no tensor layout says so. The canonical order is channels-first; a layer
whose rows were permuted records `flatten` ([C, H, W]) and `flatten_source` (the source's order)
in its layer attributes.

When the spatial shape cannot be known (a bare weights file, a bare state dict), a linear layer
whose inputs look like a flattened conv output (in_features = C*H*W, H*W > 1) is undecided: the
conversion stops and says how to decide (`flatten=HxW`, or `flatten=as-is`).

    >>> w = LazyTensor.from_array(np.arange(12, dtype=np.float32).reshape(1, 12))
    >>> hwc_to_chw(w, (2, 2, 3)).load().tolist()
    [[0.0, 3.0, 6.0, 9.0, 1.0, 4.0, 7.0, 10.0, 2.0, 5.0, 8.0, 11.0]]
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import ConversionError
from ..format.checkpoint import Checkpoint
from ..format.tensor import LazyTensor

CANONICAL = "CHW"
AS_IS = "as-is"
ATTR = "flatten"                # [C, H, W]: the rows are a channels-first flatten of this map
ATTR_SOURCE = "flatten_source"  # the source's order ("HWC"), "as-is" (the user's word), or "undecided"
UNDECIDED = "undecided"         # a reader could not tell: every write refuses the checkpoint (check_decided)
_CONV_KINDS = ("conv2d", "depthwise_conv2d", "separable_conv2d")


def parse(value) -> None | str | tuple[int, int]:
    """A `flatten` option's value: None (not given), "as-is", or (H, W) from "HxW".

    >>> parse("7x7"), parse("as-is"), parse(None)
    ((7, 7), 'as-is', None)
    """
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text in (AS_IS, "asis", "as_is"):
        return AS_IS
    m = re.fullmatch(r"(\d+)\s*[x,]\s*(\d+)", text)
    if not m or not int(m.group(1)) or not int(m.group(2)):
        raise ConversionError(f"flatten={value!r}: give the feature map's height and width as HxW (e.g. 7x7), "
                              "or as-is")
    return int(m.group(1)), int(m.group(2))


def _reorder(w: LazyTensor, src: tuple[int, int, int], axes: tuple[int, int, int, int]) -> LazyTensor:
    out = w.shape[0]

    def fn(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(out, *src).transpose(axes)).reshape(w.shape)

    return w.map(fn, w.shape)


def _check(w: LazyTensor, shape: tuple[int, int, int], what: str) -> None:
    if len(w.shape) != 2 or w.shape[1] != shape[0] * shape[1] * shape[2]:
        raise ConversionError(f"{what}: a linear weight of shape {list(w.shape)} is not fed by a flattened "
                              f"{'x'.join(map(str, shape))} map")


def hwc_to_chw(w: LazyTensor, hwc: tuple[int, int, int], what: str = "flatten") -> LazyTensor:
    """A linear weight [out, H*W*C] whose input rows are H,W,C-ordered -> C,H,W-ordered (lazy)."""
    _check(w, hwc, what)
    return _reorder(w, hwc, (0, 3, 1, 2))


def chw_to_hwc(w: LazyTensor, chw: tuple[int, int, int], what: str = "flatten") -> LazyTensor:
    """The inverse: a linear weight [out, C*H*W] in C,H,W row order -> H,W,C (lazy)."""
    _check(w, chw, what)
    return _reorder(w, chw, (0, 2, 3, 1))


def conv_fed_linears(ckpt: Checkpoint) -> list[tuple[str, int, int]]:
    """(layer, channels C, in_features) of each linear layer that comes first after a conv-shaped
    layer in checkpoint order and takes in_features = C*H*W inputs with H*W > 1 and C > 1: a Dense
    after a Flatten of conv features, as far as tensors alone can tell (in_features = C is a pooled
    map; with one channel H,W,C and C,H,W order are the same order, so there is nothing to decide)."""
    out = []
    channels = None
    seen = set()
    for e in ckpt.entries.values():
        info = e.info
        if info.layer in seen:
            continue
        if info.kind in _CONV_KINDS and info.role == "weight" and len(e.tensor.shape) == 4:
            channels = int(e.tensor.shape[0])
            seen.add(info.layer)
        elif info.kind == "linear" and info.role == "weight" and len(e.tensor.shape) == 2:
            seen.add(info.layer)
            n = int(e.tensor.shape[1])
            if channels and channels > 1 and n % channels == 0 and n // channels > 1:
                out.append((info.layer, channels, n))
            channels = None
    return out


def shape_from_option(hw: tuple[int, int], in_features: int, layer: str, flag: str) -> tuple[int, int]:
    """(C, H*W) for `flag` = HxW on a linear layer of `in_features` inputs, checked."""
    h, w = hw
    if in_features % (h * w):
        raise ConversionError(f"{layer}: {flag}={h}x{w} does not divide its {in_features} inputs into channels")
    return in_features // (h * w), h * w


def mark_undecided(ckpt: Checkpoint, layers: list[tuple[str, int, int]], why: str, flag: str) -> None:
    """Record that these linear layers' row order is not known (reported as a warning); writing
    the checkpoint anywhere is then refused by check_decided with `why` and `flag`'s options."""
    for layer, c, n in layers:
        li = ckpt.layers.get(layer)
        if li is None:
            continue
        li.attrs[ATTR_SOURCE] = UNDECIDED
        li.attrs["flatten_undecided"] = {"channels": c, "in_features": n, "why": why, "flag": flag}
        ckpt.report.add("warning", layer, str(undecided([(layer, c, n)], why, flag)))


def check_decided(ckpt: Checkpoint) -> None:
    """Refuse a checkpoint whose reader could not tell a Dense's row order (mark_undecided)."""
    found = [(path, li.attrs["flatten_undecided"]) for path, li in ckpt.layers.items()
             if li.attrs.get(ATTR_SOURCE) == UNDECIDED and isinstance(li.attrs.get("flatten_undecided"), dict)]
    if found:
        d = found[0][1]
        raise undecided([(p, int(x["channels"]), int(x["in_features"])) for p, x in found], str(d["why"]), str(d["flag"]))


def undecided(layers: list[tuple[str, int, int]], why: str, flag: str) -> ConversionError:
    """The error for linear layers whose row order cannot be known: why, and how to decide."""
    layer, c, n = layers[0]
    more = f" (and {len(layers) - 1} more)" if len(layers) > 1 else ""
    hw = n // c
    side_hint = int(round(hw ** 0.5))
    example = f"{side_hint}x{side_hint}" if side_hint * side_hint == hw else "HxW"
    return ConversionError(
        f"{layer}{more}: a linear layer with {n} inputs after a conv layer of {c} channels looks like a Dense after "
        f"a Flatten of a {c}-channel map of {hw} positions; {why}, so the order of its input rows (H,W,C for Keras/"
        f"TensorFlow, C,H,W for torch/MXNet/MindSpore/OneFlow) cannot be known and a wrong guess converts "
        f"silently wrong. Decide: {flag} flatten={example} (the feature map's height and width) permutes the rows; "
        f"{flag} flatten=as-is keeps them as they are (the layer is not fed by a Flatten, or the model permutes "
        f"before flattening); or give the Keras model's config (a .keras archive, as source or --template)")


__all__ = ["CANONICAL", "AS_IS", "ATTR", "ATTR_SOURCE", "parse", "hwc_to_chw", "chw_to_hwc", "conv_fed_linears",
           "shape_from_option", "undecided", "mark_undecided", "check_decided", "UNDECIDED"]
