"""Template alignment (hubfmt.align) on checkpoints built in memory: no framework needed."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubfmt import Checkpoint, LayerInfo, LazyTensor, TensorInfo
from hubfmt.io import hubfile
from hubfmt import align
from hubfmt.errors import AlignmentError, ConversionError
from hubfmt.alignment.grouping import name_similarity, name_tokens
from hubfmt.alignment.target import parse_listing

from align_cases import Builder, ambiguous_pair, dpn_pair, efficientnet_pair


def moved(alignment) -> dict[str, str]:
    return {m.sources[0]: m.targets[0] for m in alignment.mapping.moves if m.sources and m.targets}


def assert_lands_as_expected(src, out, expected):
    for s, t in expected.items():
        a, b = src.tensor(s), out.tensor(t)
        np.testing.assert_array_equal(a.reshape(b.shape), b, err_msg=f"{s} -> {t}")


def test_efficientnet_like_pair_aligns_without_a_table():
    src, tmpl, expected = efficientnet_pair()
    a = align(src, tmpl)
    assert a.problems() == []
    assert moved(a) == expected
    out = a.apply(src)
    assert list(out) == list(tmpl)                  # the template's names, in the template's order
    assert_lands_as_expected(src, out, expected)
    assert sorted(out.report.names("dropped")) == sorted(n for n in src if n.endswith("num_batches_tracked"))
    # The template registers each block's projection before its squeeze-excite; the blocks pair
    # as modules (same contents), and inside them the two same-shape batch norms pair by order.
    rows = {m.source: m for m in a.matches}
    assert rows["_blocks.0._project_conv"].target == "0.proj" and rows["_blocks.0._project_conv"].evidence == "module + shape"
    assert rows["_blocks.1._bn2"].target == "1.proj_bn" and rows["_blocks.1._bn2"].evidence == "module + order"
    assert all(0.5 <= m.confidence <= 1.0 for m in a.matches)
    assert rows["_conv_stem"].evidence == "unique shape"


def test_flat_names_with_crossing_orders_pair_in_a_later_round():
    src, tmpl = Builder(0), Builder(1)
    for name, shape in (("conv0", (8, 3, 3, 3)), ("conv1", (16, 8, 3, 3)), ("conv2", (32, 16, 1, 1)), ("conv3", (8, 32, 1, 1))):
        src.conv(f"net_{name}", shape)
    for name, shape in (("a", (8, 3, 3, 3)), ("d", (8, 32, 1, 1)), ("b", (16, 8, 3, 3)), ("c", (32, 16, 1, 1))):
        tmpl.conv(f"m_{name}", shape)
    a = align(src.ckpt, tmpl.ckpt)
    assert moved(a) == {"net_conv0.weight": "m_a.weight", "net_conv1.weight": "m_b.weight",
                        "net_conv2.weight": "m_c.weight", "net_conv3.weight": "m_d.weight"}
    assert {m.source: m.evidence for m in a.matches}["net_conv3"] == "unique shape"


def test_blocks_pair_as_modules_and_names_beat_order_inside_them():
    src, tmpl = Builder(0), Builder(1)
    for i in range(2):
        src.conv(f"blocks.{i}.conv", (8, 8, 3, 3))
        src.bn(f"blocks.{i}.bn_in", 8)
        src.bn(f"blocks.{i}.bn_out", 8)
    for i in range(2):
        tmpl.conv(f"layers.{i}.conv", (8, 8, 3, 3))
        tmpl.bn(f"layers.{i}.bn_out", 8)      # registered in the other order
        tmpl.bn(f"layers.{i}.bn_in", 8)
    a = align(src.ckpt, tmpl.ckpt)
    assert a.layer_map() == {"blocks.0.conv": "layers.0.conv", "blocks.0.bn_in": "layers.0.bn_in",
                             "blocks.0.bn_out": "layers.0.bn_out", "blocks.1.conv": "layers.1.conv",
                             "blocks.1.bn_in": "layers.1.bn_in", "blocks.1.bn_out": "layers.1.bn_out"}
    assert {m.evidence for m in a.matches} == {"module + shape", "module + names"}


def test_aligned_checkpoint_is_lazy_and_takes_infos_from_the_template():
    src, tmpl, expected = efficientnet_pair()
    lazy = Checkpoint()
    for n, e in src.entries.items():
        lazy.add(n, LazyTensor(e.tensor.shape, e.tensor.dtype, lambda: pytest.fail("data was read")),
                 TensorInfo(kind=e.info.kind))
    tmpl["classifier.weight"].info.original_name = "Classifier/kernel"
    tmpl.layers["head.bn"] = LayerInfo("batch_norm", {"eps": 1e-3})
    lazy.layers["_bn1"] = LayerInfo("batch_norm", {"eps": 1e-5, "momentum": 0.1})
    out = align(lazy, tmpl).apply(lazy)
    info = out["classifier.weight"].info
    assert (info.kind, info.role, info.layer, info.original_name) == ("linear", "weight", "classifier", "Classifier/kernel")
    assert out.layers["head.bn"].attrs == {"eps": 1e-5, "momentum": 0.1}     # the trained model's facts
    assert any(e.name == "head.bn" and "eps" in e.detail for e in out.report.of("warning"))


def test_dpn_like_conv_classifier_is_reshaped_to_dense():
    src, tmpl, expected = dpn_pair()
    a = align(src, tmpl)
    assert a.problems() == []
    assert moved(a) == expected
    fc = next(m for m in a.mapping.moves if m.sources == ("fc6.weight",))
    assert fc.op == "conv1x1" and "reshape" in fc.note
    out = a.apply(src)
    assert out["classifier.weight"].tensor.shape == (10, 16) and out["classifier.weight"].info.kind == "linear"
    np.testing.assert_array_equal(out.tensor("classifier.weight"), src.tensor("fc6.weight")[:, :, 0, 0])
    assert out.tensor("features.conv1_1.bn.num_batches_tracked") == 0
    assert "features.conv1_1.bn.num_batches_tracked" in out.report.names("created")
    assert out.report.of("reshaped")[0].detail == "[10, 16, 1, 1] -> [10, 16]"
    # ... and back: the Dense classifier becomes the 1x1 conv again.
    back = align(out, src)
    assert back.problems() == [] and moved(back) == {t: s for s, t in expected.items()}


def test_ambiguity_is_reported_never_guessed():
    src, tmpl = ambiguous_pair()
    a = align(src, tmpl)
    amb = a.report.of("ambiguous")
    assert [e.name for e in amb] == ["a", "b"]
    assert all("candidates body" in e.detail for e in amb)
    assert "body.weight" not in moved(a).values()
    assert "body.weight" not in a.report.names("missing")      # accounted for by the ambiguity
    with pytest.raises(AlignmentError) as e:
        a.check(allow_missing=True, allow_unexpected=True)      # ambiguity is never relaxed
    assert e.value.exit_status == 1 and "2 ambiguous" in str(e.value)
    assert "ambiguous (2):" in e.value.table and "candidates body" in e.value.table


def test_repeated_layers_with_one_extra_are_ambiguous():
    src, tmpl = Builder(0), Builder(1)
    for name in ("x", "y", "z"):
        src.bn(f"{name}.bn", 8)
    for name in ("p", "q"):
        tmpl.bn(f"{name}.norm", 8)
    a = align(src.ckpt, tmpl.ckpt)
    assert a.matches == [] and len(a.report.of("ambiguous")) == 3


def test_names_settle_what_order_cannot():
    src, tmpl = Builder(0), Builder(1)
    src.conv("features.conv", (8, 8, 3, 3))
    src.conv("shortcut", (8, 8, 3, 3))
    tmpl.conv("downsample", (8, 8, 3, 3))   # synonym of shortcut
    a = align(src.ckpt, tmpl.ckpt)
    assert moved(a) == {"shortcut.weight": "downsample.weight"}
    assert a.report.names("unexpected") == ["features.conv.weight"]


def test_width_mismatch_fails_with_the_mismatch_table():
    src, tmpl, _ = efficientnet_pair(target_widths=((8, 8), (8, 8), (8, 24), (24, 24)))
    a = align(src, tmpl)
    mism = {e.name: e.detail for e in a.report.of("mismatch")}
    assert mism["_blocks.2._project_conv.weight"] == "-> 2.proj.weight: source [16, 8, 1, 1] vs template [24, 8, 1, 1]"
    assert mism["_fc.weight"] == "-> classifier.weight: source [10, 64] vs template [10, 96]"
    assert "_blocks.0._bn1.weight" not in mism
    with pytest.raises(AlignmentError) as e:
        a.check(allow_missing=True, allow_unexpected=True)
    assert "mismatch" in str(e.value)
    assert "source [16, 8, 1, 1] vs template [24, 8, 1, 1]" in e.value.table


def test_missing_and_unexpected_are_relaxed_on_request():
    src, tmpl, expected = efficientnet_pair()
    del tmpl.entries["classifier.weight"], tmpl.entries["classifier.bias"]     # a headless template
    b = Builder(9)
    b.conv("aux_head", (3, 64), "linear")
    for n, e in b.ckpt.entries.items():
        tmpl.add(n.replace("aux_head", "aux"), e.tensor, e.info)
    a = align(src, tmpl)
    assert a.report.names("unexpected") == ["_fc.weight", "_fc.bias"]
    assert a.report.names("missing") == ["aux.weight"]
    with pytest.raises(AlignmentError, match="1 missing, 2 unexpected.*--allow-missing"):
        a.check()
    with pytest.raises(AlignmentError, match="1 missing"):
        a.check(allow_unexpected=True)
    a.check(allow_missing=True, allow_unexpected=True)
    out = a.apply(src)
    assert "_fc.weight" not in out and "aux.weight" not in out
    assert out.report.names("missing") == ["aux.weight"]      # the lists stay in the report
    assert out.report.names("unexpected") == ["_fc.weight", "_fc.bias"]


def test_same_names_match_first_with_full_confidence():
    src, _, _ = efficientnet_pair()
    a = align(src, src)
    assert a.problems() == [] and all(m.confidence == 1.0 and m.evidence == "same name" for m in a.matches)
    assert all(m.sources == m.targets for m in a.mapping.moves)


def test_listing_template_json_and_text(tmp_path):
    src, tmpl, expected = dpn_pair()
    listing = {n: list(e.tensor.shape) for n, e in tmpl.entries.items()}
    p = tmp_path / "t.json"
    p.write_text(json.dumps(listing))
    a = align(src, p)
    assert a.problems() == [] and moved(a) == expected
    text = "\n".join(f"{n} {'x'.join(map(str, s)) or '[]'}  # shape" for n, s in listing.items())
    q = tmp_path / "t.txt"
    q.write_text("# names and shapes\n" + text)
    b = align(src, q)
    assert moved(b) == expected and b.template_label == str(q)
    out = b.apply(src)
    assert out["classifier.weight"].info.kind == "linear"        # inferred from the listing's shape
    np.testing.assert_array_equal(out.tensor("classifier.bias"), src.tensor("fc6.bias"))
    with pytest.raises(ConversionError, match="no data"):
        b.template.tensor("classifier.bias")


def test_text_listing_takes_what_inspect_prints_for_0d_tensors_and_dtypes():
    # #17: `name scalar` and a bare `name` are 0-d tensors; a trailing dtype is taken.
    ck = parse_listing("bn.num_batches_tracked scalar\nstep\nfc.weight 10x64 float16\nfc.bias [10]\nk [] int64\n")
    assert [(n, ck[n].tensor.shape, ck[n].tensor.dtype) for n in ck] == [
        ("bn.num_batches_tracked", (), "float32"), ("step", (), "float32"), ("fc.weight", (10, 64), "float16"),
        ("fc.bias", (10,), "float32"), ("k", (), "int64")]


def test_listing_from_inspect_json_and_a_hub_file_template(tmp_path):
    from hubfmt.cli.inspect import describe

    src, tmpl, expected = efficientnet_pair()
    p = tmp_path / "inspect.json"
    p.write_text(json.dumps(describe(tmpl)))
    assert moved(align(src, p)) == expected
    hub = tmp_path / "template.safetensors"
    hubfile.write(tmpl, hub)
    a = align(src, hub)
    assert moved(a) == expected and a.template_label == str(hub)


@pytest.mark.parametrize("text, message", [
    ("fc.weight 3x3 float7\n", "not a shape"),
    ("fc.weight 3xq\n", "not a shape"),
    ('{"fc.weight": "3x-1"}', "negative"),
    ("[1, 2]", "expected"),
    ('{"a": [1], ', "not a valid JSON listing"),
])
def test_bad_listings_are_format_errors(text, message):
    from hubfmt.errors import FormatError

    with pytest.raises(FormatError, match=message):
        parse_listing(text, "l.txt")


def test_rules_from_an_alignment_reproduce_it():
    src, tmpl, expected = efficientnet_pair()
    a = align(src, tmpl)
    rules = a.to_rules()
    assert any(r.glob == "_blocks.0._se_reduce.*" and r.replace == "0.se.conv_reduce.\\1" for r in rules.rules)
    renamed = rules.apply(src)
    for s, t in expected.items():
        np.testing.assert_array_equal(renamed.tensor(t), src.tensor(s))
    # After the rules the names agree, so a second alignment is by name alone.
    assert all(m.evidence == "same name" for m in align(renamed, tmpl).matches)


def test_name_tokens_fold_synonyms():
    assert name_tokens("features.BatchNorm2") == ("norm", "2")
    assert name_tokens("fc") == name_tokens("classifier") == name_tokens("Dense") == ("fc",)
    assert name_tokens("conv_dw") == ("conv", "dw") and name_tokens("depthwise_conv") == ("dw", "conv")
    assert name_similarity(name_tokens("_blocks.3._se_reduce"), name_tokens("blocks.3.squeeze_excite.reduce")) == 1.0
    assert name_similarity(name_tokens("stage1_conv0"), name_tokens("head.fc")) == 0.0


def test_json_output_is_complete():
    src, tmpl, _ = dpn_pair()
    j = json.loads(align(src, tmpl, source_label="dpn.params").dumps())
    assert j["source"] == "dpn.params" and j["problems"] == []
    assert {"source": "fc6", "target": "classifier", "op": "conv1x1"}.items() <= next(
        x for x in j["layers"] if x["source"] == "fc6").items()
    assert any(r["op"] == "create" for r in j["tensors"])


def test_flat_names_batch_norms_follow_their_convs():
    """MXNet-style flat names, no module structure: the shortcut is registered last in the source
    and first in the template. Order alone would give the shortcut's norm to the main branch."""
    src, tmpl = Builder(0), Builder(1)
    for name, shape in (("conv0", (16, 8, 3, 3)), ("conv1", (16, 16, 3, 3)), ("conv2", (16, 8, 1, 1))):
        src.conv(f"resnet_stage2_{name}", shape)
        src.bn(f"resnet_stage2_{name.replace('conv', 'batchnorm')}", 16)
    for name, shape in (("shortcut", (16, 8, 1, 1)), ("a", (16, 8, 3, 3)), ("b", (16, 16, 3, 3))):
        tmpl.conv(f"block_conv_{name}", shape)
        tmpl.bn(f"block_bn_{name}", 16, tracked=True)
    a = align(src.ckpt, tmpl.ckpt)
    assert a.problems() == []
    assert {k: v for k, v in a.layer_map().items() if "batchnorm" in k} == {
        "resnet_stage2_batchnorm0": "block_bn_a", "resnet_stage2_batchnorm1": "block_bn_b",
        "resnet_stage2_batchnorm2": "block_bn_shortcut"}


