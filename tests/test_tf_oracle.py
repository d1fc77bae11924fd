"""TensorFlow as the oracle for the checkpoint-bundle half of the TF adapter: checkpoints TF writes
are read and run in torch twins with the same outputs, and checkpoints hubfmt writes are restored
by tf.compat.v1.train.Saver / tf.train.Checkpoint and give the torch outputs."""
from __future__ import annotations

import numpy as np
from conftest import assert_same_outputs, require
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hubfmt
import tf_models as M
from hubfmt.io import hubfile
from hubfmt.adapters import tensorflow as tfa
from hubfmt.format.checkpoint import Checkpoint, LayerInfo, TensorInfo
from hubfmt.format.tensor import LazyTensor

tf = require("tensorflow")
torch = require("torch")


def to_torch(model, ckpt: Checkpoint, names=None):
    """Load canonical tensors into a torch model by name (or by `names` order), strictly."""
    own = model.state_dict()
    sd = {}
    if names is None:
        for n in ckpt:
            sd[n] = torch.from_numpy(ckpt.tensor(n).copy())
    else:
        keys = [k for k in own if not k.endswith("num_batches_tracked")]
        assert len(keys) == len(names), (keys, names)
        for k, n in zip(keys, names, strict=True):
            sd[k] = torch.from_numpy(ckpt.tensor(n).copy())
    for k, v in own.items():
        if k.endswith("num_batches_tracked"):
            sd.setdefault(k, v)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def from_torch(model) -> Checkpoint:
    """What a torch importer produces: canonical names, kinds from module types, layer attrs."""
    nn = torch.nn
    ckpt = Checkpoint()
    for mname, mod in model.named_modules():
        own = list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
        if not own:
            continue
        attrs = {}
        if isinstance(mod, nn.ConvTranspose2d):
            kind = "conv_transpose2d"
        elif isinstance(mod, nn.Conv2d):
            kind = "depthwise_conv2d" if mod.groups > 1 and mod.groups == mod.in_channels else "conv2d"
            attrs = {"groups": mod.groups, "stride": list(mod.stride), "padding": list(mod.padding)}
        elif isinstance(mod, nn.Linear):
            kind = "linear"
        elif isinstance(mod, nn.BatchNorm2d):
            kind, attrs = "batch_norm", {"eps": mod.eps, "momentum": mod.momentum}
        elif isinstance(mod, nn.LSTM):
            kind = "lstm"
        else:
            kind = "tensor"
        ckpt.layers[mname] = LayerInfo(kind, attrs)
        for role, t in own:
            arr = t.detach().numpy()
            ckpt.add(f"{mname}.{role}", LazyTensor.from_array(arr), TensorInfo(kind=kind, role=role, layer=mname))
    return ckpt


def through_hub(ckpt: Checkpoint, tmp_path) -> Checkpoint:
    path = tmp_path / "hub.safetensors"
    hubfmt.write(ckpt, path)
    return hubfmt.read(path)


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


# ----------------------------------------------------------------------------------- TF1 -> torch

def test_tf1_cnn_to_torch(tmp_path):
    rng = np.random.default_rng(0)
    g, x, y = M.tf1_cnn(tf, M.cnn_params(rng))
    feed = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    want = M.run_tf(tf, g, x, y, feed, save=str(tmp_path / "model.ckpt"))
    # through the hub file, as `hubfmt convert model.ckpt model.safetensors` does
    report = hubfmt.convert(tmp_path / "model.ckpt", tmp_path / "model.safetensors")
    assert not report.problems
    ckpt = hubfmt.read(tmp_path / "model.safetensors")
    bn = ckpt.layers["batch_normalization"]
    assert bn.kind == "batch_norm" and bn.attrs == {"eps": 1e-3, "momentum": 0.01}
    assert ckpt.layers["depthwise_conv2d"].attrs["groups"] == 4
    assert ckpt["conv2d_transpose.weight"].info.original_layout == "HWOI"
    net = to_torch(M.torch_cnn(torch, eps=bn.attrs["eps"]), ckpt)
    with torch.no_grad():
        got = net(nchw(feed)).numpy()
    assert_same_outputs(got, want)


