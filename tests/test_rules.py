"""Rename rules (hubfmt.rules) and the tables they produce (hubfmt.mapping): no framework needed."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubfmt import Checkpoint, ConversionError, HubfmtError, LazyTensor, TensorInfo
from hubfmt.io import hubfile
from hubfmt.alignment.rules import RuleSet, load_rules

from conftest import REPO

RNG = np.random.default_rng(0)


def ckpt_of(tensors: dict[str, tuple], kinds: dict[str, str] | None = None) -> Checkpoint:
    c = Checkpoint()
    for name, shape in tensors.items():
        kind = (kinds or {}).get(name.rpartition(".")[0], "tensor")
        c.add(name, LazyTensor.from_array(RNG.standard_normal(shape).astype(np.float32)), TensorInfo(kind=kind))
    return c


def assert_same_tensors(a: Checkpoint, b: Checkpoint) -> None:
    assert list(a) == list(b)
    for n in a:
        assert a[n].tensor.shape == b[n].tensor.shape, n
        np.testing.assert_array_equal(a.tensor(n), b.tensor(n))


EFFNET_RULES = r"""
[[rule]]
glob = "_blocks.*._bn1.*"
replace = 'blocks.\1.bn1.\2'

[[rule]]
pattern = '_blocks\.(\d+)\._(\w+)_conv\.weight'
replace = 'blocks.\1.conv_\2.weight'

