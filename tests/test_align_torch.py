"""Scenarios with real torch models: two independently written implementations of one network, with
different module names and registration orders, converted with a template and no hand-written
table. The oracle is torch itself: the converted model's outputs equal the source model's."""
from __future__ import annotations

import numpy as np
import pytest

from hubfmt.io import hubfile
from hubfmt import align
from hubfmt.pipeline import rename
from hubfmt.alignment.rules import RuleSet

from conftest import assert_same_outputs, require, run_cli
from torch_nets import (ConvClassifierNet, DenseClassifierNet, EfficientNetA, EfficientNetB, FusedAttention, GateLSTM,
                        ResNetA, ResNetB, SplitAttention, TorchLSTM, as_numpy, checkpoint_of, load_into, randomize)

torch = require("torch")
X = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)


def convert_in_memory(src_model, dst_model, **kw):
    """Source model -> canonical -> aligned to the destination's own (initialised) parameters -> destination."""
    src = checkpoint_of(src_model)
    ckpt, table = rename(src, template=checkpoint_of(dst_model), **kw)
    load_into(dst_model, ckpt)
    return ckpt, table


@pytest.mark.parametrize("src_cls, dst_cls", [
    (EfficientNetA, EfficientNetB), (EfficientNetB, EfficientNetA),
    (ConvClassifierNet, DenseClassifierNet), (DenseClassifierNet, ConvClassifierNet),
    (ResNetA, ResNetB), (ResNetB, ResNetA),
])
def test_two_implementations_convert_with_a_template(src_cls, dst_cls):
    torch.manual_seed(0)
    src_model, dst_model = randomize(src_cls(), 1), randomize(dst_cls(), 2)
    before = as_numpy(dst_model, X)
    _, table = convert_in_memory(src_model, dst_model)
    assert "no problems" in table
    assert_same_outputs(as_numpy(dst_model, X), as_numpy(src_model, X))
    assert np.abs(before - as_numpy(dst_model, X)).max() > 1e-3      # the weights did change


def test_resnet_batch_norms_follow_their_convs_when_the_shortcut_is_registered_first():
    a = align(checkpoint_of(randomize(ResNetA())), checkpoint_of(ResNetB()))
    pairs = a.layer_map()
    assert pairs["stage2.0.shortcut.1"] == "layer2.0.downsample.1"
    assert pairs["stage2.0.bn_a"] == "layer2.0.bn1" and pairs["stage2.0.bn_b"] == "layer2.0.bn2"


def test_torch_files_through_the_cli(tmp_path):
    """torch.save writes both files, the CLI converts with the template, torch.load reads the result."""
    pytest.importorskip("hubfmt.adapters.torch.reader", reason="the torch adapter is not on this branch yet")
    src_model, dst_model = randomize(EfficientNetA(), 3), EfficientNetB()
    s, t, out = tmp_path / "a.pth", tmp_path / "b_init.pth", tmp_path / "b.pth"
    torch.save(src_model.state_dict(), s)
    torch.save(dst_model.state_dict(), t)
    r = run_cli("convert", s, out, "--template", t)
    assert r.returncode == 0, r.stderr
    assert "renamed" in r.stdout and "_blocks.0._bn1.weight" in r.stdout
    dst_model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert_same_outputs(as_numpy(dst_model, X), as_numpy(src_model, X))


def test_hub_files_through_the_cli(tmp_path):
    src_model, dst_model = randomize(EfficientNetA(), 3), EfficientNetB()
    s, t, out = tmp_path / "a.safetensors", tmp_path / "b_init.safetensors", tmp_path / "b.safetensors"
    hubfile.write(checkpoint_of(src_model), s)
    hubfile.write(checkpoint_of(dst_model), t)
    r = run_cli("convert", s, out, "--template", t, "-q")
    assert r.returncode == 0, r.stderr
    load_into(dst_model, hubfile.read(out))
    assert_same_outputs(as_numpy(dst_model, X), as_numpy(src_model, X))


def test_width_mismatch_between_real_models_is_refused():
    from hubfmt.errors import AlignmentError

    src = checkpoint_of(EfficientNetA())
    with pytest.raises(AlignmentError) as e:
        rename(src, template=checkpoint_of(EfficientNetB(widths=((8, 8), (8, 8), (8, 24), (24, 24)))))
    assert "mismatch" in e.value.table and "source [16, 8, 1, 1] vs template [24, 8, 1, 1]" in e.value.table