def test_tf1_prefix_directory_index_and_meta_all_read(tmp_path):
    rng = np.random.default_rng(1)
    g, x, y = M.tf1_cnn(tf, M.cnn_params(rng))
    M.run_tf(tf, g, x, y, np.zeros((1, 8, 8, 3), np.float32), save=str(tmp_path / "model.ckpt"))
    assert (tmp_path / "model.ckpt.meta").exists()
    names = [list(tfa.read(p)) for p in (tmp_path / "model.ckpt", tmp_path, tmp_path / "model.ckpt.index",
                                         tmp_path / "model.ckpt.meta")]
    assert all(n == names[0] for n in names) and "dense.weight" in names[0]
    meta = tfa.read(tmp_path / "model.ckpt.meta")
    assert any(".meta graph ignored" in e.detail for e in meta.report.of("warning"))


def test_tf1_lstm_to_torch_folds_forget_bias(tmp_path):
    rng = np.random.default_rng(2)
    g, x, y = M.tf1_lstm(tf, M.lstm_params(rng))
    feed = rng.standard_normal((3, M.LSTM_T, M.LSTM_IN)).astype(np.float32)
    want = M.run_tf(tf, g, x, y, feed, save=str(tmp_path / "lstm"))
    ckpt = through_hub(tfa.read(tmp_path / "lstm"), tmp_path)
    assert ckpt.layers["rnn.basic_lstm_cell"].kind == "lstm"
    assert not ckpt.tensor("rnn.basic_lstm_cell.bias_hh_l0").any()
    net = to_torch(M.torch_lstm(torch), ckpt)
    with torch.no_grad():
        got = net(torch.from_numpy(feed)).numpy()
    assert_same_outputs(got, want)
    rep = tfa.read(tmp_path / "lstm").report
    assert any("forget_bias 1" in e.detail for e in rep.of("warning"))
    assert "rnn.basic_lstm_cell.bias_hh_l0" in rep.names("created")


def test_tf1_multi_rnn_cell_is_one_stacked_lstm_both_ways(tmp_path):
    """cell_k of a MultiRNNCell is layer k of torch's nn.LSTM(num_layers=2), and back."""
    rng = np.random.default_rng(15)
    g, x, y = M.tf1_lstm_stack(tf, M.stack_params(rng))
    feed = rng.standard_normal((3, M.LSTM_T, M.LSTM_IN)).astype(np.float32)
    want = M.run_tf(tf, g, x, y, feed, save=str(tmp_path / "stack"))
    ckpt = through_hub(tfa.read(tmp_path / "stack"), tmp_path)
    assert "rnn.multi_rnn_cell.weight_hh_l1" in ckpt
    net = to_torch(M.torch_lstm_stack(torch), ckpt)
    with torch.no_grad():
        assert_same_outputs(net(torch.from_numpy(feed)).numpy(), want)
    torch.manual_seed(5)
    other = M.torch_lstm_stack(torch).eval()
    tfa.write(from_torch(other), tmp_path / "back")                        # by rule
    tfa.write(from_torch(other), tmp_path / "templated", template=tmp_path / "stack")
    zeros = {k: np.zeros_like(v) for k, v in M.stack_params(rng).items()}
    g2, x2, y2 = M.tf1_lstm_stack(tf, zeros)
    with torch.no_grad():
        want = other(torch.from_numpy(feed)).numpy()
    for prefix in ("back", "templated"):
        assert_same_outputs(M.run_tf(tf, g2, x2, y2, feed, restore=str(tmp_path / prefix)), want)


def test_tf1_unet_to_torch(tmp_path):
    rng = np.random.default_rng(3)
    g, x, y = M.tf1_unet(tf, M.unet_params(rng))
    feed = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    want = M.run_tf(tf, g, x, y, feed, save=str(tmp_path / "unet"))
    ckpt = through_hub(tfa.read(tmp_path / "unet"), tmp_path)
    assert ckpt["unet.up1.conv2d_transpose.weight"].info.kind == "conv_transpose2d"
    net = to_torch(M.torch_unet(torch), ckpt)
    with torch.no_grad():
        got = net(nchw(feed)).numpy()
    assert_same_outputs(got, want.transpose(0, 3, 1, 2))