[[rule]]
glob = "_blocks.**"
replace = 'rest.\1'
"""


def test_first_matching_rule_wins_and_unmatched_names_are_kept():
    src = ckpt_of({"_blocks.0._bn1.weight": (4,), "_blocks.0._depthwise_conv.weight": (4, 1, 3, 3),
                   "_blocks.0._bn2.bias": (4,), "_fc.weight": (2, 4)})
    out = RuleSet.loads(EFFNET_RULES).apply(src)
    assert list(out) == ["blocks.0.bn1.weight", "blocks.0.conv_depthwise.weight", "rest.0._bn2.bias", "_fc.weight"]
    np.testing.assert_array_equal(out.tensor("blocks.0.conv_depthwise.weight"), src.tensor("_blocks.0._depthwise_conv.weight"))
    assert out["blocks.0.bn1.weight"].info.layer == "blocks.0.bn1" and out["blocks.0.bn1.weight"].info.role == "weight"
    assert out["blocks.0.bn1.weight"].info.original_name == "_blocks.0._bn1.weight"
    first = out.report.of("renamed")[0]
    assert (first.name, first.to, first.detail) == ("_blocks.0._bn1.weight", "blocks.0.bn1.weight", "rule 1: glob _blocks.*._bn1.* -> blocks.\\1.bn1.\\2")
    assert "_fc.weight" not in out.report.names("renamed")


def test_dry_run_table_names_rule_and_operation():
    src = ckpt_of({"_blocks.0._bn1.weight": (4,), "fc6.weight": (10, 8, 1, 1), "fc6.bias": (10,)})
    rules = RuleSet.loads(EFFNET_RULES + "[[rule]]\nglob = 'fc6.*'\nreplace = 'classifier.\\1'\nreshape = 'conv1x1'\n")
    table = rules.plan(src).to_text()
    assert "blocks.0.bn1.weight" in table and "rule 1: glob _blocks.*._bn1.*" in table
    assert "conv1x1" in table.splitlines()[2]
    # nothing was loaded or built: planning works on names and shapes only
    bomb = Checkpoint()
    bomb.add("fc6.weight", LazyTensor((10, 8, 1, 1), "float32", lambda: pytest.fail("data was read")))
    rules.apply(bomb)


def test_conv1x1_reshape_both_ways_keeps_file_span(tmp_path):
    src = ckpt_of({"fc6.weight": (10, 8, 1, 1), "fc6.bias": (10,)}, {"fc6": "conv2d"})
    path = tmp_path / "dpn.safetensors"
    hubfile.write(src, path)
    on_disk = hubfile.read(path)
    fwd = RuleSet.loads("[[rule]]\nglob = 'fc6.*'\nreplace = 'classifier.\\1'\nreshape = 'conv1x1'\n")
    out = fwd.apply(on_disk)
    assert out["classifier.weight"].tensor.shape == (10, 8)
    assert out["classifier.weight"].tensor.span is not None          # still a file-to-file copy
    assert out["classifier.weight"].info.kind == "linear" and out["classifier.bias"].tensor.shape == (10,)
    np.testing.assert_array_equal(out.tensor("classifier.weight"), src.tensor("fc6.weight")[:, :, 0, 0])
    assert [e.name for e in out.report.of("reshaped")] == ["classifier.weight"]
    back = fwd.inverse().apply(out)
    assert_same_tensors(back, src)
    assert back["fc6.weight"].info.kind == "conv2d"


def test_conv1x1_on_a_3x3_kernel_is_an_error():
    src = ckpt_of({"fc6.weight": (10, 8, 3, 3)})
    with pytest.raises(ConversionError, match=r"fc6.weight.*neither \[out,in\]"):
        RuleSet.loads("[[rule]]\nglob = 'fc6.*'\nreplace = 'fc.\\1'\nreshape = 'conv1x1'\n").plan(src)


QKV = r"""
[[rule]]
glob = "**.qkv.*"
replace = '\1.{part}.\2'
split = { axis = 0, parts = ["q", "k", "v"] }
"""


def test_fused_qkv_split_and_merge_via_rules(tmp_path):
    src = ckpt_of({"blocks.0.attn.qkv.weight": (24, 8), "blocks.0.attn.qkv.bias": (24,), "blocks.0.attn.proj.weight": (8, 8)})
    hubfile.write(src, tmp_path / "vit.safetensors")
    on_disk = hubfile.read(tmp_path / "vit.safetensors")
    rules = RuleSet.loads(QKV)
    split = rules.apply(on_disk)
    assert list(split) == ["blocks.0.attn.q.weight", "blocks.0.attn.k.weight", "blocks.0.attn.v.weight",
                           "blocks.0.attn.q.bias", "blocks.0.attn.k.bias", "blocks.0.attn.v.bias",
                           "blocks.0.attn.proj.weight"]
    w = src.tensor("blocks.0.attn.qkv.weight")
    np.testing.assert_array_equal(split.tensor("blocks.0.attn.k.weight"), w[8:16])
    assert split["blocks.0.attn.k.weight"].tensor.span.offset == on_disk["blocks.0.attn.qkv.weight"].tensor.span.offset + 8 * 8 * 4
    merge = rules.inverse()
    assert merge.rules[0].merge == {"axis": 0, "parts": ["q", "k", "v"]}
    back = merge.apply(split)
    assert_same_tensors(back, src)


def test_lstm_gates_split_along_axis_with_sizes():
    h, n_in = 3, 5
    src = ckpt_of({"rnn.weight_ih_l0": (4 * h, n_in), "rnn.bias_ih_l0": (4 * h,)})
    rules = RuleSet.loads("[[rule]]\npattern = 'rnn\\.(weight|bias)_ih_l0'\nreplace = 'cell.{part}.\\1'\n"
                          "split = { axis = 0, parts = ['i', 'f', 'g', 'o'] }\n")
    out = rules.apply(src)
    np.testing.assert_array_equal(out.tensor("cell.g.weight"), src.tensor("rnn.weight_ih_l0")[2 * h:3 * h])
    # A merge rule puts the gates back in `parts` order, whatever order the tensors come in.
    merge = RuleSet.loads("[[rule]]\npattern = 'cell\\.{part}\\.(weight|bias)'\nreplace = 'rnn.\\1_ih_l0'\n"
                          "merge = { axis = 0, parts = ['i', 'f', 'g', 'o'] }\n")
    shuffled = Checkpoint()
    for n in sorted(out, reverse=True):
        shuffled.add(n, out[n].tensor, TensorInfo())
    back = merge.apply(shuffled)
    for n in src:
        np.testing.assert_array_equal(back.tensor(n), src.tensor(n))
    uneven = RuleSet.loads("[[rule]]\nglob = 'w.*'\nreplace = 'w.{part}.\\1'\nsplit = { axis = 1, parts = ['a', 'b'], sizes = [1, 4] }\n")
    parts = uneven.apply(ckpt_of({"w.weight": (2, 5)}))
    assert parts["w.a.weight"].tensor.shape == (2, 1) and parts["w.b.weight"].tensor.shape == (2, 4)


def test_incomplete_merge_and_bad_split_are_errors():
    merge = RuleSet.loads("[[rule]]\npattern = '{part}\\.weight'\nreplace = 'qkv.weight'\nmerge = { axis = 0, parts = ['q', 'k', 'v'] }\n")
    with pytest.raises(ConversionError, match="lacks part.*v"):
        merge.plan(ckpt_of({"q.weight": (2, 2), "k.weight": (2, 2)}))
    with pytest.raises(ConversionError, match="cannot merge"):
        merge.apply(ckpt_of({"q.weight": (2, 2), "k.weight": (2, 3), "v.weight": (2, 2)}))
    with pytest.raises(ConversionError, match="does not split into 3 parts"):
        RuleSet.loads(QKV).plan(ckpt_of({"a.qkv.weight": (10, 4)}))


def test_collisions_are_errors():
    src = ckpt_of({"a.weight": (2,), "b.weight": (2,)})
    with pytest.raises(ConversionError, match="would both be named c.weight"):
        RuleSet.loads("[[rule]]\npattern = '[ab]\\.weight'\nreplace = 'c.weight'\n").plan(src)
    with pytest.raises(ConversionError, match="would both be named b.weight"):
        RuleSet.loads("[[rule]]\nglob = 'a.*'\nreplace = 'b.\\1'\n").plan(src)


@pytest.mark.parametrize("text, message", [
    ("[[rule]]\nglob = 'a'\n", "'replace'"),
    ("[[rule]]\nglob = 'a'\npattern = 'a'\nreplace = 'b'\n", "exactly one of"),
    ("[[rule]]\nglob = 'a'\nreplace = 'b'\nflip = true\n", "unknown key"),
    ("[[rule]]\npattern = '('\nreplace = 'b'\n", "bad pattern"),
    ("[[rule]]\nglob = 'a'\nreplace = 'b'\nreshape = 'transpose'\n", "conv1x1"),
    ("[[rule]]\nglob = 'a.*'\nreplace = 'b'\nsplit = { parts = ['q', 'k'] }\n", r"needs \{part\} in its replace"),
    ("[[rule]]\nglob = 'a.*'\nreplace = '{part}'\nsplit = { parts = ['q'] }\n", "at least two"),
    ("[[rule]\n", "not a valid TOML"),
    ("[other]\nx = 1\n", r"only \[\[rule\]\] tables"),
])
def test_bad_rules_files_get_one_clear_error(tmp_path, text, message):
    p = tmp_path / "r.toml"
    p.write_text(text)
    with pytest.raises(ConversionError, match=message) as e:
        load_rules(p)
    assert e.value.path == str(p)


def test_regex_rules_have_no_inverse():
    rules = RuleSet.loads("[[rule]]\npattern = 'stage(\\d+)_conv(\\d+)\\.(\\w+)'\nreplace = 'layer\\1.\\2.conv.\\3'\n")
    with pytest.raises(ConversionError, match="no unique inverse"):
        rules.inverse()


def test_dumps_loads_round_trip():
    rules = RuleSet.loads(EFFNET_RULES + QKV)
    again = RuleSet.loads(rules.dumps())
    assert again == rules


names = st.lists(st.integers(0, 30), min_size=1, max_size=6, unique=True)


@settings(max_examples=30, deadline=None)
@given(blocks=names, width=st.integers(1, 6), order=st.randoms(use_true_random=False))
def test_rules_round_trip_is_identity(blocks, width, order):
    """apply, invert, apply == identity for glob rules (names, order, data)."""
    tensors = {}
    for b in blocks:
        tensors[f"_blocks.{b}._bn1.weight"] = (width,)
        tensors[f"_blocks.{b}._bn1.running_var"] = (width,)
        tensors[f"_blocks.{b}.attn.qkv.weight"] = (3 * width, width)
        tensors[f"_blocks.{b}._project_conv.weight"] = (width, width, 1, 1)
    items = list(tensors.items())
    order.shuffle(items)
    src = ckpt_of(dict(items))
    rules = RuleSet.loads(r"""
