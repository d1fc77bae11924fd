"""The framework-free torch codec (no torch imported): writer -> reader bit-exact for every dtype,
ties, layouts of the zip, the pickle emitter's values, sniffing, kind inference."""
from __future__ import annotations

import collections
import io
import pickletools
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubfmt.format import dtypes
from hubfmt.adapters import torch as pt
from hubfmt.adapters.torch import names as torch_names
from hubfmt.adapters.torch.pickler import TensorRecord, emit
from hubfmt.format.checkpoint import Checkpoint, TensorInfo
from hubfmt.format.tensor import LazyTensor

ALL_DTYPES = sorted(dtypes.DTYPES)


def _array(rng, dtype: str, shape) -> np.ndarray:
    st_ = dtypes.storage_dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = rng.integers(0, 256, size=n * st_.itemsize, dtype=np.uint8).tobytes()
    arr = np.frombuffer(raw, dtype=st_).reshape(shape).copy()
    return arr.astype(bool) if dtype == "bool" else arr


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       specs=st.lists(st.tuples(st.sampled_from(ALL_DTYPES), st.lists(st.integers(0, 4), max_size=3), st.booleans()),
                      min_size=1, max_size=6))
def test_write_read_is_bit_exact_for_every_dtype(tmp_path_factory, seed, specs):
    rng = np.random.default_rng(seed)
    ckpt = Checkpoint()
    for i, (dt, shape, tie) in enumerate(specs):
        arr = _array(rng, dt, tuple(shape))
        ckpt.add(f"m{i}.weight", LazyTensor.from_array(arr, dt))
        if tie and arr.size:
            ckpt.add(f"m{i}.alias", LazyTensor.from_array(arr, dt), TensorInfo(tied_to=f"m{i}.weight"))
    path = tmp_path_factory.mktemp("w") / "m.pth"
    pt.write(ckpt, path)
    back = pt.read(path)
    assert list(back.entries) == list(ckpt.entries)
    for name, e in ckpt.entries.items():
        b = back[name]
        assert b.tensor.dtype == e.tensor.dtype and b.tensor.shape == e.tensor.shape, name
        assert b.tensor.load().tobytes() == e.tensor.load().tobytes(), name
        assert b.info.tied_to == e.info.tied_to, name