def test_tf1_training_state_dropped_and_ema_offered(tmp_path):
    rng = np.random.default_rng(4)
    params = M.cnn_params(rng)
    g, x, y = M.tf1_cnn(tf, params)
    with g.as_default():
        step = tf.compat.v1.train.get_or_create_global_step()
        train = tf.compat.v1.train.AdamOptimizer(0.1).minimize(tf.reduce_sum(y ** 2), global_step=step)
        ema = tf.compat.v1.train.ExponentialMovingAverage(0.5)
        with tf.control_dependencies([train]):
            ema_op = ema.apply(tf.compat.v1.trainable_variables())
        shadow_of = {v.op.name: ema.average(v) for v in tf.compat.v1.trainable_variables()}
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(ema_op, {x: rng.standard_normal((2, 8, 8, 3)).astype(np.float32)})
            shadows = sess.run(shadow_of)
            raw = sess.run({v.op.name: v for v in tf.compat.v1.trainable_variables()})
            saver.save(sess, str(tmp_path / "model.ckpt"), global_step=step)
    prefix = tmp_path / "model.ckpt-1"
    plain = tfa.read(prefix)
    dropped = dict((e.name, e.detail) for e in plain.report.of("dropped"))
    assert "optimizer slot (Adam)" == dropped["conv2d/kernel/Adam"]
    assert "conv2d/kernel/Adam_1" in dropped and "beta1_power" in dropped and "global_step" in dropped
    assert "ExponentialMovingAverage" in dropped["dense/kernel/ExponentialMovingAverage"]
    assert plain.extra["global_step"] == 1
    assert sorted(plain) == sorted(tfa.read(tmp_path, prefer_ema=True))     # directory: latest via `checkpoint`
    np.testing.assert_array_equal(plain.tensor("dense.weight"), raw["dense/kernel"].T)
    ema_ckpt = tfa.read(prefix, prefer_ema=True)
    np.testing.assert_array_equal(ema_ckpt.tensor("dense.weight"), shadows["dense/kernel"].T)
    assert not np.array_equal(shadows["dense/kernel"], raw["dense/kernel"])


def test_tf1_partitioned_variable_joined(tmp_path):
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.get_variable("emb/embeddings", shape=[7, 4], initializer=tf.compat.v1.random_normal_initializer(),
                                  partitioner=tf.compat.v1.fixed_size_partitioner(3))
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, str(tmp_path / "m"))
    want = tf.train.load_checkpoint(str(tmp_path / "m")).get_tensor("emb/embeddings")
    ckpt = tfa.read(tmp_path / "m")
    assert list(ckpt) == ["emb.weight"] and ckpt["emb.weight"].info.kind == "embedding"
    assert ckpt.tensor("emb.weight").tobytes() == want.tobytes()
    assert any("3 pieces" in e.detail for e in ckpt.report.of("warning"))


# ----------------------------------------------------------------------------------- torch -> TF1

def test_torch_cnn_to_tf1_restored_by_saver(tmp_path):
    torch.manual_seed(0)
    net = M.torch_cnn(torch).eval()
    with torch.no_grad():
        net.batch_normalization.running_mean.uniform_(-0.5, 0.5)
        net.batch_normalization.running_var.uniform_(0.5, 1.5)
    ckpt = through_hub(from_torch(net), tmp_path)
    (tmp_path / "tf").mkdir()
    report = tfa.write(ckpt, tmp_path / "tf" / "model.ckpt.index")
    assert (tmp_path / "tf" / "checkpoint").exists()
    assert "batch_normalization.num_batches_tracked" in report.names("dropped")
    zeros = {k: np.zeros_like(v) for k, v in M.cnn_params(np.random.default_rng(0)).items()}
    g, x, y = M.tf1_cnn(tf, zeros)
    feed = np.random.default_rng(5).standard_normal((2, 8, 8, 3)).astype(np.float32)
    got = M.run_tf(tf, g, x, y, feed, restore=tf.train.latest_checkpoint(str(tmp_path / "tf")))
    with torch.no_grad():
        want = net(nchw(feed)).numpy()
    assert_same_outputs(got, want)


