"""Layer order of bare Keras `.weights.h5` files (#14 part 4).

Without config.json the reader rebuilds the model's layer order from the file. Data offsets do
not give it (HDF5 keeps small datasets, such as BN vectors, in blocks of their own, so
pre-activation nets' norms landed out of place); the order HDF5 created the objects in does, with
the class counters Keras puts in list items' names (`conv2d_3`). keras.applications models:
the bare file reads exactly as its .keras twin, and aligns onto torchvision the same way.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import hubfmt
from hubfmt.adapters import keras as ka

from conftest import require

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _pair(keras, tmp_path_factory, name, make):
    d = tmp_path_factory.mktemp(name)
    m = make()
    rng = np.random.default_rng(0)
    for v in m.weights:
        a = rng.normal(0, 0.5, v.shape).astype(v.dtype)
        v.assign(np.abs(a) + 0.5 if "variance" in v.path else a)
    m.save_weights(str(d / "m.weights.h5"))
    m.save(str(d / "m.keras"))
    return d / "m.weights.h5", d / "m.keras"


MODELS = {
    "MobileNetV2": lambda k: k.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10),
    "DenseNet121": lambda k: k.applications.DenseNet121(weights=None, input_shape=(32, 32, 3), classes=10),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bare_weights_h5_reads_in_the_model_order(keras, tmp_path_factory, name):
    bare, archive = _pair(keras, tmp_path_factory, name, lambda: MODELS[name](keras))
    a, b = ka.read(str(bare)), ka.read(str(archive))
    assert list(a) == list(b)
    for n in b:
        assert a[n].info.kind == b[n].info.kind and a[n].tensor.shape == b[n].tensor.shape, n
        np.testing.assert_array_equal(a.array(n), b.array(n))


def test_bare_mobilenet_v2_aligns_onto_torchvision_as_its_keras_twin(keras, tmp_path_factory, tmp_path):
    torch = require("torch")
    from zoo import import_torchvision
    tv = import_torchvision()
    bare, archive = _pair(keras, tmp_path_factory, "mbv2", lambda: MODELS["MobileNetV2"](keras))
    torch.save(tv.models.mobilenet_v2(num_classes=10).state_dict(), tmp_path / "tv.pth")
    hubfmt.convert(archive, tmp_path / "a.pth", template=tmp_path / "tv.pth")
    hubfmt.convert(bare, tmp_path / "b.pth", template=tmp_path / "tv.pth")
    a = torch.load(tmp_path / "a.pth", weights_only=True)
    b = torch.load(tmp_path / "b.pth", weights_only=True)
    assert list(a) == list(b)
    for n in a:
        assert torch.equal(a[n], b[n]), n
