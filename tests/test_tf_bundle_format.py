"""The TensorFlow checkpoint-bundle codec and TF naming rules, without TensorFlow."""
from __future__ import annotations

import doctest
import os

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hubfmt
from hubfmt.io import hubfile
from hubfmt.codecs import protowire
from hubfmt.adapters import tensorflow as tfa
from hubfmt.adapters.tensorflow import bundle, bundle_write, names, partitioned, sstable
from hubfmt.adapters.tensorflow import writer as tf_writer
from hubfmt.format import checksums
from hubfmt.format.checkpoint import Checkpoint, LayerInfo, TensorInfo
from hubfmt.format.tensor import LazyTensor
from hubfmt.errors import ConversionError, OutputError

# A checkpoint tf.compat.v1.train.Saver wrote (TF 2.21): float32 `scope/a` [2,3] = 0..5 and a
# string tensor `s` = [b"hello", b"wo"].
TF_INDEX = bytes.fromhex(
    "00000608011a02080100010f730807120412020802280d35beb0b9aa010615636f70652f61080112081202080212020803200d2818"
    "35c0db3d170000000001000000005e3a744a000000000100000000c0f2a1b0000102740042000000000100000000abe0c387470854"
    "0e00000000000000000000000000000000000000000000000000000000000000000000000057fb808b247547db")
TF_DATA = bytes.fromhex("0502b4a1057f68656c6c6f776f000000000000803f0000004000004040000080400000a040")


def tf_written(tmp_path, name="model"):
    (tmp_path / f"{name}.index").write_bytes(TF_INDEX)
    (tmp_path / f"{name}.data-00000-of-00001").write_bytes(TF_DATA)
    return tmp_path / name


def test_doctests():
    for mod in (sstable, names, partitioned, checksums):
        assert doctest.testmod(mod).failed == 0, mod.__name__


def _bytewise_crc32c(data: bytes) -> int:
    """CRC-32C by its definition (reflected Castagnoli polynomial, one byte at a time)."""
    table = []
    for b in range(256):
        r = b
        for _ in range(8):
            r = (r >> 1) ^ 0x82F63B78 if r & 1 else r >> 1
        table.append(r)
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def test_crc32c_uses_the_c_extension_in_the_pinned_environment():
    # google-crc32c is a hard dependency: its pure-Python fallback (about 1 MB/s) would make
    # TensorFlow conversions far slower without any test noticing.
    import google_crc32c
    assert google_crc32c.implementation == "c"
    assert sstable.crc32c is not None and sstable.crc32c(b"123456789") == 0xE3069283


def test_crc32c_matches_the_bytewise_definition_for_every_buffer_kind():
    rng = np.random.default_rng(0)
    for n in (0, 1, 3, 65535, 65536, 65537, 300_001):
        arr = rng.integers(0, 256, n, dtype=np.uint8)
        data = arr.tobytes()
        want = _bytewise_crc32c(data)
        fn = sstable.crc32c
        assert fn(data) == want
        # every buffer kind the readers and writers pass
        assert fn(arr) == fn(memoryview(data)) == fn(bytearray(data)) == want
        k = n // 3
        assert fn(data[k:], fn(data[:k])) == want


def test_crc32c_of_a_non_contiguous_array_is_that_of_its_c_order_bytes():
    x = np.arange(24, dtype=np.float32).reshape(4, 6).T
    assert sstable.crc32c(x) == _bytewise_crc32c(np.ascontiguousarray(x).tobytes())


def test_masked_crc_round_trips():
    for v in (0, 1, 0x12345678, 0xFFFFFFFF):
        assert sstable.unmask(sstable.mask(v)) == v