[[rule]]
glob = "_blocks.*._bn1.*"
replace = 'blocks.\1.norm.\2'
[[rule]]
glob = "_blocks.*.attn.qkv.*"
replace = 'attention.\1.{part}.\2'
split = { axis = 0, parts = ["q", "k", "v"] }
[[rule]]
glob = "_blocks.*._project_conv.*"
replace = 'blocks.\1.project.\2'
reshape = "conv1x1"
""")
    there = rules.apply(src)
    assert not any(n.startswith("_blocks") for n in there)
    back = rules.inverse().apply(there)
    assert sorted(back) == sorted(src)
    for n in src:
        np.testing.assert_array_equal(back.tensor(n), src.tensor(n))


def test_module_imports_without_tomllib_and_says_what_is_needed():
    # Python 3.10 has no tomllib: the module must import, and reading rules must say what to install.
    script = ("import sys; sys.modules['tomllib'] = None; sys.modules['tomli'] = None\n"
              "import hubfmt.alignment.rules as r\n"
              "try:\n    r.RuleSet.loads('')\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HubfmtError") and "pip install tomli" in out.stdout
    assert issubclass(ConversionError, HubfmtError)


def test_ties_follow_the_rename():
    src = Checkpoint()
    emb = LazyTensor.from_array(RNG.standard_normal((10, 4)).astype(np.float32))
    src.add("wte.weight", emb, TensorInfo(kind="embedding"))
    src.add("lm_head.weight", emb, TensorInfo(kind="linear", tied_to="wte.weight"))
    out = RuleSet.loads("[[rule]]\nglob = 'wte.*'\nreplace = 'embed_tokens.\\1'\n").apply(src)
    assert out["lm_head.weight"].info.tied_to == "embed_tokens.weight"
    assert out.stored_names() == ["embed_tokens.weight"]
    both = RuleSet.loads("[[rule]]\nglob = '*.weight'\nreplace = 'model.\\1.weight'\n").apply(src)
    assert both["model.lm_head.weight"].info.tied_to == "model.wte.weight"
