"""The OneFlow directory codec without OneFlow: meta text, pickle emitter/reader, layouts, dtypes,
non-tensor content, hub -> OneFlow dir -> hub bit-exact."""
from __future__ import annotations

import os
import pickletools
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hubfmt import Checkpoint, ConversionError, LazyTensor, TensorInfo, registry
from hubfmt.io import hubfile
from hubfmt.adapters import oneflow as of
from hubfmt.adapters.oneflow import meta, pickled

from conftest import run_cli
from helpers import small_cnn


def test_meta_text_round_trip_and_oneflow_spelling():
    text = b"shape {\n  dim: 4\n  dim: 3\n  dim: 3\n  dim: 3\n}\ndata_type: kFloat\n"   # bytes OneFlow 0.9 wrote
    assert meta.parse(text, "m") == ((4, 3, 3, 3), "float32")
    assert meta.render((4, 3, 3, 3), "float32") == text
    assert meta.parse(b"shape {\n}\ndata_type: kInt64\n", "m") == ((), "int64")
    # Other legal spellings of the same message.
    assert meta.parse(b"shape < dim: [2, 5] > data_type: 9  # fp16\n", "m") == ((2, 5), "float16")
    for dt in ("float64", "float16", "int8", "int32", "int64", "uint8", "bool"):
        assert meta.parse(meta.render((2, 1), dt), "m") == ((2, 1), dt)
    assert meta.parse(b"shape { dim: 3 } data_type: kBFloat16", "m") == ((3,), "bfloat16")   # read, never written


