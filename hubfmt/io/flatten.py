"""The input-row order of a Dense layer that follows a Flatten (spec section 3.3).

A channels-last model (Keras, TensorFlow) flattens a feature map [H, W, C] in H,W,C order; a
channels-first one (torch, MXNet, MindSpore, OneFlow) flattens [C, H, W] in C,H,W order. The first
Dense after the Flatten sees the same numbers in another order, so its weight's input rows must be
permuted, not transposed: no tensor layout says so. The canonical order is channels-first; a layer
whose rows were permuted records `flatten` ([C, H, W]) and `flatten_source` (the source's order)
in its layer attributes.

When the spatial shape cannot be known (a bare weights file, a TF checkpoint, a bare state dict),
a linear layer whose inputs look like a flattened conv output (in_features = C*H*W, H*W > 1) is
undecided: the conversion stops and says how to decide (`flatten=HxW`, `flatten=as-is`, or a
rules-file op `permute = "flatten:HWC->CHW:HxW"`, see `rule_op`).

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
_PENDING = "flatten_undecided"  # with UNDECIDED, in memory only: what the refusal says
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


def mark_undecided(ckpt: Checkpoint, layers: list[tuple[str, int, int]], why: str, flag: str,
                   config_hint: str = "") -> None:
    """Record that these linear layers' row order is not known (reported as a warning); writing
    the checkpoint anywhere is then refused by check_decided with `why` and `flag`'s options."""
    for layer, c, n in layers:
        li = ckpt.layers.get(layer)
        if li is None:
            continue
        li.attrs[ATTR_SOURCE] = UNDECIDED
        li.attrs[_PENDING] = {"channels": c, "in_features": n, "why": why, "flag": flag, "config": config_hint}
        ckpt.report.add("warning", layer, str(undecided([(layer, c, n)], why, flag, config_hint)))


def permute_to_canonical(ckpt: Checkpoint, module: str, hwc: tuple[int, int, int], why: str) -> None:
    """Permute a linear layer's input rows from a channels-last flatten of an [H, W, C] map to the
    canonical C,H,W order (lazy), record it in the layer's attributes and report it."""
    name = f"{module}.weight"
    e = ckpt.entries[name]
    h, w, c = hwc
    e.tensor = hwc_to_chw(e.tensor, hwc, name)
    li = ckpt.layers[module]
    li.attrs.pop(_PENDING, None)
    li.attrs[ATTR] = [c, h, w]
    li.attrs[ATTR_SOURCE] = "HWC"
    ckpt.report.add("permuted", name, f"input rows HWC->CHW ({h}x{w}x{c} map, {why})")


def decide_read(ckpt: Checkpoint, option, why: str, flag: str = "-R", config_hint: str = "") -> None:
    """What a channels-last reader that cannot see the map's shape does with the linear layers that
    look fed by a flattened conv map: `option` HxW permutes them, as-is keeps them (reported),
    none marks them undecided (every write then refuses, saying `why`)."""
    suspects = conv_fed_linears(ckpt)
    if not suspects:
        return
    decided = parse(option)
    if decided is None:
        mark_undecided(ckpt, suspects, why, flag, config_hint)
        return
    for module, c, n in suspects:
        if decided == AS_IS:
            ckpt.layers[module].attrs[ATTR_SOURCE] = AS_IS
            ckpt.report.add("warning", module, "input rows kept in their order (flatten=as-is)")
            continue
        assert isinstance(decided, tuple)
        c, _ = shape_from_option(decided, n, module, "flatten")
        permute_to_canonical(ckpt, module, (decided[0], decided[1], c), "flatten=" + "x".join(map(str, decided)))


def channels_last_rows(ckpt: Checkpoint, option, why: str, report, flag: str = "-W",
                       layers=None) -> dict[str, tuple[int, int, int]]:
    """Linear layers (of `layers`, default all) whose canonical C,H,W rows a channels-last writer
    that cannot see the map's shape must write in H,W,C order -> (C, H, W): those whose record
    says so (attribute `flatten`), else those that look fed by a flattened conv map, decided by
    `option` (HxW, or as-is: kept, reported); undecided ones are an error saying `why`."""
    decided = parse(option)
    out: dict[str, tuple[int, int, int]] = {}
    kept = set()
    for path, li in ckpt.layers.items():
        if li.kind != "linear" or (layers is not None and path not in layers):
            continue
        if li.attrs.get(ATTR_SOURCE) == AS_IS:
            kept.add(path)
            report.add("warning", path, "input rows kept in their order (flatten=as-is when read)")
            continue
        rec = li.attrs.get(ATTR)
        if isinstance(rec, list) and len(rec) == 3:
            out[path] = (int(rec[0]), int(rec[1]), int(rec[2]))
    suspects = [s for s in conv_fed_linears(ckpt)
                if s[0] not in out and s[0] not in kept and (layers is None or s[0] in layers)]
    if suspects and decided is None:
        raise undecided(suspects, why, flag)
    for module, c, n in suspects:
        if decided == AS_IS:
            report.add("warning", module, "input rows kept in their order (flatten=as-is)")
            continue
        assert isinstance(decided, tuple)
        c, _ = shape_from_option(decided, n, module, "flatten")
        out[module] = (c, decided[0], decided[1])
    return out