def test_restore_dtype_from_hub(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("a.weight", LazyTensor.from_array(np.array([1.5, -2.0], np.float32)), TensorInfo(original_dtype="float16"))
    ckpt.add("b.weight", LazyTensor.from_array(np.array([1.0, 3.0], np.float32)), TensorInfo(original_dtype="bfloat16"))
    report = pt.write(ckpt, tmp_path / "r.pth")
    assert {e.name: e.detail for e in report.of("cast")} == {
        "a.weight": "float32->float16 (original dtype restored)", "b.weight": "float32->bfloat16 (original dtype restored)"}
    back = pt.read(tmp_path / "r.pth")
    assert back["a.weight"].tensor.dtype == "float16" and back["b.weight"].tensor.dtype == "bfloat16"
    np.testing.assert_array_equal(back.tensor("a.weight"), [1.5, -2.0])
    pt.write(ckpt, tmp_path / "k.pth", restore_dtype=False)
    assert pt.read(tmp_path / "k.pth")["a.weight"].tensor.dtype == "float32"


def test_zip_layout_is_torchs(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("w", LazyTensor.from_array(np.arange(10, dtype=np.float32)))
    pt.write(ckpt, tmp_path / "my model.pth")
    with zipfile.ZipFile(tmp_path / "my model.pth") as z:
        names = z.namelist()
        assert names[0] == "my_model/data.pkl" and "my_model/data/0" in names and "my_model/byteorder" in names
        assert z.read("my_model/byteorder") == b"little" and z.read("my_model/version") == b"3\n"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        assert z.testzip() is None
    span = pt.read(tmp_path / "my model.pth")["w"].tensor.span
    assert span.offset % 64 == 0


@pytest.mark.parametrize("threads", [True, False])
def test_zip_member_crcs_are_right_with_or_without_the_read_back_thread(tmp_path, monkeypatch, threads):
    from hubfmt.adapters.torch import zipwriter
    if not threads:
        class NoThreads(zipwriter.ThreadPoolExecutor):
            def submit(self, *a, **k):        # where the real one starts its thread
                raise RuntimeError("can't start new thread")
        monkeypatch.setattr(zipwriter, "ThreadPoolExecutor", NoThreads)
    ckpt = Checkpoint()
    for i in range(12):
        ckpt.add(f"w{i}", LazyTensor.from_array(np.random.default_rng(i).standard_normal(1000 * (i + 1), dtype=np.float32)))
    pt.write(ckpt, tmp_path / "m.pth")
    raw = (tmp_path / "m.pth").read_bytes()
    with zipfile.ZipFile(tmp_path / "m.pth") as z:
        assert z.testzip() is None                    # data against the central directory's CRCs
        for info in z.infolist():                     # and the local headers patched after the data
            assert int.from_bytes(raw[info.header_offset + 14:info.header_offset + 18], "little") == info.CRC
    back = pt.read(tmp_path / "m.pth")
    np.testing.assert_array_equal(back.tensor("w11"), ckpt.tensor("w11"))


def test_pickle_emitter_values_round_trip_through_the_reader(tmp_path):
    extra = {"epoch": 3, "neg": -5, "big": 2**70, "i32": -(2**31), "f": 0.1, "s": "ünï", "b": b"\x00\xff",
             "none": None, "flags": [True, False], "t": (1, 2, 3, 4), "nested": {"x": [1, {"y": 2}]},
             "arr": np.arange(4, dtype=np.int16)}
    ckpt = Checkpoint(extra=extra)
    ckpt.add("fc.weight", LazyTensor.from_array(np.ones((2, 2), np.float32)))
    pt.write(ckpt, tmp_path / "t.pth", layout="training")
    back = pt.read(tmp_path / "t.pth")
    got = back.extra
    np.testing.assert_array_equal(got.pop("arr"), extra["arr"])
    want = dict(extra)
    del want["arr"]
    assert got == want
    assert list(back.entries) == ["fc.weight"]


def test_emitted_pickle_uses_only_weights_only_opcodes_and_globals():
    data = emit(collections.OrderedDict(w=TensorRecord("0", "float32", 4, (2, 2), (2, 1)),
                                        u=TensorRecord("1", "uint16", 2, (2,), (1,))))
    ops = {op.name for op, _, _ in pickletools.genops(io.BytesIO(data))}
    assert ops <= {"PROTO", "GLOBAL", "EMPTY_TUPLE", "REDUCE", "MARK", "BINUNICODE", "BININT1", "TUPLE",
                   "BINPERSID", "TUPLE1", "TUPLE2", "NEWFALSE", "SETITEMS", "STOP"}
    globals_ = {arg for op, arg, _ in pickletools.genops(io.BytesIO(data)) if op.name == "GLOBAL"}
    assert globals_ == {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage",
                        "torch._utils _rebuild_tensor_v3", "torch.storage UntypedStorage", "torch uint16"}
    with pytest.raises(TypeError):
        emit({"x": object()})


def test_sniff(tmp_path):
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("readme.txt", "hi")
    assert pt.sniff(z) is None
    assert pt.sniff(tmp_path / "missing.pth") is None
    ckpt = Checkpoint()
    ckpt.add("w", LazyTensor.from_array(np.zeros(2, np.float32)))
    pt.write(ckpt, tmp_path / "a.ckpt")            # Lightning-style name: still sniffed as torch
    assert pt.sniff(tmp_path / "a.ckpt") == "torch-zip"
    assert ".ckpt" not in {e for f in pt.FORMATS for e in f.extensions}


def test_infer_kinds_from_names_shapes_siblings():
    shapes = {
        "conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "bn.weight": (8,), "bn.bias": (8,),
        "bn.running_mean": (8,), "bn.running_var": (8,), "bn.num_batches_tracked": (),
        "fc.weight": (4, 8), "fc.bias": (4,), "c1.weight": (8, 3, 5), "c3.weight": (2, 2, 1, 1, 1),
        "ln_1.weight": (8,), "ln_1.bias": (8,), "tok_embed.weight": (100, 8),
        "lstm.weight_ih_l0": (32, 8), "lstm.weight_hh_l0": (32, 8), "lstm.bias_ih_l0": (32,), "lstm.bias_hh_l0": (32,),
        "gru.weight_ih_l0": (24, 8), "gru.weight_hh_l0": (24, 8), "pos.anchor": (3,),
    }
    assert torch_names.infer_kinds(shapes) == {
        "conv": "conv2d", "bn": "batch_norm", "fc": "linear", "c1": "conv1d", "c3": "conv3d",
        "ln_1": "layer_norm", "tok_embed": "embedding", "lstm": "lstm", "gru": "gru"}


def test_read_and_write_work_without_torch(tmp_path):
    """`import torch` made to fail: the codec still reads, writes and converts."""
    ckpt_path = tmp_path / "m.pth"
    script = f"""
import sys
sys.modules["torch"] = None
import numpy as np
import hubfmt
from hubfmt.adapters import torch as pt
from hubfmt import Checkpoint, LazyTensor
c = Checkpoint()
c.add("fc.weight", LazyTensor.from_array(np.ones((2, 3), np.float16)))
pt.write(c, {str(ckpt_path)!r})
hubfmt.convert({str(ckpt_path)!r}, {str(tmp_path / "m.safetensors")!r})
hubfmt.convert({str(tmp_path / "m.safetensors")!r}, {str(tmp_path / "back.pth")!r})
assert pt.read({str(tmp_path / "back.pth")!r})["fc.weight"].tensor.dtype == "float16"
try:
    pt.from_model(None)
except hubfmt.HubfmtError as e:
    print("needs torch:", e)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "needs torch" in r.stdout and "pip install torch" in r.stdout


def test_big_endian_and_deflated_archives(tmp_path):
    """byteorder 'big' storages are byte-swapped on load; DEFLATEd members (re-zipped files) are
    decompressed on demand instead of region-read."""
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    pickle_bytes = emit({"w": TensorRecord("0", "float32", 6, (3, 2), (1, 3)), "b": TensorRecord("1", "int16", 2, (2,), (1,))})
    big = tmp_path / "big.pth"
    with zipfile.ZipFile(big, "w") as z:
        z.writestr("big/data.pkl", pickle_bytes)
        z.writestr("big/byteorder", "big")
        z.writestr("big/data/0", data.astype(">f4").tobytes())
        z.writestr("big/data/1", np.array([1, -2], ">i2").tobytes())
    ck = pt.read(big)
    np.testing.assert_array_equal(ck.tensor("w"), data.T)
    np.testing.assert_array_equal(ck.tensor("b"), [1, -2])
    deflated = tmp_path / "deflated.pth"
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("d/data.pkl", pickle_bytes)
        z.writestr("d/data/0", data.tobytes())
        z.writestr("d/data/1", np.array([1, -2], "<i2").tobytes())
    ck = pt.read(deflated)
    assert ck["w"].tensor.span is None
    np.testing.assert_array_equal(ck.tensor("w"), data.T)
    np.testing.assert_array_equal(ck.tensor("b"), [1, -2])