def test_registration_against_the_data_flow_pairs_in_a_second_pass():
    """Pre-activation blocks: the template registers each norm after the conv it feeds, so the
    conv-norm adjacency points the wrong way; the second pass pairs by order, less confident."""
    src, tmpl = Builder(0), Builder(1)
    src.bn("net_bn0", 16)
    src.conv("net_conv0", (8, 16, 1, 1))
    src.bn("net_bn1", 8)
    src.conv("net_conv1", (8, 8, 3, 3))
    tmpl.conv("conv_a", (8, 16, 1, 1))
    tmpl.bn("bn_a", 16)
    tmpl.conv("conv_b", (8, 8, 3, 3))
    tmpl.bn("bn_b", 8)
    a = align(src.ckpt, tmpl.ckpt)
    assert a.problems() == []
    rows = {m.source: m for m in a.matches}
    assert rows["net_bn1"].target == "bn_b" and "second pass" in rows["net_bn1"].evidence
    assert rows["net_bn1"].confidence < rows["net_conv1"].confidence


def test_pre_activation_norms_with_equal_channels_are_ambiguous_not_guessed():
    """The same four layers as above, every norm with 8 channels: the template's bn_a, registered
    after conv_a, may feed conv_a (pre-activation, then it is net_bn0) or normalise its output
    (then it is net_bn1). Nothing in a state dict says which: both norms are reported."""
    src, tmpl = Builder(0), Builder(1)
    src.bn("net_bn0", 8)
    src.conv("net_conv0", (8, 8, 1, 1))
    src.bn("net_bn1", 8)
    src.conv("net_conv1", (8, 8, 3, 3))
    tmpl.conv("conv_a", (8, 8, 1, 1))
    tmpl.bn("bn_a", 8)
    tmpl.conv("conv_b", (8, 8, 3, 3))
    tmpl.bn("bn_b", 8)
    a = align(src.ckpt, tmpl.ckpt)
    assert a.layer_map() == {"net_conv0": "conv_a", "net_conv1": "conv_b"}
    assert [(e.action, e.name) for e in a.problems()] == [("ambiguous", "net_bn0"), ("ambiguous", "net_bn1")]
    assert all("candidates bn_a, bn_b" in e.detail and "pre-activation" in e.detail for e in a.problems())
    with pytest.raises(AlignmentError):
        a.check(allow_missing=True, allow_unexpected=True)