def test_reads_what_tensorflow_wrote(tmp_path):
    b = bundle.open_bundle(str(tf_written(tmp_path)))
    assert b.num_shards == 1 and list(b.entries) == ["s", "scope/a"]
    np.testing.assert_array_equal(b.tensor("scope/a").load(), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert b.strings("s") == [b"hello", b"wo"]
    ckpt = tfa.read(tmp_path / "model")
    assert list(ckpt) == ["scope.a"] and ckpt["scope.a"].tensor.span is not None
    assert ckpt.report.of("dropped")[0].name == "s"


def test_writer_reproduces_tensorflow_bytes(tmp_path):
    """Same tensors in, the same .index and .data out, byte for byte, as TensorFlow's writer."""
    outs = [bundle_write.OutTensor("s", strings=[b"hello", b"wo"], shape=(2,)),
            bundle_write.OutTensor("scope/a", LazyTensor.from_array(np.arange(6, dtype=np.float32).reshape(2, 3)))]
    bundle_write.write_bundle(str(tmp_path / "m"), outs)
    assert (tmp_path / "m.data-00000-of-00001").read_bytes() == TF_DATA
    ours = sstable.read_table((tmp_path / "m.index").read_bytes())
    assert ours == sstable.read_table(TF_INDEX)


def test_table_with_many_blocks_round_trips():
    items = [(b""), *[f"layer_{i:04d}/kernel".encode() for i in range(3000)]]
    pairs = [(k, os.urandom(200)) for k in items]
    table = sstable.write_table(pairs)
    assert sstable.read_table(table) == pairs
    footer = table[-48:]
    idx_off = protowire.read_varint(footer, protowire.read_varint(footer, protowire.read_varint(footer, 0)[1])[1])[0]
    assert idx_off > sstable.BLOCK_SIZE                 # more than one data block


def _canonical_cnn() -> Checkpoint:
    rng = np.random.default_rng(1)
    c = Checkpoint()

    def add(name, shape, kind, dtype=np.float32):
        c.add(name, LazyTensor.from_array(rng.standard_normal(shape).astype(dtype)), TensorInfo(kind=kind))
    add("features.conv.weight", (8, 3, 3, 3), "conv2d")
    add("features.conv.bias", (8,), "conv2d")
    add("features.dw.weight", (16, 1, 3, 3), "depthwise_conv2d", np.float16)
    c.layers["features.dw"] = LayerInfo("depthwise_conv2d", {"groups": 8})
    add("features.up.weight", (16, 4, 2, 2), "conv_transpose2d")
    for role in ("weight", "bias", "running_mean", "running_var"):
        add(f"features.bn.{role}", (4,), "batch_norm")
    c.add("features.bn.num_batches_tracked", LazyTensor.from_array(np.array(7, np.int64)), TensorInfo(kind="batch_norm"))
    c.layers["features.bn"] = LayerInfo("batch_norm", {"eps": 1e-3, "momentum": 0.01})
    add("head.weight", (10, 4), "linear")
    add("head.bias", (10,), "linear")
    add("rnn.weight_ih_l0", (20, 4), "lstm")
    add("rnn.weight_hh_l0", (20, 5), "lstm")
    add("rnn.bias_ih_l0", (20,), "lstm")
    c.add("rnn.bias_hh_l0", LazyTensor.from_array(np.zeros(20, np.float32)), TensorInfo(kind="lstm"))
    return c


def test_canonical_to_tf1_and_back_is_exact(tmp_path):
    src = _canonical_cnn()
    report = tfa.write(src, tmp_path / "m")
    keys = list(bundle.open_bundle(str(tmp_path / "m")).entries)
    assert {"features/conv/kernel", "features/dw/depthwise_kernel", "features/bn/moving_variance",
            "head/kernel", "rnn/kernel", "rnn/bias"} <= set(keys)
    assert "features.bn.num_batches_tracked" in report.names("dropped")
    back = tfa.read(tmp_path / "m", kinds={"features.up": "conv_transpose2d", "rnn": "tf1_lstm"})
    for name in src:
        if name.endswith("num_batches_tracked"):
            continue
        a, b = src.tensor(name), back.tensor(name)
        if name.startswith("rnn.bias"):
            # one TF1 bias holds their sum; forget_bias is subtracted on the way out and added back
            np.testing.assert_allclose(back.tensor("rnn.bias_ih_l0") + back.tensor("rnn.bias_hh_l0"),
                                       src.tensor("rnn.bias_ih_l0") + src.tensor("rnn.bias_hh_l0"), rtol=0, atol=1e-6)
            continue
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    assert back["features.dw.weight"].tensor.dtype == "float16"        # original dtype restored
    assert back.layers["features.dw"].attrs["groups"] == 8


def test_kinds_inferred_from_names_ranks_and_bias(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {"enc/conv2d/kernel": (3, 3, 2, 4), "enc/conv2d/bias": (4,),
              "dec/conv2d_transpose/kernel": (2, 2, 3, 4), "dec/conv2d_transpose/bias": (3,),
              "dw/kernel": (3, 3, 4, 2), "dw/bias": (8,),                      # Keras 3 DepthwiseConv2D
              "emb/embeddings": (10, 3), "ln/gamma": (3,), "ln/beta": (3,),
              "fc/weights": (4, 2), "fc/biases": (2,)}
    outs = [bundle_write.OutTensor(n, LazyTensor.from_array(rng.standard_normal(s).astype(np.float32))) for n, s in arrays.items()]
    bundle_write.write_bundle(str(tmp_path / "m"), outs)
    c = tfa.read(tmp_path / "m")
    kinds = {n: e.info.kind for n, e in c.entries.items()}
    assert kinds["enc.conv2d.weight"] == "conv2d" and c["enc.conv2d.weight"].tensor.shape == (4, 2, 3, 3)
    assert kinds["dec.conv2d_transpose.weight"] == "conv_transpose2d" and c["dec.conv2d_transpose.weight"].tensor.shape == (4, 3, 2, 2)
    assert kinds["dw.weight"] == "depthwise_conv2d" and c["dw.weight"].tensor.shape == (8, 1, 3, 3)
    assert kinds["emb.weight"] == "embedding" and kinds["ln.weight"] == "layer_norm"
    assert c["fc.weight"].tensor.shape == (2, 4)
    # TF1 slim leaves come back on export
    tfa.write(c, tmp_path / "again")
    assert {"fc/weights", "fc/biases"} <= set(bundle.open_bundle(str(tmp_path / "again")).entries)


def test_training_state_and_ema_without_tensorflow(tmp_path):
    w = np.ones((2, 3), np.float32)
    outs = [bundle_write.OutTensor(n, LazyTensor.from_array(a)) for n, a in [
        ("dense/kernel", w), ("dense/kernel/Adam", w), ("dense/kernel/Adam_1", w),
        ("dense/kernel/ExponentialMovingAverage", w * 2), ("beta1_power", np.float32(0.9)),
        ("global_step", np.int64(1234)), ("conv/kernel/Momentum", np.ones((1, 1, 1, 1), np.float32))]]
    bundle_write.write_bundle(str(tmp_path / "m"), outs)
    c = tfa.read(tmp_path / "m")
    # conv/kernel/Momentum has no conv/kernel beside it: a weight that happens to be named so
    assert list(c) == ["conv.kernel.Momentum", "dense.weight"] and c.tensor("dense.weight").sum() == 6
    dropped = c.report.names("dropped")
    assert {"dense/kernel/Adam", "dense/kernel/Adam_1", "beta1_power", "global_step",
            "dense/kernel/ExponentialMovingAverage"} <= set(dropped)
    assert c.extra["global_step"] == 1234
    ema = tfa.read(tmp_path / "m", prefer_ema=True)
    assert ema.tensor("dense.weight").sum() == 12 and "dense/kernel" in ema.report.names("dropped")


def test_gru_without_reset_after_is_refused_unless_not_strict(tmp_path):
    rng = np.random.default_rng(3)
    outs = [bundle_write.OutTensor(n, LazyTensor.from_array(rng.standard_normal(s).astype(np.float32)))
            for n, s in [("gru/kernel", (3, 12)), ("gru/recurrent_kernel", (4, 12)), ("gru/bias", (12,))]]
    bundle_write.write_bundle(str(tmp_path / "m"), outs)
    with pytest.raises(ConversionError, match="reset_after"):
        tfa.read(tmp_path / "m")
    loose = tfa.read(tmp_path / "m", strict=False)
    assert sorted(loose) == ["gru.bias", "gru.kernel", "gru.recurrent_kernel"]
    assert loose.report.of("warning")


def test_shards_state_file_and_overwrite(tmp_path):
    c = _canonical_cnn()
    tfa.write(c, tmp_path / "a", max_shard_size=300)
    shards = sorted(p.name for p in tmp_path.iterdir() if ".data-" in p.name)
    assert len(shards) > 2 and shards[0] == f"a.data-00000-of-{len(shards):05d}"
    tfa.write(c, tmp_path / "b.index")
    state = (tmp_path / "checkpoint").read_text()
    assert 'model_checkpoint_path: "b"' in state and 'all_model_checkpoint_paths: "a"' in state
    assert bundle.resolve_prefix(str(tmp_path))[0] == str(tmp_path / "b")
    with pytest.raises(OutputError):
        tfa.write(c, tmp_path / "b")
    tfa.write(c, tmp_path / "b", overwrite=True)
    assert tf_writer.output_prefix(str(tmp_path / "c.data-00000-of-00001")) == str(tmp_path / "c")
    sub = tmp_path / "dir"
    sub.mkdir()
    tfa.write(c, sub)
    assert (sub / "model.ckpt.index").exists() and list(tfa.read(sub)) == list(tfa.read(tmp_path / "b"))


_DTYPES = ["float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
           "uint32", "uint64", "bool", "complex64"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(_DTYPES), st.lists(st.integers(0, 5), max_size=4)), min_size=1, max_size=6),
       st.sampled_from([None, 64, 10_000]))
