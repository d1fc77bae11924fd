"""hubfmt.permute: the tiled transposing copy gives exactly numpy's result, for every branch."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hubfmt.io import transforms as layouts
from hubfmt.io import permute as pm
from hubfmt.io.permute import permute


def _check(a: np.ndarray, axes) -> None:
    got = permute(a, axes)
    want = a.transpose(axes).copy(order="C")    # (ascontiguousarray makes a 0-d array 1-d)
    assert got.flags.c_contiguous and got.dtype == a.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def tiny_limits():
    # Every array takes the tiled paths, and tiles are smaller than the arrays.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pm, "_SMALL", 0)
        mp.setattr(pm, "_TILE", 4)
        mp.setattr(pm, "_ALIAS_TILE", (2, 4))
        mp.setattr(pm, "_STRIP", 8)
        mp.setattr(pm, "_SHORT_RUNS", 2)
        yield


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=0, max_size=5).flatmap(
    lambda shape: st.tuples(st.just(shape), st.permutations(range(len(shape))))),
    st.sampled_from(["float32", "float16", "int64", "uint8"]))
def test_any_permutation_of_any_shape_matches_numpy(tiny_limits, shape_axes, dtype):
    shape, axes = shape_axes
    a = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    _check(a, axes)


def test_every_3d_permutation_and_the_conv_layouts_at_real_size():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((9, 300, 200), dtype=np.float32)          # over _SMALL
    for axes in itertools.permutations(range(3)):
        _check(a, axes)
    hwio = rng.standard_normal((3, 3, 256, 384), dtype=np.float32)
    _check(hwio, (3, 2, 0, 1))                                        # HWIO -> OIHW
    _check(np.ascontiguousarray(hwio.transpose(3, 2, 0, 1)), (2, 3, 1, 0))   # and back
    dense = rng.standard_normal((1024, 512), dtype=np.float32)        # rows of 2 KiB: the aliasing tiles
    _check(dense, (1, 0))
    narrow = rng.standard_normal((70_000, 9), dtype=np.float32)       # a narrow side: strips
    _check(narrow, (1, 0))
    _check(narrow.T.copy(), (1, 0))


def test_non_contiguous_and_negative_axes():
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)[:, ::2]
    _check(a, (2, 0, 1))
    got = permute(np.arange(6).reshape(2, 3), (-1, -2))
    np.testing.assert_array_equal(got, np.arange(6).reshape(2, 3).T)


def test_merging_of_axes():
    assert pm._merged((3, 3, 64, 32), (3, 2, 0, 1)) == ((9, 64, 32), (2, 1, 0))
    assert pm._merged((32, 64, 3, 3), (2, 3, 1, 0)) == ((32, 64, 9), (2, 1, 0))
    assert pm._merged((64, 1, 3, 3), (2, 3, 0, 1)) == ((64, 9), (1, 0))   # size-1 axes vanish
    assert pm._merged((1, 1, 1), (2, 0, 1)) == ((1,), (0,))


def test_layouts_use_it_and_keep_their_results():
    k = np.random.default_rng(1).standard_normal((3, 3, 64, 96), dtype=np.float32)
    np.testing.assert_array_equal(layouts.convert_layout(k, "HWIO", "OIHW"), k.transpose(3, 2, 0, 1))
    d = np.random.default_rng(2).standard_normal((3, 3, 8, 2), dtype=np.float32)    # HWCM
    np.testing.assert_array_equal(layouts.convert_layout(d, "HWCM", "OIHW"),
                                  d.transpose(2, 3, 0, 1).reshape(16, 1, 3, 3))
    np.testing.assert_array_equal(layouts.depthwise_to_hwcm(layouts.convert_layout(d, "HWCM", "OIHW"), 8), d)