def test_names_that_contradict_the_conv_norm_adjacency_do_not_pair_norms():
    """Pre-activation blocks named two ways: `bn1` feeds conv1 in the source, while the
    template (Keras style) calls the norm after conv1 `bn1` and the one feeding conv1
    `preact_bn`. Equal names, different layers: the adjacency and the order agree, and win."""
    src, tmpl = Builder(0), Builder(1)
    src.conv("stem", (8, 3, 3, 3))
    tmpl.conv("stem", (8, 3, 3, 3))
    for b in range(2):
        for name in ("bn1", "conv1", "bn2", "conv2"):
            (src.bn(f"blocks.{b}.{name}", 8) if "bn" in name else src.conv(f"blocks.{b}.{name}", (8, 8, 3, 3)))
        for name in ("preact_bn", "conv1", "bn1", "conv2"):
            (tmpl.bn(f"stage.{b}.{name}", 8) if "bn" in name else tmpl.conv(f"stage.{b}.{name}", (8, 8, 3, 3)))
    a = align(src.ckpt, tmpl.ckpt)
    assert a.problems() == []
    assert {k: v for k, v in a.layer_map().items() if "bn" in k} == {
        "blocks.0.bn1": "stage.0.preact_bn", "blocks.0.bn2": "stage.0.bn1",
        "blocks.1.bn1": "stage.1.preact_bn", "blocks.1.bn2": "stage.1.bn1"}