RULE_OP = re.compile(r"flatten:(?:(HWC|CHW)->(HWC|CHW):(\d+)\s*x\s*(\d+)|(as-is))", re.I)


def rule_op(spec: str, where: str = "permute") -> tuple[str, tuple[int, int] | None]:
    """A rules-file `permute` value: ("HWC", (H, W)) for "flatten:HWC->CHW:HxW" (the source's rows are a
    channels-last flatten: permute them to the canonical order), ("CHW", (H, W)) for
    "flatten:CHW->HWC:HxW" (the rows are channels-first already; a channels-last destination
    permutes them), ("as-is", None) for "flatten:as-is".

    >>> rule_op("flatten:HWC->CHW:7x7"), rule_op("flatten:as-is")
    (('HWC', (7, 7)), ('as-is', None))
    """
    m = RULE_OP.fullmatch(str(spec).strip())
    if not m or (m.group(1) and m.group(1).upper() == m.group(2).upper()) or (m.group(3) and not (
            int(m.group(3)) and int(m.group(4)))):
        raise ConversionError(f"{where}: {spec!r} is not a flatten order: give \"flatten:HWC->CHW:HxW\" (rows of a "
                              "channels-last source), \"flatten:CHW->HWC:HxW\" (rows of a channels-first source, for a "
                              "channels-last destination) or \"flatten:as-is\"")
    if m.group(5):
        return AS_IS, None
    return m.group(1).upper(), (int(m.group(3)), int(m.group(4)))


def decide_by_rule(w: LazyTensor, attrs: dict, op: tuple[str, tuple[int, int] | None], name: str) -> tuple[LazyTensor, dict, str]:
    """A linear weight and its layer's attributes after a rules-file flatten op (rule_op): (weight,
    new attrs, what was done). Canonical rows either way: "HWC" permutes them to C,H,W; "CHW"
    records the map so that a channels-last writer permutes them; as-is records the user's word."""
    order, hw = op
    attrs = {k: v for k, v in attrs.items() if k not in (ATTR, ATTR_SOURCE, _PENDING)}
    if order == AS_IS:
        return w, {**attrs, ATTR_SOURCE: AS_IS}, "input rows kept in their order (flatten:as-is)"
    assert hw is not None
    h, wd = hw
    if len(w.shape) != 2:
        raise ConversionError(f"{name}: a flatten op applies to a linear weight [out, C*H*W], not {list(w.shape)}")
    c, _ = shape_from_option(hw, int(w.shape[1]), name, "flatten")
    if order == "HWC":
        return (hwc_to_chw(w, (h, wd, c), name), {**attrs, ATTR: [c, h, wd], ATTR_SOURCE: "HWC"},
                f"input rows HWC->CHW ({h}x{wd}x{c} map, rules-file flatten op)")
    return w, {**attrs, ATTR: [c, h, wd], ATTR_SOURCE: "CHW"}, (
        f"input rows are C,H,W of a {c}x{h}x{wd} map (rules-file flatten op): a channels-last writer permutes them")


def check_decided(ckpt: Checkpoint) -> None:
    """Refuse a checkpoint whose reader could not tell a Dense's row order (mark_undecided)."""
    found = [(path, li.attrs[_PENDING]) for path, li in ckpt.layers.items()
             if li.attrs.get(ATTR_SOURCE) == UNDECIDED and isinstance(li.attrs.get(_PENDING), dict)]
    if found:
        d = found[0][1]
        raise undecided([(p, int(x["channels"]), int(x["in_features"])) for p, x in found], str(d["why"]),
                        str(d["flag"]), str(d.get("config", "")))


def undecided(layers: list[tuple[str, int, int]], why: str, flag: str, config_hint: str = "") -> ConversionError:
    """The error for linear layers whose row order cannot be known: why, and how to decide
    (`flag` -R: a channels-last source's rows; -W: a channels-last destination's)."""
    layer, c, n = layers[0]
    more = f" (and {len(layers) - 1} more)" if len(layers) > 1 else ""
    hw = n // c
    side_hint = int(round(hw ** 0.5))
    example = f"{side_hint}x{side_hint}" if side_hint * side_hint == hw else "HxW"
    op = "HWC->CHW" if flag == "-R" else "CHW->HWC"
    return ConversionError(
        f"{layer}{more}: a linear layer with {n} inputs after a conv layer of {c} channels looks like a Dense after "
        f"a Flatten of a {c}-channel map of {hw} positions; {why}, so the order of its input rows (H,W,C for Keras/"
        f"TensorFlow, C,H,W for torch/MXNet/MindSpore/OneFlow) cannot be known and a wrong guess converts "
        f"silently wrong. Decide: {flag} flatten={example} (the feature map's height and width) permutes the rows; "
        f"{flag} flatten=as-is keeps them as they are (the layer is not fed by a Flatten, or the model permutes "
        f"before flattening); or a rules file (--rules) with a rule for {layer}.weight that says "
        f"permute = \"flatten:{op}:{example}\"" + (f"; {config_hint}" if config_hint else ""))


__all__ = ["CANONICAL", "AS_IS", "ATTR", "ATTR_SOURCE", "parse", "hwc_to_chw", "chw_to_hwc", "conv_fed_linears",
           "shape_from_option", "undecided", "mark_undecided", "check_decided", "UNDECIDED", "permute_to_canonical",
           "decide_read", "channels_last_rows", "rule_op", "decide_by_rule"]
