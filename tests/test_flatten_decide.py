"""Deciding a Dense-after-Flatten row order everywhere a refusal says it can be decided (#14).

The Keras net and its torch twin of tests/test_flatten_order.py (Conv2D(4) on a 6x5x3 input: a
4x3x4 map flattened into Dense(5)). TF checkpoints (TF1 names, TF2 object graphs) record neither
the Flatten nor the map, so they refuse like bare Keras files, both as sources and destinations;
every way out the refusal names is tried: `-R/-W flatten=HxW`, `flatten=as-is`, and a rules
file's `permute = "flatten:..."` op. In-memory destinations (MXNet, MindSpore, OneFlow, TF
variables) refuse an undecided checkpoint too. TensorFlow (tf.train.Checkpoint, Keras), torch and
the others are the oracles.
"""
from __future__ import annotations

import numpy as np
import pytest

import hubfmt
from hubfmt.alignment.rules import RuleSet
from hubfmt.errors import ConversionError

from conftest import CLEAN_ENV, assert_same_outputs, oneflow_python, rel_diff, require, run_cli
from test_flatten_order import X, keras_net, load_pth, torch_net, torch_out


RULE_READ = '[[rule]]\nglob = "fc.weight"\nreplace = "fc.weight"\npermute = "flatten:HWC->CHW:4x3"\n'
RULE_WRITE = '[[rule]]\nglob = "fc.weight"\nreplace = "fc.weight"\npermute = "flatten:CHW->HWC:4x3"\n'


def _tf2_checkpoint(keras, tmp_path, seed=0):
    import tensorflow as tf
    k = keras_net(keras, seed)
    prefix = tf.train.Checkpoint(model=k).write(str(tmp_path / "tf2" / "ckpt"))
    return k, prefix


def _tf1_names(k) -> dict:
    """The Keras net's variables by TF1 name: conv/kernel, fc/bias, ..."""
    return {f"{layer.name}/{v.name}": v for layer in k.layers for v in layer.weights}


def _tf1_checkpoint(keras, tmp_path):
    """The Keras net's variables under TF1 names (conv/kernel, fc/kernel, ...), saved by Saver."""
    import tensorflow as tf
    k = keras_net(keras)
    values = {n: v.numpy() for n, v in _tf1_names(k).items()}
    graph = tf.Graph()
    with graph.as_default():
        for name, a in values.items():
            tf.compat.v1.get_variable(name, initializer=tf.constant(a))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "tf1" / "model.ckpt"))
    return k, prefix