def test_counters_of_different_scopes_are_no_evidence_against_order():
    """Per-block counters (`layer1.1.conv1`) against per-stage ones (`stage1.conv1`, the stage's
    second conv): the shared tokens tie, and order decides."""
    src, tmpl = Builder(0), Builder(1)
    src.conv("stem", (8, 3, 3, 3))
    tmpl.conv("stem", (8, 3, 3, 3))
    for b in range(3):
        for k in (1, 2):
            src.conv(f"layer1.{b}.conv{k}", (8, 8, 3, 3))
            tmpl.conv(f"stage1.conv{2 * b + k - 1}", (8, 8, 3, 3))
    a = align(src.ckpt, tmpl.ckpt)
    assert a.problems() == []
    assert a.layer_map() == {"stem": "stem", **{f"layer1.{b}.conv{k}": f"stage1.conv{2 * b + k - 1}"
                                                for b in range(3) for k in (1, 2)}}


_SHAPES = {"conv": [(8, 8, 3, 3), (8, 8, 1, 1), (16, 8, 3, 3)], "bn": [(8,), (16,)], "fc": [(4, 8)]}


@settings(max_examples=60, deadline=None)
@given(layers=st.lists(st.tuples(st.sampled_from(["conv", "bn", "fc"]), st.integers(0, 2)), min_size=1, max_size=14),
       dropped=st.sets(st.integers(0, 13), max_size=2), data=st.data())
