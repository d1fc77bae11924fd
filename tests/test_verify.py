"""Verification helpers: compare two models' named outputs and point to the first divergence."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from hubfmt.errors import ConversionError
from hubfmt.verification import compare_outputs, relative_difference, verify

X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)


def chain(scales, names):
    """A toy model: each named step multiplies by its scale; returns every step's output in order."""
    def run(x):
        out = OrderedDict()
        for name, s in zip(names, scales, strict=True):
            x = x * s
            out[name] = x
        return out
    return run


def test_equal_models_agree_and_names_pair_through_a_layer_map():
    a = chain([2, 3, 4], ["conv", "bn", "fc"])
    b = chain([2, 3, 4], ["features.0", "features.1", "classifier"])
    v = verify(a, b, X, pairs={"conv": "features.0", "bn": "features.1"})
    assert v.ok and v.first_divergence is None and [r.destination for r in v.rows] == ["features.0", "features.1", "classifier"]
    assert "agree within" in v.to_text()
    v.check()


def test_first_divergence_is_the_earliest_differing_layer():
    a = chain([2, 3, 4, 5], ["l1", "l2", "l3", "out"])
    b = chain([2, 3.01, 4, 5], ["l1", "l2", "l3", "out"])
    v = verify(a, b, X)
    assert not v.ok and v.first_divergence.source == "l2"
    assert v.final.ok is False and v.rows[0].ok
    assert "first divergence: l2 -> l2" in v.to_text()
    with pytest.raises(ConversionError, match="diverges first at l2"):
        v.check()


def test_unpaired_intermediates_are_listed_and_finals_always_pair():
    a = chain([2, 3], ["x", "y"])
    b = chain([2, 3], ["p", "q"])
    v = verify(a, b, X)
    assert v.unpaired == ["x"] and [(r.source, r.destination) for r in v.rows] == [("y", "q")] and v.ok


def test_shape_difference_and_non_finite_values_diverge():
    v = compare_outputs({"out": np.zeros((2, 3))}, {"out": np.zeros((3, 2))})
    assert not v.ok and "shape [2, 3] vs [3, 2]" in v.first_divergence.note
    assert relative_difference(np.array([np.nan]), np.array([1.0])) == float("inf")
    with pytest.raises(ConversionError, match="no outputs"):
        compare_outputs({}, {"out": X})


def test_tolerance_is_relative_to_the_destination_scale():
    a = {"out": np.array([1000.0, 0.0])}
    b = {"out": np.array([1000.0, 0.009])}
    assert compare_outputs(a, b, tol=1e-5).ok
    assert not compare_outputs(a, b, tol=1e-6).ok


def test_torch_runner_points_to_the_broken_layer_of_a_converted_model():
    from conftest import require

    torch = require("torch")
    from hubfmt.adapters.torch.verify import runner
    from hubfmt import align

    from torch_nets import EfficientNetA, EfficientNetB, checkpoint_of, load_into, randomize

    src_model, dst_model = randomize(EfficientNetA(), 1), EfficientNetB()
    alignment = align(checkpoint_of(src_model), checkpoint_of(dst_model))
    load_into(dst_model, alignment.apply(checkpoint_of(src_model)))
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    v = verify(runner(src_model), runner(dst_model), x, pairs=alignment.layer_map())
    assert v.ok, v.to_text()
    assert len(v.rows) > 20 and ("_blocks.2._bn1", "blocks.2.bn1") in [(r.source, r.destination) for r in v.rows]
    with torch.no_grad():
        dst_model.blocks[2].bn1.running_var.mul_(1.5)
    v = verify(runner(src_model), runner(dst_model), x, pairs=alignment.layer_map())
    assert (v.first_divergence.source, v.first_divergence.destination) == ("_blocks.2._bn1", "blocks.2.bn1")
    assert not v.final.ok
    only = runner(dst_model, layers=["blocks.2.bn1"])(x)
    assert list(only) == ["blocks.2.bn1", "output"]
    with pytest.raises(KeyError, match="no module named nope"):
        runner(dst_model, layers=["nope"])
