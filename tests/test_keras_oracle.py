"""Keras 3 files and models against real Keras (TF 2.21) and torch twins.

Keras -> .weights.h5/.keras -> hub -> torch twin: same outputs; torch twin -> hub -> .weights.h5 ->
keras load_weights: same outputs; live models both ways. Padding is chosen so Keras 'same' is
symmetric (odd kernels at stride 1, a 4x4 kernel for the stride-2 transposed conv); pooling before
Dense avoids NHWC/NCHW flatten order.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from hubfmt.io import hubfile
from hubfmt.format.checkpoint import Checkpoint, LayerInfo, TensorInfo
from hubfmt.format.tensor import LazyTensor
from hubfmt.errors import ConversionError

from conftest import assert_same_outputs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="module")
def kh5():
    from hubfmt.adapters import keras as keras_adapter
    return keras_adapter


def _randomize(model, seed=0):
    """Non-trivial weights everywhere (BN statistics too; variances positive)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        a = rng.normal(0, 0.5, v.shape).astype(v.dtype)
        if "variance" in v.path:
            a = np.abs(a) + 0.5
        v.assign(a)


def cnn(keras, *, separable=True):
    L = keras.layers
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = L.Conv2DTranspose(5, 4, strides=2, padding="same", name="up")(x)
    if separable:
        x = L.SeparableConv2D(6, 3, depth_multiplier=2, padding="same", name="sep")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(3, name="fc")(x)
    m = keras.Model(inp, x, name="cnn")
    _randomize(m)
    return m


def cnn_twin(torch, *, separable=True):
    nn = torch.nn

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4, eps=1e-3)
            self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
            self.up = nn.ConvTranspose2d(8, 5, 4, stride=2, padding=1)
            self.sep = nn.Module()
            if separable:
                self.sep.depthwise = nn.Conv2d(5, 10, 3, padding=1, groups=5, bias=False)
                self.sep.pointwise = nn.Conv2d(10, 6, 1)
            self.fc = nn.Linear(6 if separable else 5, 3)
            self.separable = separable

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            x = self.up(self.dw(x))
            if self.separable:
                x = self.sep.pointwise(self.sep.depthwise(x))
            return self.fc(x.mean(dim=(2, 3)))
    return Twin().eval()


def rnn(keras):
    L = keras.layers
    inp = keras.Input((5, 6))
    x = L.LSTM(7, return_sequences=True, name="lstm")(inp)
    x = L.GRU(4, return_sequences=True, name="gru")(x)
    m = keras.Model(inp, x, name="rnn")
    _randomize(m, 1)
    return m


def rnn_twin(torch):
    nn = torch.nn

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(6, 7, batch_first=True)
            self.gru = nn.GRU(7, 4, batch_first=True)

        def forward(self, x):
            return self.gru(self.lstm(x)[0])[0]
    return Twin().eval()


def load_twin(torch, twin, ckpt):
    """Load a canonical checkpoint into a torch twin, every tensor by name (strict)."""
    state = {n: torch.from_numpy(ckpt.tensor(n).copy()) for n in ckpt}
    for k, v in twin.state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = v
    twin.load_state_dict(state, strict=True)
    return twin


def torch_ckpt(twin, kinds: dict, attrs: dict | None = None) -> Checkpoint:
    """The canonical checkpoint of a torch twin, as the torch adapter would give it."""
    ckpt = Checkpoint()
    for name, t in twin.state_dict().items():
        layer, _, role = name.rpartition(".")
        ckpt.add(name, LazyTensor.from_array(t.detach().numpy()), TensorInfo(kind=kinds[layer], role=role, layer=layer))
    for layer, kind in kinds.items():
        ckpt.layers[layer] = LayerInfo(kind, (attrs or {}).get(layer, {}))
    return ckpt


def _randomize_torch(torch, twin, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in twin.state_dict().items():
            if p.dtype.is_floating_point:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if "running_var" in name else 0.0))
                if "running_var" in name:
                    p.abs_()


def nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