GATE_RULES = r"""
[[rule]]
glob = '{part}_x.*'
replace = 'rnn.\1_ih_l0'
merge = { axis = 0, parts = ["i", "f", "g", "o"] }

[[rule]]
glob = '{part}_h.*'
replace = 'rnn.\1_hh_l0'
merge = { axis = 0, parts = ["i", "f", "g", "o"] }
"""


def test_lstm_gates_merged_by_rules_then_split_back():
    torch.manual_seed(0)
    gates, fused = randomize(GateLSTM(5, 7), 4), randomize(TorchLSTM(5, 7), 5)
    x = np.random.default_rng(1).standard_normal((6, 2, 5)).astype(np.float32)
    rules = RuleSet.loads(GATE_RULES)
    ckpt, _ = rename(checkpoint_of(gates), rules=rules, template=checkpoint_of(fused))
    load_into(fused, ckpt)
    assert_same_outputs(as_numpy(fused, x), as_numpy(gates, x))
    # Back: the inverse rules split torch's fused tensors into per-gate Linear layers.
    other = randomize(GateLSTM(5, 7), 6)
    back, _ = rename(checkpoint_of(fused), rules=rules.inverse(), template=checkpoint_of(other))
    load_into(other, back)
    assert_same_outputs(as_numpy(other, x), as_numpy(gates, x))


QKV_RULES = r"""
[[rule]]
glob = '**.in_proj_*'
replace = '\1.{part}.\2'
split = { axis = 0, parts = ["q", "k", "v"] }
"""


def test_fused_attention_split_by_rules_then_aligned():
    """nn.MultiheadAttention keeps q, k, v in one in_proj tensor; the other implementation has
    three Linear layers. Rules split the fused tensor, alignment does the names."""
    fused, split = randomize(FusedAttention(), 8), randomize(SplitAttention(), 9)
    x = np.random.default_rng(3).standard_normal((2, 5, 8)).astype(np.float32)
    rules = RuleSet.loads(QKV_RULES)
    ckpt, table = rename(checkpoint_of(fused), rules=rules, template=checkpoint_of(split))
    assert "split" in table and "attn.in_proj_weight" in table
    load_into(split, ckpt)
    assert_same_outputs(as_numpy(split, x), as_numpy(fused, x))
    # ... and back: align to the fused template seen through the rules, then merge with their inverse.
    other = randomize(FusedAttention(), 10)
    renamed, _ = rename(checkpoint_of(split), template=rules.apply(checkpoint_of(other)))
    load_into(other, rules.inverse().apply(renamed))
    assert_same_outputs(as_numpy(other, x), as_numpy(fused, x))


class _FlattenHead(torch.nn.Module):
    """conv -> flatten a 4x3x3 map -> Linear: torchvision's VGG head."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv2d(3, 4, 3, stride=5)     # 16x16 -> 3x3
        self.fc = torch.nn.Linear(4 * 3 * 3, 6)

    def forward(self, x):
        return self.fc(self.features(x).relu().flatten(1))


class _ConvHead(torch.nn.Module):
    """conv -> a valid 3x3 conv on the 3x3 map -> flatten: timm's ConvMlp VGG head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, stride=5)
        self.head = torch.nn.Conv2d(4, 6, 3)

    def forward(self, x):
        return self.head(self.stem(x).relu()).flatten(1)


@pytest.mark.parametrize("src_cls, dst_cls", [(_FlattenHead, _ConvHead), (_ConvHead, _FlattenHead)])
def test_a_linear_over_a_flattened_map_is_the_valid_conv_on_it(src_cls, dst_cls, tmp_path):
    torch.manual_seed(0)
    src_model, dst_model = randomize(src_cls(), 1), randomize(dst_cls(), 2)
    ckpt, table = convert_in_memory(src_model, dst_model)
    assert "no problems" in table and "conv_fc" in table
    assert_same_outputs(as_numpy(dst_model, X), as_numpy(src_model, X))
    assert [e.name for e in ckpt.report.of("reshaped")] == ["head.weight" if dst_cls is _ConvHead else "fc.weight"]
    # A rules file has no form for the reshape yet: saving one says so instead of writing a wrong rule.
    torch.save(src_model.state_dict(), tmp_path / "s.pth")
    torch.save(dst_model.state_dict(), tmp_path / "t.pth")
    r = run_cli("align", tmp_path / "s.pth", tmp_path / "t.pth", "--save-rules", tmp_path / "r.toml")
    assert r.returncode != 0 and "no rules-file form" in r.stderr and not (tmp_path / "r.toml").exists(), r.stderr