def test_hypothesis_hub_to_bundle_to_hub_bit_exact(tmp_path_factory, specs, shard_size):
    tmp = tmp_path_factory.mktemp("rt")
    rng = np.random.default_rng(len(specs))
    src = Checkpoint()
    for i, (dt, shape) in enumerate(specs):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(hubfmt.format.dtypes.storage_dtype(dt)).itemsize
        raw = np.frombuffer(rng.bytes(nbytes), np.uint8)
        if dt == "bool":
            raw = raw & 1
        arr = raw.view(hubfmt.format.dtypes.storage_dtype(dt)).reshape(shape)
        src.add(f"block{i}.t", LazyTensor(tuple(shape), dt, lambda a=arr: a), TensorInfo(kind="tensor"))
    hubfile.write(src, tmp / "a.safetensors", keep_dtype=True)
    hub = hubfile.read(tmp / "a.safetensors")
    tfa.write(hub, tmp / "m", max_shard_size=shard_size)
    back = tfa.read(tmp / "m")
    assert list(back) == list(src)
    for name in src:
        a, b = src[name].tensor, back[name].tensor
        assert (a.dtype, a.shape) == (b.dtype, b.shape) and a.load().tobytes() == b.load().tobytes()
    hubfile.write(back, tmp / "b.safetensors", keep_dtype=True)
    again = hubfile.read(tmp / "b.safetensors")
    assert all(again.tensor(n).tobytes() == src.tensor(n).tobytes() for n in src)