def test_never_a_wrong_match(layers, dropped, data):
    """The template is the source network renamed (names share no token), maybe with layers
    removed. Whatever alignment decides is right; what it cannot decide it reports."""
    words_s = st.text("abcdefghijklm", min_size=3, max_size=6)
    words_t = st.text("nopqrstuvwxyz", min_size=3, max_size=6)
    src, tmpl, truth = Builder(0), Builder(1), {}
    for k, (kind, v) in enumerate(layers):
        shape = _SHAPES[kind][v % len(_SHAPES[kind])]
        # letters only (a digit would be a shared token); the suffix keeps names unique
        s_name = data.draw(words_s) + "abcdefghijklm"[k % 13] + "abcdefghijklm"[k // 13]
        t_name = data.draw(words_t) + "nopqrstuvwxyz"[k % 13] + "nopqrstuvwxyz"[k // 13]
        add = {"conv": lambda b, n, shape=shape: b.conv(n, shape), "bn": lambda b, n, shape=shape: b.bn(n, shape[0]),
               "fc": lambda b, n, shape=shape: b.conv(n, shape, "linear", bias=True)}[kind]
        add(src, s_name)
        if k not in dropped:
            add(tmpl, t_name)
            truth[s_name] = t_name
    a = align(src.ckpt, tmpl.ckpt)
    for s, t in a.layer_map().items():
        assert truth.get(s) == t, (s, t, a.to_text())
    if not set(dropped) & set(range(len(layers))):
        assert a.problems() == [] and a.layer_map() == truth


@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(st.lists(st.tuples(st.sampled_from(["conv", "bn", "fc"]), st.integers(0, 2)), min_size=1, max_size=4),
                       min_size=1, max_size=5),
       dropped_block=st.integers(-1, 4), data=st.data())
def test_never_a_wrong_match_with_modules(blocks, dropped_block, data):
    """Blocks as modules (`blk<b>.<layer>` vs `stage.<b>.<layer>`), the template renamed and maybe
    missing one block: decided pairs are right, and with nothing missing everything pairs."""
    src, tmpl, truth = Builder(0), Builder(1), {}
    for b, layers in enumerate(blocks):
        for k, (kind, v) in enumerate(layers):
            shape = _SHAPES[kind][v % len(_SHAPES[kind])]
            s_name = f"blk{'abcdefghijklm'[b]}.{data.draw(st.text('abcdefghijklm', min_size=2, max_size=4))}{'abcdefghijklm'[k]}"
            t_name = f"stage.{'nopqrstuvwxyz'[b]}.{data.draw(st.text('nopqrstuvwxyz', min_size=2, max_size=4))}{'nopqrstuvwxyz'[k]}"
            add = {"conv": lambda x, n, shape=shape: x.conv(n, shape), "bn": lambda x, n, shape=shape: x.bn(n, shape[0]),
                   "fc": lambda x, n, shape=shape: x.conv(n, shape, "linear", bias=True)}[kind]
            add(src, s_name)
            if b != dropped_block:
                add(tmpl, t_name)
                truth[s_name] = t_name
    a = align(src.ckpt, tmpl.ckpt)
    for s, t in a.layer_map().items():
        assert truth.get(s) == t, (s, t, a.to_text())
    if not 0 <= dropped_block < len(blocks):
        assert a.problems() == [] and a.layer_map() == truth


_POOL = [("conv", (8, 8, 3, 3)), ("conv", (8, 8, 1, 1)), ("conv", (16, 8, 3, 3)), ("bn", (8,)), ("bn", (16,)),
         ("fc", (4, 8)), ("conv", (16, 16, 1, 1)), ("bn", (4,))]


@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(st.lists(st.sampled_from(range(len(_POOL))), min_size=2, max_size=5, unique=True),
                       min_size=2, max_size=5), data=st.data())
def test_orders_crossing_inside_blocks_are_recovered(blocks, data):
    """Each block's layers have distinct signatures; the template registers them in another order
    inside each block (blocks themselves in the same order): everything pairs, correctly."""
    src, tmpl, truth = Builder(0), Builder(1), {}

    def add(builder, kind, shape, name):
        {"conv": lambda: builder.conv(name, shape), "bn": lambda: builder.bn(name, shape[0]),
         "fc": lambda: builder.conv(name, shape, "linear", bias=True)}[kind]()

    for b, members in enumerate(blocks):
        names = {i: (f"blk{'abcdefghijklm'[b]}.l{'abcdefghijklm'[k]}", f"stage.{'nopqrstuvwxyz'[b]}.q{'nopqrstuvwxyz'[k]}")
                 for k, i in enumerate(members)}
        for i in members:
            add(src, *_POOL[i], names[i][0])
        for i in data.draw(st.permutations(members)):
            add(tmpl, *_POOL[i], names[i][1])
        truth.update(names.values())
    a = align(src.ckpt, tmpl.ckpt)
    assert a.problems() == [] and a.layer_map() == truth, a.to_text()