X_IMG = np.random.default_rng(7).normal(size=(2, 8, 8, 3)).astype(np.float32)
X_SEQ = np.random.default_rng(8).normal(size=(2, 5, 6)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_keras_cnn_file_to_torch_twin(keras, torch, kh5, tmp_path, suffix):
    m = cnn(keras)
    p = str(tmp_path / f"m{suffix}")
    m.save_weights(p) if suffix == ".weights.h5" else m.save(p)
    ckpt = kh5.read(p)
    assert ckpt["dw.weight"].tensor.shape == (8, 1, 3, 3)          # [C*m, 1, kh, kw], m = 2
    assert ckpt["up.weight"].tensor.shape == (8, 5, 4, 4)          # [in, out, kh, kw]
    assert ckpt.layers["bn"].kind == "batch_norm"
    if suffix == ".keras":      # config.json: attributes recorded canonically
        assert ckpt.layers["bn"].attrs == {"eps": 0.001, "momentum": 0.01}
        assert ckpt.layers["dw"].attrs["groups"] == 4
        assert ckpt.layers["conv"].attrs["padding"] == "same"
    twin = load_twin(torch, cnn_twin(torch), ckpt)
    with torch.no_grad():
        out = twin(torch.from_numpy(nchw(X_IMG))).numpy()
    assert_same_outputs(out, m.predict(X_IMG, verbose=0))


def test_keras_cnn_through_hub_file(keras, torch, kh5, tmp_path):
    m = cnn(keras)
    m.save(str(tmp_path / "m.keras"))
    hubfile.write(kh5.read(str(tmp_path / "m.keras")), str(tmp_path / "m.safetensors"))
    ckpt = hubfile.read(str(tmp_path / "m.safetensors"))
    twin = load_twin(torch, cnn_twin(torch), ckpt)
    with torch.no_grad():
        out = twin(torch.from_numpy(nchw(X_IMG))).numpy()
    assert_same_outputs(out, m.predict(X_IMG, verbose=0))


def test_keras_rnn_file_to_torch_twin(keras, torch, kh5, tmp_path):
    m = rnn(keras)
    m.save_weights(str(tmp_path / "r.weights.h5"))
    ckpt = kh5.read(str(tmp_path / "r.weights.h5"))
    assert ckpt.report.of("created")[0].name == "lstm.bias_hh_l0"    # Keras's one LSTM bias
    twin = load_twin(torch, rnn_twin(torch), ckpt)
    with torch.no_grad():
        out = twin(torch.from_numpy(X_SEQ)).numpy()
    assert_same_outputs(out, m.predict(X_SEQ, verbose=0))


@pytest.mark.parametrize("how", ["live-template", "keras-template", "weights-template", "rule"])
def test_torch_twin_to_keras_weights(keras, torch, kh5, tmp_path, how):
    separable = how != "rule"       # by rule, a torch depthwise+pointwise pair stays two layers
    twin = cnn_twin(torch, separable=separable)
    _randomize_torch(torch, twin)
    kinds = {"conv": "conv2d", "bn": "batch_norm", "dw": "depthwise_conv2d", "up": "conv_transpose2d", "fc": "linear"}
    if separable:
        kinds.update({"sep.depthwise": "depthwise_conv2d", "sep.pointwise": "conv2d"})
    ckpt = torch_ckpt(twin, kinds, {"dw": {"groups": 4}, "sep.depthwise": {"groups": 5}})
    dest = cnn(keras, separable=separable)
    _randomize(dest, 9)     # different weights: the load must replace them all
    template = {"live-template": dest, "rule": None}.get(how)
    if how == "keras-template":
        template = str(tmp_path / "t.keras")
        dest.save(template)
    elif how == "weights-template":
        template = str(tmp_path / "t.weights.h5")
        dest.save_weights(template)
    out = str(tmp_path / "out.weights.h5")
    report = kh5.write(ckpt, out, template=template)
    assert "bn.num_batches_tracked" in report.names("dropped")
    dest.load_weights(out)
    with torch.no_grad():
        want = twin(torch.from_numpy(nchw(X_IMG))).numpy()
    assert_same_outputs(dest.predict(X_IMG, verbose=0), want)


def test_torch_rnn_twin_to_keras(keras, torch, kh5, tmp_path):
    twin = rnn_twin(torch)
    _randomize_torch(torch, twin)
    ckpt = torch_ckpt(twin, {"lstm": "lstm", "gru": "gru"})
    dest = rnn(keras)
    out = str(tmp_path / "r.weights.h5")
    kh5.write(ckpt, out)            # by rule: layers/lstm/cell, layers/gru/cell
    dest.load_weights(out)
    with torch.no_grad():
        want = twin(torch.from_numpy(X_SEQ)).numpy()
    assert_same_outputs(dest.predict(X_SEQ, verbose=0), want)


def test_keras_archive_round_trip_loads_with_keras(keras, kh5, tmp_path):
    m = cnn(keras)
    m.save(str(tmp_path / "m.keras"))
    ckpt = kh5.read(str(tmp_path / "m.keras"))
    hubfile.write(ckpt, str(tmp_path / "m.safetensors"))
    kh5.write(hubfile.read(str(tmp_path / "m.safetensors")), str(tmp_path / "back.keras"))
    back = keras.models.load_model(str(tmp_path / "back.keras"))
    assert_same_outputs(back.predict(X_IMG, verbose=0), m.predict(X_IMG, verbose=0), tol=0)


def test_from_model_equals_file_reader(keras, kh5, tmp_path):
    m = cnn(keras)
    m.save(str(tmp_path / "m.keras"))
    live, filed = kh5.from_model(m), kh5.read(str(tmp_path / "m.keras"))
    assert list(live) == list(filed)
    for n in live:
        assert np.array_equal(live.tensor(n), filed.tensor(n)), n
    assert live["conv.weight"].info.original_name == "conv/kernel"


def test_to_model_sets_every_weight(keras, torch, kh5):
    twin = rnn_twin(torch)
    _randomize_torch(torch, twin)
    dest = rnn(keras)
    report = kh5.to_model(torch_ckpt(twin, {"lstm": "lstm", "gru": "gru"}), dest)
    assert report.tensors_out == 6      # lstm kernel, recurrent, bias; gru the same
    with torch.no_grad():
        want = twin(torch.from_numpy(X_SEQ)).numpy()
    assert_same_outputs(dest.predict(X_SEQ, verbose=0), want)


def test_to_model_strict_lists_missing_and_leftover(keras, kh5):
    src = cnn(keras, separable=False)
    ckpt = kh5.from_model(src)
    del ckpt.entries["fc.weight"], ckpt.entries["fc.bias"]
    ckpt.add("extra.weight", LazyTensor.from_array(np.zeros((2, 2), np.float32)),
             TensorInfo(kind="linear", role="weight", layer="extra"))
    with pytest.raises(ConversionError) as e:
        kh5.to_model(ckpt, cnn(keras, separable=False))
    assert "extra" in str(e.value) and "fc" in str(e.value)


def test_subclassed_model_names_and_round_trip(keras, kh5, tmp_path):
    L = keras.layers

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv1 = L.Conv2D(2, 3)
            self.blocks = [L.Dense(3), L.Dense(2)]

        def call(self, x):
            x = keras.ops.mean(self.conv1(x), axis=(1, 2))
            for b in self.blocks:
                x = b(x)
            return x
    net = Net()
    net(X_IMG)
    _randomize(net, 4)
    p = str(tmp_path / "n.weights.h5")
    net.save_weights(p)
    ckpt = kh5.read(p)
    assert set(ckpt.layers) == {"conv1", *(f"blocks.{b.name}" for b in net.blocks)}
    assert sorted(kh5.from_model(net)) == sorted(ckpt)      # Keras saves attributes alphabetically
    other = Net()
    other(X_IMG)
    kh5.write(ckpt, str(tmp_path / "o.weights.h5"))
    other.load_weights(str(tmp_path / "o.weights.h5"))
    assert_same_outputs(other.predict(X_IMG, verbose=0), net.predict(X_IMG, verbose=0), tol=0)


def test_float16_weights_restored_bit_exact(keras, kh5, tmp_path):
    import h5py
    L = keras.layers
    inp = keras.Input((4,))
    m = keras.Model(inp, L.Dense(3, dtype="float16", name="half")(L.Dense(5, name="full")(inp)))
    _randomize(m, 5)
    p = str(tmp_path / "h.weights.h5")
    m.save_weights(p)
    ckpt = kh5.read(p)
    assert ckpt["half.weight"].info.original_dtype == "float16"
    hubfile.write(ckpt, str(tmp_path / "h.safetensors"))        # widens to float32
    back = str(tmp_path / "back.weights.h5")
    kh5.write(hubfile.read(str(tmp_path / "h.safetensors")), back)
    with h5py.File(p) as a, h5py.File(back) as b:
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        for n in names:
            assert a[n].dtype == b[n].dtype and np.array_equal(a[n][()], b[n][()]), n


def test_snake_case_matches_keras(keras):
    from keras.src.utils import naming

    from hubfmt.adapters.keras.config import snake_case
    for cls in ("Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D", "BatchNormalization",
                "LSTM", "GRU", "SimpleRNN", "LayerNormalization", "Dense", "Embedding", "Conv1DTranspose",
                "MultiHeadAttention", "GroupNormalization"):
        assert snake_case(cls) == naming.to_snake_case(cls)


def test_bare_weights_read_with_template(keras, kh5, tmp_path):
    from hubfmt.errors import FormatError
    L = keras.layers
    inp = keras.Input((4,))
    m = keras.Model(inp, L.BatchNormalization(center=False, name="bn")(L.Dense(4, name="fc")(inp)))
    _randomize(m, 6)
    p = str(tmp_path / "b.weights.h5")
    m.save_weights(p)
    with pytest.raises(FormatError, match="BatchNormalization with 3 variables"):
        kh5.read(p)                             # center or scale off: ambiguous without the model
    ckpt = kh5.read(p, template=m)
    assert np.array_equal(ckpt.tensor("bn.weight"), m.get_layer("bn").gamma.numpy())
    assert not ckpt.tensor("bn.bias").any() and "bn.bias" in ckpt.report.names("created")
    assert ckpt.layers["bn"].attrs == {"eps": 0.001, "momentum": 0.01}


def test_gru_without_reset_after_is_refused_unless_not_strict(keras, kh5, tmp_path):
    L = keras.layers
    inp = keras.Input((3, 2))
    m = keras.Model(inp, L.GRU(4, reset_after=False, name="g")(inp))
    p = str(tmp_path / "g.keras")
    m.save(p)
    with pytest.raises(ConversionError, match="reset_after=False"):
        kh5.read(p)
    ckpt = kh5.read(p, strict=False)
    assert list(ckpt) == ["g.vars.0", "g.vars.1", "g.vars.2"]
    out = str(tmp_path / "back.weights.h5")
    kh5.write(ckpt, out)
    other = keras.Model(inp, L.GRU(4, reset_after=False, name="g")(inp))
    other.load_weights(out)
    x = np.ones((1, 3, 2), np.float32)
    assert_same_outputs(other.predict(x, verbose=0), m.predict(x, verbose=0), tol=0)


def test_legacy_h5_model_to_torch_twin(keras, torch, kh5, tmp_path):
    m = cnn(keras)
    p = str(tmp_path / "m.h5")
    m.save(p)                       # Keras's legacy HDF5 model format (named variables, model_config)
    ckpt = kh5.read(p)
    assert ckpt.source.format == "keras-h5"
    twin = load_twin(torch, cnn_twin(torch), ckpt)
    with torch.no_grad():
        out = twin(torch.from_numpy(nchw(X_IMG))).numpy()
    assert_same_outputs(out, m.predict(X_IMG, verbose=0))
    rt = rnn(keras)
    rt.save(str(tmp_path / "r.h5"))
    twin = load_twin(torch, rnn_twin(torch), kh5.read(str(tmp_path / "r.h5")))
    with torch.no_grad():
        out = twin(torch.from_numpy(X_SEQ)).numpy()
    assert_same_outputs(out, rt.predict(X_SEQ, verbose=0))


def test_dense_after_flatten_is_permuted(keras, kh5, tmp_path):
    """Was a warning only (the wrong tensor written); now the rows are permuted to the canonical
    C,H,W order and reported (tests/test_flatten_order.py checks outputs against torch)."""
    L = keras.layers
    s = keras.Sequential([keras.Input((4, 4, 2)), L.Conv2D(2, 1, name="c"), L.Flatten(), L.Dense(2, name="fc")])
    s.save(str(tmp_path / "s.keras"))
    ckpt = kh5.read(str(tmp_path / "s.keras"))
    permuted = ckpt.report.of("permuted")
    assert [e.name for e in permuted] == ["fc.weight"] and "HWC->CHW" in permuted[0].detail
    kernel = s.get_layer("fc").kernel.numpy()                       # [h*w*c, out], H,W,C rows
    want = kernel.reshape(4, 4, 2, 2).transpose(3, 2, 0, 1).reshape(2, 32)
    np.testing.assert_array_equal(ckpt.array("fc.weight"), want)


def test_template_layer_names_are_written(keras, kh5, tmp_path):
    import h5py
    src = cnn(keras)
    ckpt = kh5.from_model(src)
    dest = cnn(keras)
    out = str(tmp_path / "o.weights.h5")
    kh5.write(ckpt, out, template=dest)
    want = str(tmp_path / "w.weights.h5")
    dest.save_weights(want)
    names = {}
    with h5py.File(want) as a, h5py.File(out) as b:
        a.visititems(lambda n, o: names.__setitem__(n, dict(o.attrs)) if n.endswith("vars") else None)
        for n, attrs in names.items():
            assert dict(b[n].attrs) == attrs, n


def test_sequence_model_embedding_conv1d_layernorm_simplernn(keras, torch, kh5, tmp_path):
    L = keras.layers
    inp = keras.Input((6,), dtype="int32")
    x = L.Embedding(11, 4, name="emb")(inp)
    x = L.Conv1D(5, 3, padding="same", name="conv")(x)
    x = L.LayerNormalization(name="ln")(x)
    x = L.SimpleRNN(3, return_sequences=True, name="rnn")(x)
    m = keras.Model(inp, L.Dense(2, name="fc")(x))
    _randomize(m, 2)
    m.save(str(tmp_path / "s.keras"))
    nn = torch.nn

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 4)
            self.conv = nn.Conv1d(4, 5, 3, padding=1)
            self.ln = nn.LayerNorm(5, eps=1e-3)
            self.rnn = nn.RNN(5, 3, batch_first=True)
            self.fc = nn.Linear(3, 2)

        def forward(self, ids):
            x = self.conv(self.emb(ids).transpose(1, 2)).transpose(1, 2)
            return self.fc(self.rnn(self.ln(x))[0])
    ckpt = kh5.read(str(tmp_path / "s.keras"))
    assert ckpt.layers["ln"].attrs == {"eps": 0.001}
    twin = load_twin(torch, Twin().eval(), ckpt)
    ids = np.random.default_rng(3).integers(0, 11, size=(2, 6)).astype(np.int32)
    with torch.no_grad():
        out = twin(torch.from_numpy(ids.astype(np.int64))).numpy()
    assert_same_outputs(out, m.predict(ids, verbose=0))
    # and back: the twin's weights into a fresh Keras model through a .weights.h5 (by rule)
    dest = keras.models.clone_model(m)
    out_path = str(tmp_path / "back.weights.h5")
    kh5.write(torch_ckpt(twin, {"emb": "embedding", "conv": "conv1d", "ln": "layer_norm", "rnn": "rnn",
                                "fc": "linear"}), out_path)
    dest.load_weights(out_path)
    assert_same_outputs(dest.predict(ids, verbose=0), out)


