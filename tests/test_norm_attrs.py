"""Norm eps/momentum compared with a destination that records them, and the refusal hint on an
architecture mismatch (#14 "what else").

A weights file carries no eps: Keras's 1e-3 against torch's 1e-5 converts exactly and still
gives other outputs. When the destination records layer attributes (a torch pickled module or
live module, a .keras config), the conversion warns naming both values. When alignment leaves a
whole family or block of layers unmatched, the refusal does not suggest --allow-missing or
--allow-unexpected (that would write a wrong model).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import hubfmt
from hubfmt.errors import AlignmentError

from conftest import assert_same_outputs, rel_diff, require

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
torch = require("torch")
X = np.random.default_rng(3).normal(0, 1, (2, 8, 8, 3)).astype(np.float32)


class Twin(torch.nn.Module):
    """conv -> batch norm -> global mean -> layer norm -> linear, as the Keras model below."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4, eps=eps)
        self.ln = torch.nn.LayerNorm(4, eps=eps)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.ln(self.bn(self.conv(x)).mean((2, 3))))


def twin_out(net, x):
    with torch.no_grad():
        return net.eval()(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def keras_net(keras):
    L = keras.layers
    m = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="conv"), L.BatchNormalization(name="bn"),
                          L.GlobalAveragePooling2D(), L.LayerNormalization(name="ln"), L.Dense(2, name="fc")])
    rng = np.random.default_rng(0)
    for v in m.weights:
        a = rng.normal(0, 0.5, v.shape).astype(v.dtype)
        v.assign(np.abs(a) * 1e-3 + 1e-4 if "variance" in v.path else a)    # small variances: eps matters
    return m


def _warnings(report, kind=""):
    """Layer -> its warnings (of this kind), joined."""
    out: dict[str, str] = {}
    for e in report.events:
        if e.action == "warning" and e.detail.startswith(kind):
            out[e.name] = (out.get(e.name, "") + " | " + e.detail).lstrip(" |")
    return out


def test_keras_to_torch_module_template_warns_eps_with_both_values(keras, tmp_path):
    k = keras_net(keras)
    k.save(str(tmp_path / "k.keras"))
    torch.save(Twin(), tmp_path / "tmpl.pt")                     # a pickled module records eps 1e-5
    report = hubfmt.convert(tmp_path / "k.keras", tmp_path / "o.pth", template=tmp_path / "tmpl.pt")
    bn, ln = _warnings(report, "batch_norm"), _warnings(report, "layer_norm")
    assert "eps 0.001 in the source, 1e-05 in the template" in bn["bn"]
    assert "eps 0.001 in the source, 1e-05 in the template" in ln["ln"]
    assert not any("padding" in e.detail for e in report.events)           # 'valid' == [0, 0]
    want = k.predict(X, verbose=0)
    state = torch.load(tmp_path / "o.pth", weights_only=True)
    # The warning is the difference: the same tensors with torch's eps give other outputs.
    wrong = Twin(1e-5)
    wrong.load_state_dict(state)
    assert rel_diff(twin_out(wrong, X), want) > 1e-3
    right = Twin(1e-3)
    right.load_state_dict(state)
    assert_same_outputs(twin_out(right, X), want)


def test_keras_to_live_torch_module_warns(keras):
    from hubfmt.adapters import keras as ka, torch as ta
    report = ta.to_model(ka.from_model(keras_net(keras)), Twin())
    assert "eps 0.001 in the source, 1e-05 in the destination" in _warnings(report, "batch_norm")["bn"]
    assert "eps 0.001 in the source, 1e-05 in the destination" in _warnings(report, "layer_norm")["ln"]
    report = ta.to_model(ka.from_model(keras_net(keras)), Twin(1e-3))
    assert not _warnings(report, "batch_norm").get("bn", "").count("eps")
    assert "ln" not in _warnings(report, "layer_norm")


def test_torch_module_to_keras_template_warns(keras, tmp_path):
    torch.save(Twin(), tmp_path / "t.pt")
    keras_net(keras).save(str(tmp_path / "tmpl.keras"))
    report = hubfmt.convert(tmp_path / "t.pt", tmp_path / "o.weights.h5", template=tmp_path / "tmpl.keras")
    ws = _warnings(report)
    assert "epsilon 1e-05 in the checkpoint, 0.001 in the destination" in ws["bn"]
    assert "eps 1e-05 in the source, 0.001 in the destination" in ws["ln"]


# ---- the refusal hint --------------------------------------------------------------------------

@pytest.mark.parametrize("src,dst,what", [("resnet18", "resnet34", "missing"), ("resnet34", "resnet18", "unexpected")])
def test_architecture_mismatch_does_not_suggest_allow_flags(tmp_path, src, dst, what):
    from zoo import import_torchvision
    tv = import_torchvision()
    torch.save(getattr(tv.models, src)().state_dict(), tmp_path / "s.pth")
    torch.save(getattr(tv.models, dst)().state_dict(), tmp_path / "t.pth")
    with pytest.raises(AlignmentError) as e:
        hubfmt.convert(tmp_path / "s.pth", tmp_path / "o.pth", template=tmp_path / "t.pth")
    msg = str(e.value)
    assert "relax those" not in msg and "architecture mismatch" in msg and "would write a wrong model" in msg
    assert f"whole blocks {what}: layer1.2" in msg
    assert not (tmp_path / "o.pth").exists()


def test_a_stray_head_still_suggests_the_flags(tmp_path):
    from zoo import import_torchvision
    tv = import_torchvision()
    src = tv.models.resnet18().state_dict()
    tmpl = dict(src)
    tmpl.pop("fc.weight"), tmpl.pop("fc.bias")                 # a headless template: one layer, not a family
    torch.save(src, tmp_path / "s.pth")
    torch.save(tmpl, tmp_path / "t.pth")
    with pytest.raises(AlignmentError, match="relax those"):
        hubfmt.convert(tmp_path / "s.pth", tmp_path / "o.pth", template=tmp_path / "t.pth")
    hubfmt.convert(tmp_path / "s.pth", tmp_path / "o.pth", template=tmp_path / "t.pth", allow_unexpected=True)