def test_dtypes_oneflow_cannot_load(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("bf.weight", LazyTensor.from_array(np.array([0x3F80, 0xC020], dtype=np.uint16), dtype="bfloat16"))
    rep = of.write(ckpt, tmp_path / "bf.oneflow")
    assert [(e.name, e.detail) for e in rep.of("cast")] == [("bf.weight", "bfloat16->float32")]
    back = of.read(tmp_path / "bf.oneflow")
    assert back["bf.weight"].tensor.dtype == "float32" and list(back.tensor("bf.weight")) == [1.0, -2.5]
    ckpt = Checkpoint()
    ckpt.add("i16.bias", LazyTensor.from_array(np.array([1], dtype=np.int16)))
    with pytest.raises(ConversionError, match="cannot load int16"):
        of.write(ckpt, tmp_path / "i16.oneflow")
    assert not (tmp_path / "i16.oneflow").exists()


def test_pickle_emitter_uses_oneflow_globals_only():
    sd = pickled.StateDict([("c.weight", pickled.TensorSlot("tensor_0", True)),
                            ("bn.running_mean", pickled.TensorSlot("tensor_1", False))])
    raw = pickled.dumps({"model": sd, "epoch": 3, "names": {0: "cat"}, "f": 0.5, "b": b"\x00", "n": None})
    globals_ = [arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"]
    assert sorted(set(globals_)) == ["collections OrderedDict", "oneflow Tensor", "oneflow.nn Parameter"]
    data = pickled.load(raw, "pickled_data")
    assert [type(v).__name__ for v in data["model"].values()] == ["ParameterRef", "TensorRef"]
    assert data["model"]["c.weight"].folder == "tensor_0"
    assert {k: v for k, v in data.items() if k != "model"} == {"epoch": 3, "names": {0: "cat"}, "f": 0.5, "b": b"\x00", "n": None}


def test_small_cnn_round_trip_restores_dtypes_and_extra(tmp_path):
    src = small_cnn(half=True)
    hub = tmp_path / "m.safetensors"
    hubfile.write(src, hub)
    out = tmp_path / "m.oneflow"
    rep = of.write(hubfile.read(hub), out)
    assert rep.tensors_out == len(src) and {e.name for e in rep.of("cast")} == {
        n for n in src if src[n].tensor.dtype == "float16"}
    assert sorted(os.listdir(out)) == sorted(["pickled_data", "hubfmt_extra"] + [f"tensor_{i}" for i in range(len(src))])
    back = of.read(out)
    assert list(back) == list(src)
    for name in src:
        assert back[name].tensor.dtype == src[name].tensor.dtype
        assert np.array_equal(back.tensor(name), src.tensor(name))
        assert back[name].tensor.span is not None          # lazy regions of the out files
    assert back.extra == src.extra
    assert back["features.0.weight"].info.kind == "conv2d" and back["features.1.running_var"].info.kind == "batch_norm"


def test_restore_dtype_false_writes_float32(tmp_path):
    src = small_cnn(half=True)
    of.write(src, tmp_path / "f32.oneflow", restore_dtype=False)
    back = of.read(tmp_path / "f32.oneflow")
    for name in src:
        want = "float32" if src[name].tensor.dtype in ("float16", "float32") else src[name].tensor.dtype
        assert back[name].tensor.dtype == want
        assert np.array_equal(back.tensor(name), src.tensor(name).astype(back.tensor(name).dtype))


def test_training_layout_keeps_extra_in_the_pickle(tmp_path):
    src = small_cnn()
    of.write(src, tmp_path / "t.oneflow", layout="training")
    assert not os.path.exists(tmp_path / "t.oneflow" / "hubfmt_extra")
    data = pickled.load((tmp_path / "t.oneflow" / "pickled_data").read_bytes(), "p")
    assert set(data) == {"model", *src.extra}
    back = of.read(tmp_path / "t.oneflow")
    assert list(back) == list(src) and back.extra == src.extra


def _hand_made(d, data, arrays):
    d.mkdir()
    for folder, arr in arrays.items():
        (d / folder).mkdir()
        (d / folder / "out").write_bytes(arr.tobytes())
        (d / folder / "meta").write_bytes(meta.render(arr.shape, arr.dtype.name))
    (d / "pickled_data").write_bytes(pickled.dumps(data))


def test_which_state_dict_is_read(tmp_path):
    a, b = np.zeros(2, np.float32), np.ones(2, np.float32)
    arrays = {"tensor_0": a, "tensor_1": b}
    # A state dict with a plain value beside its tensors (as OneFlow's OneEmbedding state dicts).
    _hand_made(tmp_path / "sd", {"w.weight": pickled.TensorSlot("tensor_0", True), "opts": "{}"}, arrays)
    ckpt = of.read(tmp_path / "sd")
    assert list(ckpt) == ["w.weight"] and ckpt.extra == {"opts": "{}"}
    # A training checkpoint with model and EMA weights: 'model' unless prefer_ema.
    train = {"model": {"w.weight": pickled.TensorSlot("tensor_0", True)},
             "ema": {"w.weight": pickled.TensorSlot("tensor_1", True)}, "epoch": 9}
    _hand_made(tmp_path / "tr", train, arrays)
    ckpt = of.read(tmp_path / "tr")
    assert np.array_equal(ckpt.tensor("w.weight"), a) and ckpt.extra == {"epoch": 9}
    assert ckpt.report.names("dropped") == ["ema"]
    ckpt = of.read(tmp_path / "tr", prefer_ema=True)
    assert np.array_equal(ckpt.tensor("w.weight"), b) and ckpt.report.names("dropped") == ["model"]


def test_empty_checkpoint(tmp_path):
    of.write(Checkpoint(), tmp_path / "e.oneflow")
    assert os.listdir(tmp_path / "e.oneflow") == ["pickled_data"]
    assert len(of.read(tmp_path / "e.oneflow")) == 0


def test_tied_tensors_share_one_folder(tmp_path):
    ckpt = Checkpoint()
    emb = LazyTensor.from_array(np.arange(12, dtype=np.float32).reshape(3, 4))
    ckpt.add("embed.weight", emb, TensorInfo(kind="embedding"))
    ckpt.add("head.weight", emb, TensorInfo(kind="linear", tied_to="embed.weight"))
    of.write(ckpt, tmp_path / "t.oneflow")
    assert sorted(os.listdir(tmp_path / "t.oneflow")) == ["pickled_data", "tensor_0"]
    back = of.read(tmp_path / "t.oneflow")
    assert back["head.weight"].info.tied_to == "embed.weight"
    assert np.array_equal(back.tensor("head.weight"), back.tensor("embed.weight"))


def test_batch_norm_without_counter_gets_one(tmp_path):
    src = small_cnn()
    ckpt = Checkpoint()
    for n, e in src.entries.items():
        if not n.endswith("num_batches_tracked"):
            ckpt.add(n, e.tensor, e.info)
    rep = of.write(ckpt, tmp_path / "c.oneflow")
    assert rep.names("created") == ["features.1.num_batches_tracked"]
    back = of.read(tmp_path / "c.oneflow")
    assert list(back) == list(src)
    counter = back["features.1.num_batches_tracked"].tensor
    assert counter.dtype == "int64" and counter.shape == () and back.tensor("features.1.num_batches_tracked") == 0
    assert meta.parse((tmp_path / "c.oneflow" / "tensor_6" / "meta").read_bytes(), "m") == ((), "int64")


def test_legacy_layout_is_read(tmp_path):
    d = tmp_path / "snap"
    d.mkdir()
    (d / "snapshot_done").write_bytes(b"")
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    for name, arr, dt in (("fc.weight", w, "float32"), ("fc.bias", np.array([1, 2], dtype=np.int64), "int64")):
        (d / name).mkdir()
        (d / name / "out").write_bytes(arr.tobytes())
        (d / name / "meta").write_bytes(meta.render(arr.shape, dt))
    assert of.sniff(str(d)) == "oneflow-legacy"
    ckpt = of.read(d)
    assert sorted(ckpt) == ["fc.bias", "fc.weight"]
    assert np.array_equal(ckpt.tensor("fc.weight"), w) and ckpt["fc.weight"].info.kind == "linear"


def test_output_detection_and_cli(tmp_path):
    d = registry.detect_output(str(tmp_path / "x.oneflow"))
    assert (d.adapter, d.format.name) == ("oneflow", "oneflow")
    hub = tmp_path / "m.safetensors"
    hubfile.write(small_cnn(), hub)
    r = run_cli("convert", hub, tmp_path / "plain_dir", "--to", "oneflow")
    assert r.returncode == 0, r.stderr
    n = len(small_cnn())
    assert f"{n} tensors written" in r.stdout and f"write  plain_dir: {n} -> {n} tensors = {n} kept" in r.stdout
    r = run_cli("convert", tmp_path / "plain_dir", tmp_path / "back.safetensors")     # detected by content
    assert r.returncode == 0, r.stderr
    d = registry.detect_input(str(tmp_path / "plain_dir"))
    assert (d.adapter, d.format.name) == ("oneflow", "oneflow")


# ---- hub -> OneFlow dir -> hub, bit-exact, on generated state dicts ----------------------------

_DTYPES = ["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]


@st.composite
def checkpoints(draw):
    names = draw(st.lists(st.from_regex(r"[a-z]{1,4}(\.[a-z0-9]{1,3}){0,2}\.(weight|bias|running_mean)", fullmatch=True),
                          min_size=1, max_size=5, unique=True))
    ckpt = Checkpoint()
    for name in names:
        dt = draw(st.sampled_from(_DTYPES))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
        arr = draw(hnp.arrays(np.dtype(dt), shape, elements={"allow_nan": False} if dt.startswith("float") else None))
        ckpt.add(name, LazyTensor.from_array(arr))
    # Integers within 64 bits: the hub stores non-tensor content as msgpack.
    ckpt.extra = draw(st.dictionaries(st.text(min_size=1, max_size=5),
                                      st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
                                                   lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                                                   max_leaves=8), max_size=4))
    return ckpt


@settings(max_examples=40, deadline=None)
@given(checkpoints())
def test_hub_oneflow_hub_is_bit_exact(src):
    # float64 values that float32 cannot hold (1e-300, 1e300) make the default hub write refuse
    # (#13); such checkpoints go through the hub as float64 (--keep-dtype).
    from hubfmt.errors import ConversionError
    from hubfmt.format import dtypes
    lossy = any(src[n].tensor.dtype == "float64"
                and dtypes.narrowing_changes(src.tensor(n), dtypes.convert(src.tensor(n), "float64", "float32"))
                for n in src)
    with tempfile.TemporaryDirectory() as d:
        if lossy:
            with pytest.raises(ConversionError, match="float64 -> float32 would change"):
                hubfile.write(src, os.path.join(d, "refused.safetensors"))
        hubfile.write(src, os.path.join(d, "a.safetensors"), keep_dtype=lossy)
        of.write(hubfile.read(os.path.join(d, "a.safetensors")), os.path.join(d, "m.oneflow"))
        hubfile.write(of.read(os.path.join(d, "m.oneflow")), os.path.join(d, "b.safetensors"), keep_dtype=lossy)
        a, b = hubfile.read(os.path.join(d, "a.safetensors")), hubfile.read(os.path.join(d, "b.safetensors"))
        assert list(a) == list(b)
        for name in a:
            assert a[name].tensor.dtype == b[name].tensor.dtype
            assert a[name].info.original_dtype == b[name].info.original_dtype
            assert a.tensor(name).tobytes() == b.tensor(name).tobytes()
        assert a.extra == b.extra


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "o.oneflow").mkdir()
    with pytest.raises(Exception, match="output exists"):
        of.write(small_cnn(), tmp_path / "o.oneflow")
    of.write(small_cnn(), tmp_path / "o.oneflow", overwrite=True)
    assert len(of.read(tmp_path / "o.oneflow")) == len(small_cnn())


def test_same_dtype_copies_go_file_to_file(tmp_path, monkeypatch):
    of.write(small_cnn(), tmp_path / "a.oneflow")
    src = of.read(tmp_path / "a.oneflow")
    import hubfmt.format.tensor

    def no_python_reads(*a, **k):
        raise AssertionError("tensor bytes went through Python")

    monkeypatch.setattr(hubfmt.format.tensor, "read_region", no_python_reads)
    of.write(src, tmp_path / "b.oneflow")                  # OneFlow -> OneFlow
    hubfile.write(src, tmp_path / "b.safetensors")         # OneFlow fp32 -> hub fp32
    monkeypatch.undo()
    for name in src:
        assert np.array_equal(of.read(tmp_path / "b.oneflow").tensor(name), src.tensor(name))
        assert np.array_equal(hubfile.read(tmp_path / "b.safetensors").tensor(name), src.tensor(name))