def test_through_the_torch_adapter_both_ways(keras, torch, tmp_path):
    """The whole pipeline: .keras -> .pth (torch adapter) -> torch twin; torch twin's state_dict
    .pth -> .weights.h5 after a Keras template -> load_weights."""
    import hubfmt
    m = cnn(keras)
    m.save(str(tmp_path / "m.keras"))
    hubfmt.convert(str(tmp_path / "m.keras"), str(tmp_path / "m.pth"))
    twin = cnn_twin(torch)
    state = torch.load(str(tmp_path / "m.pth"), weights_only=True)
    twin.load_state_dict(state, strict=True)      # the torch writer creates num_batches_tracked
    with torch.no_grad():
        assert_same_outputs(twin(torch.from_numpy(nchw(X_IMG))).numpy(), m.predict(X_IMG, verbose=0))

    other = cnn_twin(torch)
    _randomize_torch(torch, other)
    torch.save(other.state_dict(), str(tmp_path / "t.pth"))
    dest = cnn(keras)
    # A state dict says conv2d for the depthwise, transposed and separable layers: the template decides.
    report = hubfmt.convert(str(tmp_path / "t.pth"), str(tmp_path / "t.weights.h5"), write_options={"template": dest})
    assert {"dw", "up"} <= {e.name for e in report.of("warning")}
    dest.load_weights(str(tmp_path / "t.weights.h5"))
    with torch.no_grad():
        assert_same_outputs(dest.predict(X_IMG, verbose=0), other(torch.from_numpy(nchw(X_IMG))).numpy())