def test_torch_cnn_to_tf1_with_template(tmp_path):
    """Without layer attributes the depth multiplier is unknown; the template settles it."""
    torch.manual_seed(1)
    net = M.torch_cnn(torch).eval()
    ckpt = from_torch(net)
    ckpt.layers.clear()
    rng = np.random.default_rng(6)
    g, x, y = M.tf1_cnn(tf, M.cnn_params(rng))
    M.run_tf(tf, g, x, y, np.zeros((1, 8, 8, 3), np.float32), save=str(tmp_path / "target"))
    tfa.write(ckpt, tmp_path / "out", template=tmp_path / "target")
    feed = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    got = M.run_tf(tf, g, x, y, feed, restore=str(tmp_path / "out"))
    with torch.no_grad():
        want = net(nchw(feed)).numpy()
    assert_same_outputs(got, want)


def test_torch_to_tf1_template_with_adam_and_ema(tmp_path):
    """A training checkpoint as template: weights filled, EMA shadows follow them (an eval graph
    restoring ema.variables_to_restore() gets the new weights), Adam slots reset to zero."""
    rng = np.random.default_rng(13)
    g, x, y = M.tf1_cnn(tf, M.cnn_params(rng))
    with g.as_default():
        step = tf.compat.v1.train.get_or_create_global_step()
        train = tf.compat.v1.train.AdamOptimizer(0.1).minimize(tf.reduce_sum(y ** 2), global_step=step)
        ema = tf.compat.v1.train.ExponentialMovingAverage(0.5)
        with tf.control_dependencies([train]):
            ema_op = ema.apply(tf.compat.v1.trainable_variables())
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(ema_op, {x: rng.standard_normal((2, 8, 8, 3)).astype(np.float32)})
            tf.compat.v1.train.Saver().save(sess, str(tmp_path / "train"))
    torch.manual_seed(4)
    net = M.torch_cnn(torch).eval()
    report = tfa.write(from_torch(net), tmp_path / "out", template=tmp_path / "train")
    assert "dense/kernel/ExponentialMovingAverage" in report.names("created")
    reader = tf.train.load_checkpoint(str(tmp_path / "out"))
    assert not reader.get_tensor("dense/kernel/Adam").any() and reader.get_tensor("global_step") == 1
    feed = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(nchw(feed)).numpy()
    with g.as_default(), tf.compat.v1.Session(graph=g) as sess:
        for saver in (tf.compat.v1.train.Saver(), tf.compat.v1.train.Saver(ema.variables_to_restore())):
            saver.restore(sess, str(tmp_path / "out"))
            assert_same_outputs(sess.run(y, {x: feed}), want)


def test_torch_lstm_to_tf1_fused_cell(tmp_path):
    torch.manual_seed(2)
    net = M.torch_lstm(torch).eval()
    ckpt = through_hub(from_torch(net), tmp_path)
    report = tfa.write(ckpt, tmp_path / "lstm")
    assert any("forget_bias 1" in e.detail for e in report.of("warning"))
    zeros = {k: np.zeros_like(v) for k, v in M.lstm_params(np.random.default_rng(0)).items()}
    g, x, y = M.tf1_lstm(tf, zeros)
    feed = np.random.default_rng(7).standard_normal((2, M.LSTM_T, M.LSTM_IN)).astype(np.float32)
    got = M.run_tf(tf, g, x, y, feed, restore=str(tmp_path / "lstm"))
    with torch.no_grad():
        want = net(torch.from_numpy(feed)).numpy()
    assert_same_outputs(got, want)


def test_written_bundle_read_back_by_tensorflow_bit_exact(tmp_path):
    rng = np.random.default_rng(8)
    ckpt = Checkpoint()
    arrays = {"a/f32": rng.standard_normal((3, 4)).astype(np.float32), "a/f16": rng.standard_normal(5).astype(np.float16),
              "b/i64": rng.integers(-9, 9, (2, 2)).astype(np.int64), "b/u8": rng.integers(0, 255, 7).astype(np.uint8),
              "c/bool": rng.integers(0, 2, 3).astype(bool), "c/f64": rng.standard_normal(()).astype(np.float64)}
    for n, a in arrays.items():
        ckpt.add(n.replace("/", "."), LazyTensor.from_array(a), TensorInfo(kind="tensor"))
    bf = rng.integers(0, 2**16, (4,), dtype=np.uint16)
    ckpt.add("c.bf16", LazyTensor(bf.shape, "bfloat16", lambda: bf), TensorInfo(kind="tensor"))
    tfa.write(ckpt, tmp_path / "m", max_shard_size=40)
    reader = tf.train.load_checkpoint(str(tmp_path / "m"))
    for n, a in arrays.items():
        got = reader.get_tensor(n)
        assert got.dtype == a.dtype and got.tobytes() == a.tobytes(), n
    assert reader.get_tensor("c/bf16").view(np.uint16).tobytes() == bf.tobytes()


