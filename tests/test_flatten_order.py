"""A Dense after a Flatten between channels-last Keras and channels-first torch (#14 part 1).

Keras flattens an NHWC map in H,W,C order, torch an NCHW map in C,H,W order: the first Dense's
input rows are permuted between the two. Real Keras models against torch twins, both ways, with
.keras files (the config gives the Flatten's shape: permuted), bare .weights.h5 files (refused
unless flatten=HxW or flatten=as-is decides), live models, and keras.applications.VGG16 against
torchvision's VGG16.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import hubfmt
from hubfmt.errors import ConversionError
from hubfmt.io import hubfile

from conftest import assert_same_outputs, rel_diff, run_cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

H, W, CIN = 6, 5, 3          # input map; a valid 3x3 conv gives a 4x3 map of 4 channels (not square)
X = np.random.default_rng(1).normal(0, 1, (2, H, W, CIN)).astype(np.float32)


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype(v.dtype))


def keras_net(keras, seed=0):
    L = keras.layers
    m = keras.Sequential([keras.Input((H, W, CIN)), L.Conv2D(4, 3, activation="relu", name="conv"), L.Flatten(),
                          L.Dense(5, activation="relu", name="fc"), L.Dense(3, name="out")])
    _randomize(m, seed)
    return m


def torch_net(torch):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(CIN, 4, 3)
            self.fc = nn.Linear(4 * 4 * 3, 5)
            self.out = nn.Linear(5, 3)

        def forward(self, x):
            return self.out(self.fc(self.conv(x).relu().flatten(1)).relu())

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)
    return net


def torch_out(torch, net, x):
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def load_pth(torch, net, path):
    net.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return net


# ---- Keras -> torch ----------------------------------------------------------------------------

def test_keras_archive_to_torch_is_permuted_and_recorded(keras, torch, tmp_path):
    k = keras_net(keras)
    k.save(str(tmp_path / "k.keras"))
    want = k.predict(X, verbose=0)
    report = hubfmt.convert(tmp_path / "k.keras", tmp_path / "t.pth")
    assert_same_outputs(torch_out(torch, load_pth(torch, torch_net(torch), tmp_path / "t.pth"), X), want)
    permuted = [e for e in report.events if e.action == "permuted"]
    assert [e.name for e in permuted] == ["fc.weight"] and "HWC->CHW" in permuted[0].detail
    assert report.counts()["permuted"] == 1
    # The hub file records the canonical order and where it came from; hub -> torch is then plain.
    hubfmt.convert(tmp_path / "k.keras", tmp_path / "k.safetensors")
    layers = hubfile.read(str(tmp_path / "k.safetensors")).layers
    assert layers["fc"].attrs["flatten"] == [4, 4, 3] and layers["fc"].attrs["flatten_source"] == "HWC"
    assert "flatten" not in layers["out"].attrs
    hubfmt.convert(tmp_path / "k.safetensors", tmp_path / "t2.pth")
    assert_same_outputs(torch_out(torch, load_pth(torch, torch_net(torch), tmp_path / "t2.pth"), X), want)


def test_bare_weights_h5_to_torch_is_refused_then_decided(keras, torch, tmp_path):
    k = keras_net(keras)
    k.save_weights(str(tmp_path / "k.weights.h5"))
    want = k.predict(X, verbose=0)
    with pytest.raises(ConversionError) as e:
        hubfmt.convert(tmp_path / "k.weights.h5", tmp_path / "t.pth")
    msg = str(e.value)
    assert "fc" in msg and "48 inputs" in msg and "4 channels" in msg and "flatten=" in msg and "as-is" in msg
    assert not (tmp_path / "t.pth").exists()
    # The user says the map's height and width: exact.
    report = hubfmt.convert(tmp_path / "k.weights.h5", tmp_path / "t.pth", read_options={"flatten": "4x3"})
    assert [e.name for e in report.events if e.action == "permuted"] == ["fc.weight"]
    assert_same_outputs(torch_out(torch, load_pth(torch, torch_net(torch), tmp_path / "t.pth"), X), want)
    # Or the layout of the .keras twin given as template (classes and config).
    k.save(str(tmp_path / "k.keras"))
    hubfmt.convert(tmp_path / "k.weights.h5", tmp_path / "t3.pth", read_options={"template": str(tmp_path / "k.keras")})
    assert_same_outputs(torch_out(torch, load_pth(torch, torch_net(torch), tmp_path / "t3.pth"), X), want)
    # as-is is an explicit choice, reported, and (here) wrong: the rows were not permuted.
    report = hubfmt.convert(tmp_path / "k.weights.h5", tmp_path / "t4.pth", read_options={"flatten": "as-is"})
    assert any(e.action == "warning" and e.name == "fc" and "as-is" in e.detail for e in report.events)
    assert rel_diff(torch_out(torch, load_pth(torch, torch_net(torch), tmp_path / "t4.pth"), X), want) > 1e-2
    # A shape that does not divide the inputs is refused.
    with pytest.raises(ConversionError, match="5x5"):
        hubfmt.convert(tmp_path / "k.weights.h5", tmp_path / "t5.pth", read_options={"flatten": "5x5"})


def test_cli_refuses_bare_weights_h5_with_the_options(keras, tmp_path):
    keras_net(keras).save_weights(str(tmp_path / "k.weights.h5"))
    r = run_cli("convert", tmp_path / "k.weights.h5", tmp_path / "t.pth")
    assert r.returncode != 0 and "-R flatten=" in r.stderr, r.stderr
    r = run_cli("convert", tmp_path / "k.weights.h5", tmp_path / "t.pth", "-R", "flatten=4x3")
    assert r.returncode == 0, r.stderr


def test_bare_weights_h5_into_a_live_torch_model_is_refused(keras, torch, tmp_path):
    from hubfmt.adapters import keras as ka, torch as ta
    keras_net(keras).save_weights(str(tmp_path / "k.weights.h5"))
    ckpt = ka.read(str(tmp_path / "k.weights.h5"))
    assert any(e.action == "warning" and e.name == "fc" and "-R flatten=" in e.detail for e in ckpt.report.events)
    with pytest.raises(ConversionError, match="flatten="):
        ta.to_model(ckpt, torch_net(torch))


def test_live_keras_model_to_torch(keras, torch, tmp_path):
    from hubfmt.adapters import keras as ka, torch as ta
    k = keras_net(keras)
    net = torch_net(torch)
    ta.to_model(ka.from_model(k), net)
    assert_same_outputs(torch_out(torch, net, X), k.predict(X, verbose=0))


# ---- torch -> Keras ----------------------------------------------------------------------------

def _torch_file(torch, tmp_path):
    net = torch_net(torch)
    torch.save(net.state_dict(), tmp_path / "t.pth")
    return net


@pytest.mark.parametrize("out", ["o.weights.h5", "o.keras"])
def test_torch_to_keras_with_keras_archive_template(keras, torch, tmp_path, out):
    net = _torch_file(torch, tmp_path)
    keras_net(keras, seed=5).save(str(tmp_path / "tmpl.keras"))
    report = hubfmt.convert(tmp_path / "t.pth", tmp_path / out, template=tmp_path / "tmpl.keras")
    assert [e.name for e in report.events if e.action == "permuted"] == ["layers/dense/vars/0"]
    k = keras_net(keras, seed=9)
    if out.endswith(".keras"):
        k = keras.saving.load_model(str(tmp_path / out))
    else:
        k.load_weights(str(tmp_path / out))
    assert_same_outputs(k.predict(X, verbose=0), torch_out(torch, net, X))


def test_torch_to_keras_with_weights_h5_template_is_refused_then_decided(keras, torch, tmp_path):
    net = _torch_file(torch, tmp_path)
    keras_net(keras, seed=5).save_weights(str(tmp_path / "tmpl.weights.h5"))
    with pytest.raises(ConversionError) as e:
        hubfmt.convert(tmp_path / "t.pth", tmp_path / "o.weights.h5", template=tmp_path / "tmpl.weights.h5")
    assert "fc" in str(e.value) and "-W flatten=" in str(e.value)
    assert not (tmp_path / "o.weights.h5").exists()
    with pytest.raises(ConversionError, match="-W flatten="):      # no template at all: the same
        hubfmt.convert(tmp_path / "t.pth", tmp_path / "o.weights.h5")
    hubfmt.convert(tmp_path / "t.pth", tmp_path / "o.weights.h5", template=tmp_path / "tmpl.weights.h5",
                   write_options={"flatten": "4x3"})
    k = keras_net(keras, seed=9)
    k.load_weights(str(tmp_path / "o.weights.h5"))
    assert_same_outputs(k.predict(X, verbose=0), torch_out(torch, net, X))


def test_keras_round_trip_through_the_hub_keeps_the_order(keras, tmp_path):
    """.keras -> hub (canonical C,H,W recorded) -> bare .weights.h5 without a template: the
    writer restores H,W,C from the record."""
    k = keras_net(keras)
    k.save(str(tmp_path / "k.keras"))
    hubfmt.convert(tmp_path / "k.keras", tmp_path / "k.safetensors")
    hubfmt.convert(tmp_path / "k.safetensors", tmp_path / "o.weights.h5")
    k2 = keras_net(keras, seed=3)
    k2.load_weights(str(tmp_path / "o.weights.h5"))
    assert_same_outputs(k2.predict(X, verbose=0), k.predict(X, verbose=0))


def test_torch_to_live_keras_model(keras, torch):
    from hubfmt.adapters import keras as ka, torch as ta
    net = torch_net(torch)
    k = keras_net(keras, seed=9)
    report = ka.to_model(ta.from_model(net), k)
    assert any(e.action == "permuted" for e in report.events)
    assert_same_outputs(k.predict(X, verbose=0), torch_out(torch, net, X))


# ---- a public zoo: keras.applications.VGG16 <-> torchvision VGG16 -------------------------------

def _vgg_pair(keras, torch):
    from zoo import import_torchvision
    tv = import_torchvision()
    k = keras.applications.VGG16(weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None)
    t = tv.models.vgg16(num_classes=10)
    t.avgpool = torch.nn.Identity()                  # 64x64 in: a 2x2x512 map, flattened as Keras does
    t.classifier[0] = torch.nn.Linear(512 * 2 * 2, 4096)
    return k, t.eval()


def test_vgg16_keras_applications_and_torchvision_both_ways(keras, torch, tmp_path):
    k, t = _vgg_pair(keras, torch)
    x = np.random.default_rng(2).normal(0, 1, (2, 64, 64, 3)).astype(np.float32)
    k.save(str(tmp_path / "vgg.keras"))
    torch.save(t.state_dict(), tmp_path / "tmpl.pth")
    # Keras -> torch with the torch model as template: names by alignment, rows permuted.
    report = hubfmt.convert(tmp_path / "vgg.keras", tmp_path / "vgg.pth", template=tmp_path / "tmpl.pth")
    assert [e.name for e in report.events if e.action == "permuted"] == ["fc1.weight"]
    t.load_state_dict(torch.load(tmp_path / "vgg.pth", weights_only=True), strict=True)
    want = k.predict(x, verbose=0)
    assert_same_outputs(torch_out(torch, t, x), want)
    # torch -> Keras with the .keras file as template: back to H,W,C rows.
    with torch.no_grad():
        for p in t.parameters():
            p.mul_(0.9)
    torch.save(t.state_dict(), tmp_path / "t.pth")
    hubfmt.convert(tmp_path / "t.pth", tmp_path / "back.weights.h5", template=tmp_path / "vgg.keras")
    k.load_weights(str(tmp_path / "back.weights.h5"))
    assert_same_outputs(k.predict(x, verbose=0), torch_out(torch, t, x))


def test_a_one_channel_map_has_one_flatten_order(keras, torch, tmp_path):
    # With one channel, H,W,C and C,H,W order are the same order: nothing to decide, so a bare
    # .weights.h5 converts without flatten=..., and the outputs agree (found by hypothesis:
    # tests/test_keras_format.py generated a Dense(2) after a 1-channel conv and was refused).
    L = keras.layers
    k = keras.Sequential([keras.Input((H, W, CIN)), L.Conv2D(1, 3, name="conv"), L.Flatten(),
                          L.Dense(3, name="fc")])
    _randomize(k, 3)
    src = tmp_path / "one.weights.h5"
    k.save_weights(src)
    r = run_cli("convert", src, tmp_path / "one.pth", "-q")
    assert r.returncode == 0, r.stderr
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(CIN, 1, 3)
            self.fc = nn.Linear(4 * 3, 3)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    net = load_pth(torch, Net().eval(), tmp_path / "one.pth")
    want = np.asarray(k(X))
    assert rel_diff(torch_out(torch, net, X), want) <= 1e-5


def test_keras_dense_after_flatten_into_a_torch_conv_head(keras, torch, tmp_path):
    # The Dense's rows, permuted to channels-first (C,H,W) from the .keras config, are the weights
    # of the valid 4x3 conv on the 4x3 map (timm's ConvMlp head): reshaped, exact.
    nn = torch.nn

    class ConvHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(CIN, 4, 3)
            self.fc = nn.Conv2d(4, 5, (4, 3))
            self.out = nn.Linear(5, 3)

        def forward(self, x):
            return self.out(self.fc(self.conv(x).relu()).flatten(1).relu())

    k = keras_net(keras)
    k.save(str(tmp_path / "k.keras"))
    torch.save(ConvHead().state_dict(), tmp_path / "tmpl.pth")
    r = run_cli("convert", tmp_path / "k.keras", tmp_path / "t.pth", "--template", tmp_path / "tmpl.pth")
    assert r.returncode == 0 and "[5, 48] -> [5, 4, 4, 3]" in r.stdout, r.stdout + r.stderr
    net = load_pth(torch, ConvHead().eval(), tmp_path / "t.pth")
    assert_same_outputs(torch_out(torch, net, X), k.predict(X, verbose=0))