def _rules(tmp_path, text, name="r.toml"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


# ---- TF checkpoints as sources -------------------------------------------------------------------

@pytest.mark.parametrize("make", [_tf2_checkpoint, _tf1_checkpoint], ids=["tf2", "tf1"])
def test_tf_checkpoint_to_torch_is_refused_then_decided(keras, torch, tmp_path, make):
    k, prefix = make(keras, tmp_path)
    want = k.predict(X, verbose=0)
    r = run_cli("convert", prefix, tmp_path / "t.pth")
    assert r.returncode == 2 and "fc" in r.stderr and "48 inputs" in r.stderr, r.stderr
    assert not (tmp_path / "t.pth").exists()
    # every way out the message names
    for option in ("-R flatten=", "-R flatten=as-is", 'permute = "flatten:HWC->CHW:'):
        assert option in r.stderr, (option, r.stderr)
    r = run_cli("convert", prefix, tmp_path / "t.pth", "-R", "flatten=4x3")
    assert r.returncode == 0 and "permuted" in r.stdout, r.stdout + r.stderr
    assert_same_outputs(torch_out(torch, load_pth(torch, torch_net(torch), tmp_path / "t.pth"), X), want)
    r = run_cli("convert", prefix, tmp_path / "r.pth", "--rules", _rules(tmp_path, RULE_READ))
    assert r.returncode == 0 and "permuted" in r.stdout, r.stdout + r.stderr
    assert_same_outputs(torch_out(torch, load_pth(torch, torch_net(torch), tmp_path / "r.pth"), X), want)
    r = run_cli("convert", prefix, tmp_path / "a.pth", "-R", "flatten=as-is")
    assert r.returncode == 0 and "as-is" in r.stdout, r.stdout + r.stderr
    assert rel_diff(torch_out(torch, load_pth(torch, torch_net(torch), tmp_path / "a.pth"), X), want) > 1e-2


def test_tf2_round_trip_through_the_hub_keeps_the_order(keras, tmp_path):
    """TF2 -> hub with flatten=4x3 (canonical rows, recorded) -> the TF2 template of another
    instance: the writer permutes back from the record, no option needed."""
    import tensorflow as tf
    k, prefix = _tf2_checkpoint(keras, tmp_path)
    hubfmt.convert(prefix, tmp_path / "h.safetensors", read_options={"flatten": "4x3"})
    k2, tmpl = _tf2_checkpoint(keras, tmp_path / "other", seed=7)
    (tmp_path / "out").mkdir()
    report = hubfmt.convert(tmp_path / "h.safetensors", tmp_path / "out" / "ckpt.index", template=tmpl)
    assert report.counts()["permuted"] == 1
    tf.train.Checkpoint(model=k2).read(str(tmp_path / "out" / "ckpt")).assert_existing_objects_matched()
    assert_same_outputs(k2.predict(X, verbose=0), k.predict(X, verbose=0))


# ---- TF checkpoints as destinations --------------------------------------------------------------

def test_torch_to_tf2_checkpoint_is_refused_then_decided(keras, torch, tmp_path):
    import tensorflow as tf
    net = torch_net(torch)
    torch.save(net.state_dict(), tmp_path / "t.pth")
    want = torch_out(torch, net, X)
    _, tmpl = _tf2_checkpoint(keras, tmp_path, seed=5)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "ckpt.index"
    r = run_cli("convert", tmp_path / "t.pth", out, "--template", tmpl)
    assert r.returncode == 2 and "fc" in r.stderr and "-W flatten=" in r.stderr, r.stderr
    assert 'permute = "flatten:CHW->HWC:' in r.stderr, r.stderr
    assert not out.exists()
    for how, args in (("option", ["-W", "flatten=4x3"]), ("rule", ["--rules", _rules(tmp_path, RULE_WRITE)])):
        r = run_cli("convert", tmp_path / "t.pth", out, "--template", tmpl, "--overwrite", *args)
        assert r.returncode == 0 and "CHW->HWC" in r.stdout, (how, r.stdout + r.stderr)
        k = keras_net(keras, seed=9)
        tf.train.Checkpoint(model=k).read(str(tmp_path / "out" / "ckpt")).assert_existing_objects_matched()
        assert_same_outputs(k.predict(X, verbose=0), want)


def test_torch_to_tf1_checkpoint_by_rule_is_refused_then_decided(keras, torch, tmp_path):
    import tensorflow as tf
    net = torch_net(torch)
    torch.save(net.state_dict(), tmp_path / "t.pth")
    with pytest.raises(ConversionError, match="-W flatten=HxW"):
        hubfmt.convert(tmp_path / "t.pth", tmp_path / "m.index")
    assert not (tmp_path / "m.index").exists()
    hubfmt.convert(tmp_path / "t.pth", tmp_path / "m.index", write_options={"flatten": "4x3"})
    reader = tf.train.load_checkpoint(str(tmp_path / "m"))
    k = keras_net(keras, seed=9)
    for name, v in _tf1_names(k).items():      # TF1 names by rule
        v.assign(reader.get_tensor(name))
    assert_same_outputs(k.predict(X, verbose=0), torch_out(torch, net, X))


def test_in_memory_tf_variables_refuse_then_decide(keras, torch):
    import tensorflow as tf
    from hubfmt.adapters import tensorflow as tfa, torch as ta
    net = torch_net(torch)
    k = keras_net(keras, seed=9)
    variables = _tf1_names(k)
    with pytest.raises(ConversionError, match="fc.*-W flatten="):
        tfa.to_model(ta.from_model(net), variables)
    tfa.to_model(ta.from_model(net), variables, flatten="4x3")
    assert_same_outputs(k.predict(X, verbose=0), torch_out(torch, net, X))
    # and from TF variables: refused until decided
    back = tfa.from_model({n: tf.Variable(v.numpy()) for n, v in variables.items()})
    with pytest.raises(ConversionError, match="-R flatten="):
        ta.to_model(back, torch_net(torch))


# ---- the rules-file op on Keras files -------------------------------------------------------------

def test_rules_op_decides_bare_keras_files_both_ways(keras, torch, tmp_path):
    k = keras_net(keras)
    k.save_weights(str(tmp_path / "k.weights.h5"))
    want = k.predict(X, verbose=0)
    r = run_cli("convert", tmp_path / "k.weights.h5", tmp_path / "t.pth")
    assert r.returncode == 2 and 'permute = "flatten:HWC->CHW:' in r.stderr and "-R template=" in r.stderr, r.stderr
    r = run_cli("convert", tmp_path / "k.weights.h5", tmp_path / "t.pth", "--rules", _rules(tmp_path, RULE_READ))
    assert r.returncode == 0, r.stderr
    assert_same_outputs(torch_out(torch, load_pth(torch, torch_net(torch), tmp_path / "t.pth"), X), want)
    # the hub file records what the rule decided
    hubfmt.convert(tmp_path / "k.weights.h5", tmp_path / "h.safetensors", rules=_rules(tmp_path, RULE_READ))
    attrs = hubfmt.read(tmp_path / "h.safetensors").layers["fc"].attrs
    assert attrs["flatten"] == [4, 4, 3] and attrs["flatten_source"] == "HWC" and "flatten_undecided" not in attrs

    net = torch_net(torch)
    torch.save(net.state_dict(), tmp_path / "n.pth")
    r = run_cli("convert", tmp_path / "n.pth", tmp_path / "o.weights.h5")
    assert r.returncode == 2 and 'permute = "flatten:CHW->HWC:' in r.stderr and "--template" in r.stderr, r.stderr
    r = run_cli("convert", tmp_path / "n.pth", tmp_path / "o.weights.h5", "--rules", _rules(tmp_path, RULE_WRITE))
    assert r.returncode == 0, r.stderr
    k2 = keras_net(keras, seed=9)
    k2.load_weights(str(tmp_path / "o.weights.h5"))
    assert_same_outputs(k2.predict(X, verbose=0), torch_out(torch, net, X))
    # as-is is the user's word: kept and reported (here wrong, so it shows)
    r = run_cli("convert", tmp_path / "n.pth", tmp_path / "a.weights.h5", "--rules",
                _rules(tmp_path, RULE_WRITE.replace("flatten:CHW->HWC:4x3", "flatten:as-is")))
    assert r.returncode == 0 and "as-is" in r.stdout, r.stderr
    k2.load_weights(str(tmp_path / "a.weights.h5"))
    assert rel_diff(k2.predict(X, verbose=0), torch_out(torch, net, X)) > 1e-2


def test_rules_op_is_checked():
    for bad in ("flatten:HWC->HWC:4x3", "flatten:HWC->CHW", "flatten:HWC->CHW:0x3", "transpose"):
        with pytest.raises(ConversionError, match="not a flatten order"):
            RuleSet.from_dicts([{"glob": "fc.weight", "replace": "fc.weight", "permute": bad}])
    with pytest.raises(ConversionError, match="neither reshapes"):
        RuleSet.from_dicts([{"glob": "fc.weight", "replace": "fc.weight", "permute": "flatten:as-is",
                             "reshape": "conv1x1"}])
    rules = RuleSet.from_dicts([{"glob": "a.*", "replace": r"b.\1", "permute": "flatten:HWC->CHW:4x3"}])
    assert rules.inverse().rules[0].permute == "flatten:CHW->HWC:4x3"
    assert RuleSet.loads(rules.dumps()).rules[0].permute == "flatten:HWC->CHW:4x3"


def test_rules_op_shape_must_divide_the_inputs(keras, tmp_path):
    keras_net(keras).save_weights(str(tmp_path / "k.weights.h5"))
    rules = _rules(tmp_path, RULE_READ.replace("4x3", "5x5"))
    with pytest.raises(ConversionError, match="5x5 does not divide its 48 inputs"):
        hubfmt.convert(tmp_path / "k.weights.h5", tmp_path / "t.pth", rules=rules)


def test_rules_op_never_permutes_twice(keras, tmp_path):
    keras_net(keras).save(str(tmp_path / "k.keras"))        # its config gives the map: already permuted
    with pytest.raises(ConversionError, match="permute them twice"):
        hubfmt.convert(tmp_path / "k.keras", tmp_path / "t.pth", rules=_rules(tmp_path, RULE_READ))
    assert not (tmp_path / "t.pth").exists()


# ---- in-memory destinations refuse an undecided checkpoint ---------------------------------------

def test_mxnet_and_mindspore_to_model_refuse_then_decide(keras, tmp_path):
    from hubfmt.adapters import keras as ka
    k = keras_net(keras)
    k.save_weights(str(tmp_path / "k.weights.h5"))
    want = k.predict(X, verbose=0)
    undecided = ka.read(str(tmp_path / "k.weights.h5"))
    decided = ka.read(str(tmp_path / "k.weights.h5"), flatten="4x3")
    nchw = np.ascontiguousarray(X.transpose(0, 3, 1, 2))

    mx = require("mxnet")
    from hubfmt.adapters import mxnet as mxa
    # An explicit prefix and children made in its scope: Gluon's global name counters stay untouched
    # (other tests' parameter names depend on them).
    gnet = mx.gluon.nn.HybridSequential(prefix="flatdecide_")
    with gnet.name_scope():
        gnet.add(mx.gluon.nn.Conv2D(4, 3, in_channels=3, activation="relu"), mx.gluon.nn.Flatten(),
                 mx.gluon.nn.Dense(5, in_units=48, activation="relu"), mx.gluon.nn.Dense(3, in_units=5))
    gnet.initialize()
    with pytest.raises(ConversionError, match="fc.*-R flatten="):
        mxa.to_model(undecided, gnet)
    mxa.to_model(decided, gnet, strict=True)
    assert_same_outputs(gnet(mx.nd.array(nchw)).asnumpy(), want)

    ms = require("mindspore")
    from hubfmt.adapters import mindspore as msa
    from collections import OrderedDict
    cell = ms.nn.SequentialCell(OrderedDict([
        ("conv", ms.nn.Conv2d(3, 4, 3, pad_mode="valid", has_bias=True)), ("relu1", ms.nn.ReLU()),
        ("flat", ms.nn.Flatten()), ("fc", ms.nn.Dense(48, 5)), ("relu2", ms.nn.ReLU()), ("out", ms.nn.Dense(5, 3))]))
    with pytest.raises(ConversionError, match="fc.*-R flatten="):
        msa.to_model(undecided, cell)
    msa.to_model(decided, cell)
    assert_same_outputs(cell(ms.Tensor(nchw)).asnumpy(), want)


ONEFLOW_REFUSES = """
import sys
import oneflow as flow
from hubfmt.adapters import oneflow as ofa, tensorflow as tfa
from hubfmt.errors import ConversionError
net = flow.nn.Sequential(flow.nn.Conv2d(3, 4, 3), flow.nn.ReLU(), flow.nn.Flatten(), flow.nn.Linear(48, 5),
                         flow.nn.ReLU(), flow.nn.Linear(5, 3))
try:
    ofa.to_model(tfa.read(sys.argv[1]), net)
except ConversionError as e:
    assert "fc" in str(e) and "-R flatten=" in str(e), str(e)
    print("REFUSED")
"""


def test_oneflow_to_model_refuses(keras, tmp_path):
    import subprocess
    _, prefix = _tf1_checkpoint(keras, tmp_path)
    proc = subprocess.run([oneflow_python(), "-c", ONEFLOW_REFUSES, prefix], capture_output=True, text=True,
                          timeout=600, env=CLEAN_ENV)
    assert proc.returncode == 0 and "REFUSED" in proc.stdout, proc.stdout + proc.stderr[-3000:]


# ---- the map's shape from an MXNet symbol --------------------------------------------------------

def _mxnet_symbol_checkpoint(mx, tmp_path, data_shape=True, seed=0):
    """The Keras net as an MXNet symbol (Module checkpoint prefix-0000.params + prefix-symbol.json);
    the data variable carries its shape (1, 3, H, W) when `data_shape`."""
    from test_flatten_order import CIN, H, W
    data = mx.sym.var("data", shape=(1, CIN, H, W)) if data_shape else mx.sym.var("data")
    # every operator named: MXNet's global name counters stay untouched (other tests depend on them)
    y = mx.sym.Activation(mx.sym.Convolution(data, num_filter=4, kernel=(3, 3), name="conv"), act_type="relu",
                          name="relu1")
    y = mx.sym.FullyConnected(mx.sym.Flatten(y, name="flat"), num_hidden=5, name="fc")
    sym = mx.sym.FullyConnected(mx.sym.Activation(y, act_type="relu", name="relu2"), num_hidden=3, name="out")
    rng = np.random.default_rng(seed)
    shapes = dict(zip(sym.list_arguments(), sym.infer_shape(data=(1, CIN, H, W))[0], strict=True))
    args = {n: mx.nd.array(rng.normal(0, 0.5, s).astype(np.float32)) for n, s in shapes.items() if n != "data"}
    prefix = str(tmp_path / ("sym" if data_shape else "bare"))
    mx.model.save_checkpoint(prefix, 0, sym, args, {})
    return sym, args, prefix


def _mxnet_forward(mx, sym, args, x):
    exe = sym.bind(mx.cpu(), {"data": mx.nd.array(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), **args})
    return exe.forward(is_train=False)[0].asnumpy()


def test_mxnet_symbol_gives_the_map_both_ways(keras, tmp_path):
    mx = require("mxnet")
    sym, args, prefix = _mxnet_symbol_checkpoint(mx, tmp_path)
    want = _mxnet_forward(mx, sym, args, X)
    assert hubfmt.read(f"{prefix}-0000.params").layers["fc"].attrs["flatten"] == [4, 4, 3]
    # MXNet -> a bare Keras .weights.h5 (no config anywhere): the symbol's shapes decide
    keras_net(keras, seed=5).save_weights(str(tmp_path / "tmpl.weights.h5"))
    report = hubfmt.convert(f"{prefix}-0000.params", tmp_path / "o.weights.h5", template=tmp_path / "tmpl.weights.h5")
    assert report.counts()["permuted"] == 1
    k = keras_net(keras, seed=9)
    k.load_weights(str(tmp_path / "o.weights.h5"))
    assert_same_outputs(k.predict(X, verbose=0), want)
    # a bare Keras .weights.h5 -> MXNet with the symbol checkpoint as template: permuted onto it
    k = keras_net(keras, seed=3)
    k.save_weights(str(tmp_path / "k.weights.h5"))
    report = hubfmt.convert(tmp_path / "k.weights.h5", tmp_path / "back-0000.params", template=f"{prefix}-0000.params")
    assert [e.name for e in report.events if e.action == "permuted"] == ["fc.weight"]
    back = {k2.split(":", 1)[1]: v for k2, v in mx.nd.load(str(tmp_path / "back-0000.params")).items()}
    assert_same_outputs(_mxnet_forward(mx, sym, back, X), k.predict(X, verbose=0))


def test_mxnet_symbol_without_a_data_shape_is_refused_naming_the_layer(keras, tmp_path):
    mx = require("mxnet")
    _, _, prefix = _mxnet_symbol_checkpoint(mx, tmp_path, data_shape=False)
    assert not isinstance(hubfmt.read(f"{prefix}-0000.params").layers["fc"].attrs.get("flatten"), list)
    r = run_cli("convert", f"{prefix}-0000.params", tmp_path / "o.weights.h5")
    assert r.returncode == 2 and "fc" in r.stderr and "-W flatten=" in r.stderr, r.stderr
    assert not (tmp_path / "o.weights.h5").exists()


# ---- the map's shape from a torch pickled module (torchvision VGG16 <-> keras.applications) ------

def _vgg(keras, torch):
    from zoo import import_torchvision
    tv = import_torchvision()
    k = keras.applications.VGG16(weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None)
    t = tv.models.vgg16(num_classes=10)
    t.avgpool = torch.nn.AdaptiveAvgPool2d((2, 2))     # 64x64 in: a 2x2x512 map, a known output size
    t.classifier[0] = torch.nn.Linear(512 * 2 * 2, 4096)
    return k, t.eval()


def test_torch_pickled_vgg16_gives_the_map_both_ways(keras, torch, tmp_path):
    k, t = _vgg(keras, torch)
    x = np.random.default_rng(2).normal(0, 1, (2, 64, 64, 3)).astype(np.float32)
    torch.save(t, tmp_path / "vgg_module.pt")                      # the whole module, pickled
    assert hubfmt.read(tmp_path / "vgg_module.pt").layers["classifier.0"].attrs["flatten"] == [512, 2, 2]
    # torch -> bare Keras .weights.h5 (its template has no config): the pickled module decides
    k.save_weights(str(tmp_path / "tmpl.weights.h5"))
    report = hubfmt.convert(tmp_path / "vgg_module.pt", tmp_path / "vgg.weights.h5", template=tmp_path / "tmpl.weights.h5")
    assert report.counts()["permuted"] == 1
    k.load_weights(str(tmp_path / "vgg.weights.h5"))
    assert_same_outputs(k.predict(x, verbose=0), torch_out(torch, t, x))
    # bare Keras .weights.h5 -> torch with the pickled module as template
    with torch.no_grad():
        for p in t.parameters():
            p.mul_(1.1)
    torch.save(t, tmp_path / "tmpl_module.pt")
    k2, _ = _vgg(keras, torch)
    k2.save_weights(str(tmp_path / "k2.weights.h5"))
    report = hubfmt.convert(tmp_path / "k2.weights.h5", tmp_path / "t2.pth", template=tmp_path / "tmpl_module.pt")
    assert [e.name for e in report.events if e.action == "permuted"] == ["classifier.0.weight"]
    t.load_state_dict(torch.load(tmp_path / "t2.pth", weights_only=True), strict=True)
    assert_same_outputs(torch_out(torch, t, x), k2.predict(x, verbose=0))