# ----------------------------------------------------------------------------------------- TF2

def _keras_model(keras):
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, padding="same", name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.ReLU(),
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(5, name="head"),
    ])


def _torch_twin_of_keras():
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=1e-3), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def _randomize_keras(model, rng):
    for w in model.weights:
        w.assign(rng.standard_normal(w.shape).astype(np.float32) * 0.3 + (1.0 if "variance" in w.path else 0.0))


def test_tf2_keras_object_checkpoint_to_torch(tmp_path):
    keras = require("keras")
    rng = np.random.default_rng(9)
    model = _keras_model(keras)
    _randomize_keras(model, rng)
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(tmp_path / "ckpt"))
    ckpt = tfa.read(prefix)
    assert ckpt.source.format == "tf2-checkpoint"
    # named by the Keras layer names (as a Keras file would be), in model order, not by the
    # optimizer's alias of each variable
    assert list(ckpt) == ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                          "dw.weight", "dw.bias", "head.weight", "head.bias"]
    assert ckpt["dw.weight"].info.kind == "depthwise_conv2d"
    assert any("optimizer" in e.name for e in ckpt.report.of("dropped"))
    feed = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    want = model(feed, training=False).numpy()
    net = to_torch(_torch_twin_of_keras(), ckpt, names=list(ckpt))
    with torch.no_grad():
        got = net(nchw(feed)).numpy()
    assert_same_outputs(got, want)


def test_torch_to_tf2_with_template_restored_by_tf_train_checkpoint(tmp_path):
    keras = require("keras")
    template_model = _keras_model(keras)
    template = tf.train.Checkpoint(model=template_model).save(str(tmp_path / "template"))
    torch.manual_seed(3)
    net = _torch_twin_of_keras().eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 1.5)
    src = from_torch(net)
    # Alignment is another component's job: rename the torch tensors to the template's canonical names.
    names = [n for n in tfa.read(template) if not n.endswith("bias_hh_l0")]
    order = [n for n in src if not n.endswith("num_batches_tracked")]
    ckpt = Checkpoint()
    for mine, theirs in zip(order, names, strict=True):
        e = src[mine]
        ckpt.add(theirs, e.tensor, TensorInfo(kind=e.info.kind, role=theirs.rpartition(".")[2]))
    report = tfa.write(ckpt, tmp_path / "out", template=template)
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in report.names("created")
    fresh = _keras_model(keras)
    tf.train.Checkpoint(model=fresh).restore(str(tmp_path / "out")).assert_existing_objects_matched()
    feed = np.random.default_rng(10).standard_normal((2, 8, 8, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(nchw(feed)).numpy()
    assert_same_outputs(fresh(feed, training=False).numpy(), want)


# ------------------------------------------------------------------------------ in-memory variables

def test_from_and_to_variable_dicts():
    rng = np.random.default_rng(11)
    k = tf.Variable(rng.standard_normal((3, 4)).astype(np.float32), name="dense/kernel")
    b = tf.Variable(rng.standard_normal(4).astype(np.float32), name="dense/bias")
    ckpt = tfa.from_model({"dense/kernel": k, "dense/bias": b})
    np.testing.assert_array_equal(ckpt.tensor("dense.weight"), k.numpy().T)
    k2, b2 = tf.Variable(np.zeros((3, 4), np.float32)), tf.Variable(np.zeros(4, np.float32))
    tfa.to_model(ckpt, {"dense/kernel": k2, "dense/bias": b2})
    assert k2.numpy().tobytes() == k.numpy().tobytes() and b2.numpy().tobytes() == b.numpy().tobytes()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["float32", "float16", "int32", "int64", "float64", "uint8"]),
                          st.lists(st.integers(0, 4), max_size=3)), min_size=1, max_size=5))