def test_cli_convert_to_and_from_a_prefix(tmp_path):
    c = _canonical_cnn()
    hubfile.write(c, tmp_path / "m.safetensors")
    r = run_cli("convert", tmp_path / "m.safetensors", tmp_path / "tf.index", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("convert", tmp_path / "m.safetensors", tmp_path / "plain", "--to", "tensorflow", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plain.index").exists() and (tmp_path / "plain.data-00000-of-00001").exists()
    r = run_cli("inspect", tmp_path / "plain")
    assert r.returncode == 0 and "features.conv.weight" in r.stdout, r.stderr
    r = run_cli("convert", tmp_path / "plain", tmp_path / "back.safetensors", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("formats")
    assert "tf-checkpoint" in r.stdout


def test_export_scope_from_tf1_names_only(tmp_path):
    """A TF1 source keeps its scopes; Keras h5 paths and TF2 object keys are not TF1 names."""
    c = Checkpoint()
    w = LazyTensor.from_array(np.ones((3, 2), np.float32))
    c.add("head.fc.weight", w, TensorInfo(kind="linear", original_name="model/head.fc/kernel"))
    c.add("dense.weight", w, TensorInfo(kind="linear", original_name="layers/dense/vars/0"))
    c.add("out.weight", w, TensorInfo(kind="linear", original_name="out/kernel/.ATTRIBUTES/VARIABLE_VALUE"))
    tfa.write(c, tmp_path / "m")
    assert list(bundle.open_bundle(str(tmp_path / "m")).entries) == ["dense/kernel", "model/head.fc/kernel", "out/kernel"]


def test_dense_after_flatten_is_flagged(tmp_path):
    rng = np.random.default_rng(4)
    outs = [bundle_write.OutTensor(n, LazyTensor.from_array(rng.standard_normal(s).astype(np.float32))) for n, s in
            [("conv/kernel", (3, 3, 3, 8)), ("fc/kernel", (8 * 4 * 4, 10)), ("pooled_fc/kernel", (8, 10))]]
    bundle_write.write_bundle(str(tmp_path / "m"), outs)
    ckpt = tfa.read(tmp_path / "m")
    warned = ckpt.report.names("warning")
    assert "fc" in warned and "pooled_fc" not in warned     # 8 inputs after 8 channels: a pooled map
    with pytest.raises(ConversionError, match="fc.*128 inputs.*-R flatten=4x4"):     # undecided: refused
        hubfmt.write(ckpt, tmp_path / "h.safetensors")
    assert not (tmp_path / "h.safetensors").exists()
    decided = tfa.read(tmp_path / "m", flatten="4x4")
    assert decided.layers["fc"].attrs["flatten"] == [8, 4, 4] and "flatten" not in decided.layers["pooled_fc"].attrs
    hwc = tfa.read(tmp_path / "m", flatten="as-is").array("fc.weight").reshape(10, 4, 4, 8)
    assert np.array_equal(decided.array("fc.weight"), hwc.transpose(0, 3, 1, 2).reshape(10, 128))


def test_tf1_to_hub_to_tf1_keeps_names_and_values(tmp_path):
    """Slim leaves, a separable conv and a fused LSTM cell survive TF1 -> hub file -> TF1. Bytes are
    identical except the LSTM bias: forget_bias is added on import and subtracted on export, which
    can move float32 values by an ulp of 1.0."""
    rng = np.random.default_rng(5)
    spec = [("net/fc/weights", (4, 3)), ("net/fc/biases", (3,)), ("rnn/lstm_cell/kernel", (7, 16)),
            ("rnn/lstm_cell/bias", (16,)), ("net/sep/depthwise_weights", (3, 3, 4, 2)),
            ("net/sep/pointwise_weights", (1, 1, 8, 5)), ("net/sep/biases", (5,)), ("bn/gamma", (5,)),
            ("bn/beta", (5,)), ("bn/moving_mean", (5,)), ("bn/moving_variance", (5,))]
    outs = [bundle_write.OutTensor(n, LazyTensor.from_array(rng.standard_normal(s).astype(np.float32))) for n, s in spec]
    bundle_write.write_bundle(str(tmp_path / "m"), outs)
    hubfmt.convert(tmp_path / "m", tmp_path / "h.safetensors")
    hubfmt.convert(tmp_path / "h.safetensors", tmp_path / "back.index")
    src, back = bundle.open_bundle(str(tmp_path / "m")), bundle.open_bundle(str(tmp_path / "back"))
    assert sorted(src.entries) == sorted(back.entries)
    for k in src.entries:
        a, b = src.tensor(k).load(), back.tensor(k).load()
        if k == "rnn/lstm_cell/bias":
            np.testing.assert_allclose(a, b, rtol=0, atol=2.5e-7)
        else:
            assert a.tobytes() == b.tobytes(), k


def test_tf1_gru_cell_kept_as_linear_with_a_warning(tmp_path):
    rng = np.random.default_rng(6)
    outs = [bundle_write.OutTensor(n, LazyTensor.from_array(rng.standard_normal(s).astype(np.float32))) for n, s in
            [("rnn/gru_cell/gates/kernel", (7, 8)), ("rnn/gru_cell/gates/bias", (8,)),
             ("rnn/gru_cell/candidate/kernel", (7, 4)), ("rnn/gru_cell/candidate/bias", (4,)),
             ("odd/weights", (2, 3)), ("odd/kernel", (2, 3))]]
    bundle_write.write_bundle(str(tmp_path / "m"), outs)
    c = tfa.read(tmp_path / "m")
    assert c["rnn.gru_cell.gates.weight"].tensor.shape == (8, 7)
    assert {"rnn.gru_cell.gates", "rnn.gru_cell.candidate"} <= set(c.report.names("warning"))
    assert {"odd.weights", "odd.kernel"} <= set(c)          # two spellings of one leaf: kept apart, untouched


def test_conv_kind_from_scope_then_bias_then_a_warning(tmp_path):
    rng = np.random.default_rng(7)
    spec = [("up/conv2d_transpose/kernel", (2, 2, 6, 6)), ("up/conv2d_transpose/bias", (6,)),   # in == out: by name
            ("block_dw/depthwise/kernel", (3, 3, 6, 1)),                                        # no bias: by name
            ("mystery/kernel", (3, 3, 6, 1)), ("mystery/bias", (6,)),                           # dw m=1 or transposed
            ("plain/kernel", (3, 3, 6, 6))]                                                     # nothing says
    outs = [bundle_write.OutTensor(n, LazyTensor.from_array(rng.standard_normal(s).astype(np.float32))) for n, s in spec]
    bundle_write.write_bundle(str(tmp_path / "m"), outs)
    c = tfa.read(tmp_path / "m")
    assert c["up.conv2d_transpose.weight"].info.kind == "conv_transpose2d"
    assert c["block_dw.depthwise.weight"].info.kind == "depthwise_conv2d"
    assert c["mystery.weight"].info.kind == "depthwise_conv2d"
    assert c["plain.weight"].info.kind == "conv2d"
    warned = dict((e.name, e.detail) for e in c.report.of("warning"))
    assert "fits depthwise_conv2d and conv_transpose2d" in warned["mystery"] and "plain" in warned
    assert "up.conv2d_transpose" not in warned and "block_dw.depthwise" not in warned
    fixed = tfa.read(tmp_path / "m", kinds={"mystery": "conv_transpose2d"})
    assert fixed["mystery.weight"].info.kind == "conv_transpose2d" and "mystery" not in fixed.report.names("warning")


def test_bundle_conversion_imports_no_framework(tmp_path):
    import subprocess
    import sys

    p = tf_written(tmp_path)
    code = ("import sys, hubfmt; hubfmt.convert(sys.argv[1], sys.argv[2]); hubfmt.convert(sys.argv[2], sys.argv[3]); "
            "print(','.join(m for m in ('tensorflow', 'keras', 'torch', 'h5py') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, str(p), str(tmp_path / "h.safetensors"), str(tmp_path / "o.index")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