def test_real_architecture_round_trip(keras, kh5, tmp_path):
    """keras.applications.MobileNetV2 (depthwise convs, BN, ReLU6, padding layers) through the hub
    and back into a fresh instance: outputs identical, and the hub holds each BN's attributes."""
    m = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5)
    _randomize(m, 11)
    m.save(str(tmp_path / "mnv2.keras"))
    ckpt = kh5.read(str(tmp_path / "mnv2.keras"))
    assert sum(1 for li in ckpt.layers.values() if li.kind == "depthwise_conv2d") == 17
    hubfile.write(ckpt, str(tmp_path / "mnv2.safetensors"))
    out = str(tmp_path / "back.weights.h5")
    kh5.write(hubfile.read(str(tmp_path / "mnv2.safetensors")), out)
    fresh = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5)
    fresh.load_weights(out)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    assert_same_outputs(fresh.predict(x, verbose=0), m.predict(x, verbose=0), tol=0)


def test_bidirectional_rnns_are_torch_bidirectional(keras, torch, kh5, tmp_path):
    L = keras.layers
    inp = keras.Input((5, 3))
    x = L.Bidirectional(L.LSTM(4, return_sequences=True), name="bi")(inp)
    m = keras.Model(inp, L.Bidirectional(L.GRU(2, return_sequences=True), name="bg")(x))
    _randomize(m, 12)
    m.save(str(tmp_path / "b.keras"))
    nn = torch.nn

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.bi = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
            self.bg = nn.GRU(8, 2, batch_first=True, bidirectional=True)

        def forward(self, x):
            return self.bg(self.bi(x)[0])[0]
    ckpt = kh5.read(str(tmp_path / "b.keras"))
    assert list(ckpt)[:5] == ["bi.weight_ih_l0", "bi.weight_hh_l0", "bi.bias_ih_l0", "bi.bias_hh_l0",
                              "bi.weight_ih_l0_reverse"]
    assert list(kh5.from_model(m)) == list(ckpt)
    twin = load_twin(torch, Twin().eval(), ckpt)
    x = np.random.default_rng(4).normal(size=(2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        out = twin(torch.from_numpy(x)).numpy()
    assert_same_outputs(out, m.predict(x, verbose=0))
    # the reverse, by rule (Bidirectional paths generated) and into a live model
    other = Twin().eval()
    _randomize_torch(torch, other)
    tc = torch_ckpt(other, {"bi": "lstm", "bg": "gru"})
    with torch.no_grad():
        want = other(torch.from_numpy(x)).numpy()
    dest = keras.models.clone_model(m)
    kh5.write(tc, str(tmp_path / "t.weights.h5"))
    dest.load_weights(str(tmp_path / "t.weights.h5"))
    assert_same_outputs(dest.predict(x, verbose=0), want)
    live = keras.models.clone_model(m)
    kh5.to_model(tc, live)
    assert_same_outputs(live.predict(x, verbose=0), want)


def test_quantized_layers_kept_by_position(keras, kh5, tmp_path):
    L = keras.layers
    inp = keras.Input((4,))
    m = keras.Model(inp, L.Dense(3, name="fc")(inp))
    m.quantize("int8")
    m.save(str(tmp_path / "q.keras"))
    ckpt = kh5.read(str(tmp_path / "q.keras"))
    assert list(ckpt) == ["fc.vars.0", "fc.vars.1", "fc.vars.2"]
    assert ckpt["fc.vars.0"].tensor.dtype == "int8" and "int8-quantized" in ckpt.report.of("warning")[0].detail
    hubfile.write(ckpt, str(tmp_path / "q.safetensors"))
    kh5.write(hubfile.read(str(tmp_path / "q.safetensors")), str(tmp_path / "back.keras"))
    back = keras.models.load_model(str(tmp_path / "back.keras"))
    x = np.ones((1, 4), np.float32)
    assert_same_outputs(back.predict(x, verbose=0), m.predict(x, verbose=0), tol=0)


def test_tensorflow_names_keras_models_and_files_through_the_keras_adapter(keras, kh5, tmp_path):
    """`--from/--to tensorflow` covers Keras files (the keras adapter's FRAMEWORK is tensorflow);
    the tensorflow adapter itself takes no Keras model, and says which adapter does."""
    import hubfmt
    from hubfmt import registry
    from hubfmt.adapters import tensorflow as tfa
    m = rnn(keras)
    with pytest.raises(ConversionError, match="keras adapter"):
        tfa.from_model(m)
    with pytest.raises(ConversionError, match="keras adapter"):
        tfa.to_model(kh5.from_model(m), m)
    p = str(tmp_path / "r.weights.h5")
    m.save_weights(p)
    assert registry.detect_input(p, "tensorflow") == ("keras", kh5.FORMATS[0])
    assert tfa.sniff(p) is None and kh5.sniff(p) == "keras-weights-h5"
    ckpt = hubfmt.read(p, framework="tensorflow")
    assert list(ckpt) == list(kh5.from_model(m))
    dest = rnn(keras)
    _randomize(dest, 3)
    kh5.to_model(ckpt, dest)
    assert_same_outputs(dest.predict(X_SEQ, verbose=0), m.predict(X_SEQ, verbose=0), tol=0)
    hubfmt.write(ckpt, str(tmp_path / "w.weights.h5"), framework="tensorflow")
    assert kh5.sniff(str(tmp_path / "w.weights.h5")) == "keras-weights-h5"

def test_rms_norm_through_the_hub_loads_in_keras(keras, kh5, tmp_path):
    """Keras 3 RMSNormalization (one variable, `scale`) is an rms_norm layer both ways: a Llama's
    norms have a Keras home (issue 18), and Keras loads what hubfmt wrote from the hub file."""
    L = keras.layers

    def build():
        return keras.Sequential([keras.Input((5,)), L.Dense(8), L.RMSNormalization(), L.Dense(3)])
    m = build()
    _randomize(m)
    m.save_weights(str(tmp_path / "m.weights.h5"))
    ckpt = kh5.read(str(tmp_path / "m.weights.h5"))
    assert sorted(li.kind for li in ckpt.layers.values()) == ["linear", "linear", "rms_norm"]
    hubfile.write(ckpt, str(tmp_path / "m.safetensors"))
    kh5.write(hubfile.read(str(tmp_path / "m.safetensors")), str(tmp_path / "back.weights.h5"))
    back = build()
    back.load_weights(str(tmp_path / "back.weights.h5"))
    x = np.random.default_rng(4).normal(size=(4, 5)).astype(np.float32)
    assert_same_outputs(back.predict(x, verbose=0), m.predict(x, verbose=0), tol=0)