def test_hypothesis_bundle_read_by_tensorflow(tmp_path_factory, specs):
    tmp = tmp_path_factory.mktemp("h")
    rng = np.random.default_rng(len(specs))
    ckpt = Checkpoint()
    arrays = {}
    for i, (dt, shape) in enumerate(specs):
        a = (rng.standard_normal(shape) * 100).astype(dt)
        arrays[f"v{i}/t"] = a
        ckpt.add(f"v{i}.t", LazyTensor.from_array(a), TensorInfo(kind="tensor"))
    tfa.write(ckpt, tmp / "m")
    reader = tf.train.load_checkpoint(str(tmp / "m"))
    for n, a in arrays.items():
        got = reader.get_tensor(n)
        assert got.dtype == a.dtype and got.shape == a.shape and got.tobytes() == a.tobytes()
    hubfmt.write(tfa.read(tmp / "m"), tmp / "h.safetensors", keep_dtype=True)
    back = hubfile.read(tmp / "h.safetensors")
    for n, a in arrays.items():
        assert back.tensor(n.replace("/", ".")).tobytes() == a.tobytes()


def test_tf2_keras_recurrent_layers_to_torch(tmp_path):
    """Keras LSTM (gates i,f,c,o, one bias) and GRU (z,r,h, reset_after, bias [2,3h]) through a TF2
    object checkpoint into torch nn.LSTM / nn.GRU."""
    keras = require("keras")
    rng = np.random.default_rng(12)
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(5, return_sequences=True, name="lstm"),
                              keras.layers.GRU(4, return_sequences=True, name="gru")])
    for w in model.weights:
        w.assign(rng.standard_normal(w.shape).astype(np.float32) * 0.5)
    prefix = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    ckpt = through_hub(tfa.read(prefix), tmp_path)
    assert list(ckpt) == [f"{layer}.{role}" for layer in ("lstm", "gru")
                          for role in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    assert {e.info.kind for e in ckpt.entries.values()} == {"lstm", "gru"}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(3, 5, batch_first=True)
            self.gru = torch.nn.GRU(5, 4, batch_first=True)

        def forward(self, x):
            return self.gru(self.lstm(x)[0])[0]
    net = to_torch(Net(), ckpt, names=list(ckpt))
    feed = rng.standard_normal((2, 6, 3)).astype(np.float32)
    with torch.no_grad():
        got = net(torch.from_numpy(feed)).numpy()
    assert_same_outputs(got, model(feed).numpy())


def test_from_model_tf_module():
    class Block(tf.Module):
        def __init__(self):
            super().__init__(name="block")
            with tf.name_scope("conv"):
                self.k = tf.Variable(np.ones((3, 3, 2, 4), np.float32), name="kernel")
                self.b = tf.Variable(np.arange(4, dtype=np.float32), name="bias")
    m = Block()
    ckpt = tfa.from_model(m)
    assert sorted(ckpt) == ["conv.bias", "conv.weight"] and ckpt["conv.weight"].tensor.shape == (4, 2, 3, 3)
    m.b.assign(np.zeros(4, np.float32))
    tfa.to_model(ckpt, m)
    np.testing.assert_array_equal(m.b.numpy(), np.arange(4, dtype=np.float32))


def test_tf2_checkpoint_and_keras_weights_file_agree(tmp_path):
    """The same Keras model saved as a TF2 object checkpoint and as a .weights.h5 file reads as the
    same canonical checkpoint (names, order, values): the keras adapter reads the file, the
    tensorflow adapter the checkpoint."""
    from hubfmt.adapters import keras as ka

    keras = require("keras")
    rng = np.random.default_rng(14)
    cnn = _keras_model(keras)
    rnn = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(5, return_sequences=True, name="lstm"),
                            keras.layers.GRU(4, name="gru")])
    for model, tag in ((cnn, "cnn"), (rnn, "rnn")):
        _randomize_keras(model, rng)
        model.save_weights(str(tmp_path / f"{tag}.weights.h5"))
        a = ka.read(tmp_path / f"{tag}.weights.h5")
        b = tfa.read(tf.train.Checkpoint(model=model).save(str(tmp_path / tag)))
        assert list(a) == list(b)
        assert all(a.tensor(n).tobytes() == b.tensor(n).tobytes() for n in a)
