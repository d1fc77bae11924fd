"""The framework-free .ckpt codec and MindSpore safetensors: round trips, names, templates, extras.

No MindSpore here (test_mindspore_without_framework runs the codec with MindSpore unimportable);
the real-MindSpore checks are in test_mindspore_oracle.py.
"""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubfmt.io import hubfile
from hubfmt.adapters import mindspore as adapter
from hubfmt.format.checkpoint import Checkpoint, LayerInfo, TensorInfo
from hubfmt.format.tensor import LazyTensor
from hubfmt.errors import ConversionError, HubfmtError, OutputError
from hubfmt.adapters.mindspore import proto
from hubfmt.codecs.protowire import encode_varint

DTYPES = ["float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "int64",
          "uint8", "uint16", "uint32", "uint64", "bool"]


def _array(draw, dtype: str, shape) -> np.ndarray:
    from hubfmt.format import dtypes
    n = int(np.prod(shape))
    raw = draw(st.binary(min_size=n * dtypes.itemsize(dtype), max_size=n * dtypes.itemsize(dtype)))
    arr = np.frombuffer(raw, dtype=dtypes.storage_dtype(dtype)).reshape(shape)
    return (arr.view(np.uint8) & 1).astype(bool) if dtype == "bool" else arr


@st.composite
def checkpoints(draw):
    ckpt = Checkpoint()
    count = draw(st.integers(1, 6))
    for i in range(count):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))
        name = draw(st.sampled_from(["w", "layer.weight", "a.b.c", "x"])) + f"_{i}"
        ckpt.add(name, lazy(_array(draw, dtype, shape), dtype))
    return ckpt


def lazy(arr: np.ndarray, dtype: str) -> LazyTensor:
    """LazyTensor over `arr` keeping a 0-d shape (LazyTensor.from_array makes scalars [1])."""
    arr = np.asarray(arr)
    return LazyTensor(arr.shape, dtype, lambda: arr)


def _bits(ckpt, name):
    return ckpt.tensor(name).tobytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ckpt=checkpoints(), slice_bytes=st.sampled_from([adapter.writer.SLICE_BYTES, 1, 7]))
def test_ckpt_round_trip_bit_exact(tmp_path_factory, ckpt, slice_bytes):
    path = tmp_path_factory.mktemp("rt") / "m.ckpt"
    adapter.write(ckpt, path, max_slice_bytes=slice_bytes)
    back = adapter.read(path)
    assert list(back) == list(ckpt)
    for name in ckpt:
        assert back[name].tensor.shape == ckpt[name].tensor.shape
        assert back[name].tensor.dtype == ckpt[name].tensor.dtype
        assert _bits(back, name) == _bits(ckpt, name)


def test_fp16_parameters_restored(tmp_path):
    ckpt = Checkpoint()
    half = np.linspace(-2, 2, 12, dtype=np.float16).reshape(3, 4)
    ckpt.add("fc.weight", LazyTensor.from_array(half))
    hubfile.write(ckpt, tmp_path / "h.safetensors")
    hub = hubfile.read(tmp_path / "h.safetensors")
    assert hub["fc.weight"].tensor.dtype == "float32"
    report = adapter.write(hub, tmp_path / "m.ckpt")
    assert report.of("cast")[0].detail == "float32->float16"
    back = adapter.read(tmp_path / "m.ckpt")
    assert back["fc.weight"].tensor.dtype == "float16"
    assert back.tensor("fc.weight").tobytes() == half.tobytes()
    adapter.write(hub, tmp_path / "f.ckpt", restore_dtype=False)
    assert adapter.read(tmp_path / "f.ckpt")["fc.weight"].tensor.dtype == "float32"


def test_wire_format_is_what_mindspore_writes(tmp_path):
    """Bytes of one Value, as mindspore.save_checkpoint 2.10 wrote them (captured from a real file),
    then the crc_num trailer save_checkpoint(crc_check=True) adds: CRC-32 of all that precedes it."""
    ckpt = Checkpoint()
    ckpt.add("h", LazyTensor.from_array(np.arange(6, dtype=np.float16).reshape(2, 3)))
    adapter.write(ckpt, tmp_path / "h.ckpt", write_extra=False)
    real = bytes.fromhex("0a20 0a01 68 121b 0802 0803 1207 466c6f61743136 1a0c 0000003c004000420044 0045")
    import zlib
    assert (tmp_path / "h.ckpt").read_bytes() == real + b"crc_num" + zlib.crc32(real).to_bytes(10, "big")


def test_batchnorm_roles_and_names(tmp_path):
    ckpt = Checkpoint()
    for role in ("gamma", "beta", "moving_mean", "moving_variance"):
        ckpt.add(f"0._bn1.{role}", LazyTensor.from_array(np.arange(4, dtype=np.float32)))
    ckpt.add("_blocks.0._depthwise_conv.weight", LazyTensor.from_array(np.zeros((8, 1, 3, 3), np.float32)))
    ckpt.add("fc.weight", LazyTensor.from_array(np.zeros((10, 8), np.float32)))
    ckpt.add("emb.embedding_table", LazyTensor.from_array(np.zeros((5, 3), np.float32)))
    adapter.write(ckpt, tmp_path / "m.ckpt")
    back = adapter.read(tmp_path / "m.ckpt")
    assert list(back) == ["0._bn1.weight", "0._bn1.bias", "0._bn1.running_mean", "0._bn1.running_var",
                          "_blocks.0._depthwise_conv.weight", "fc.weight", "emb.weight"]
    assert back.layers["0._bn1"].kind == "batch_norm"
    assert back["_blocks.0._depthwise_conv.weight"].info.kind == "depthwise_conv2d"
    assert back["fc.weight"].info.kind == "linear"
    assert back["emb.weight"].info.kind == "embedding"
    assert back["0._bn1.running_var"].info.original_name == "0._bn1.moving_variance"
    # and back to MindSpore's names
    adapter.write(back, tmp_path / "again.ckpt")
    tags = [r.tag for r in proto.scan(tmp_path / "again.ckpt")[0]]
    assert tags == ["0._bn1.gamma", "0._bn1.beta", "0._bn1.moving_mean", "0._bn1.moving_variance",
                    "_blocks.0._depthwise_conv.weight", "fc.weight", "emb.embedding_table"]


def _torch_style_bn() -> Checkpoint:
    ckpt = Checkpoint()
    for role, v in (("weight", 1.0), ("bias", 2.0), ("running_mean", 3.0), ("running_var", 4.0)):
        ckpt.add(f"bn.{role}", LazyTensor.from_array(np.full(4, v, np.float32)), TensorInfo(kind="batch_norm"))
    ckpt.add("bn.num_batches_tracked", LazyTensor.from_array(np.array(7, np.int64)), TensorInfo(kind="batch_norm"))
    return ckpt


def test_template_follows_target_order_and_roles(tmp_path):
    template = [("bn.moving_mean", (4,)), ("bn.moving_variance", (4,)), ("bn.gamma", (4,)), ("bn.beta", (4,))]
    report = adapter.write(_torch_style_bn(), tmp_path / "m.ckpt", template=template)
    records = proto.scan(tmp_path / "m.ckpt")[0]
    assert [r.tag for r in records] == [t[0] for t in template]
    back = adapter.read(tmp_path / "m.ckpt")
    assert [float(back.tensor(n)[0]) for n in ("bn.running_mean", "bn.running_var", "bn.weight", "bn.bias")] == [3, 4, 1, 2]
    assert report.names("dropped") == ["bn.num_batches_tracked"]
    # a .ckpt file works as the template too
    adapter.write(_torch_style_bn(), tmp_path / "n.ckpt", template=tmp_path / "m.ckpt")
    assert (tmp_path / "n.ckpt").read_bytes() == (tmp_path / "m.ckpt").read_bytes()


def test_template_missing_unexpected_and_shape(tmp_path):
    out = tmp_path / "m.ckpt"
    with pytest.raises(ConversionError) as e:
        adapter.write(_torch_style_bn(), out, template=["bn.gamma", "bn.beta", "bn2.gamma"])
    msg = str(e.value)
    assert "missing 1: bn2.gamma" in msg and "unexpected 2: bn.running_mean, bn.running_var" in msg
    assert str(out) in msg and not out.exists()
    with pytest.raises(ConversionError, match="wrong shape 1: bn.gamma"):
        adapter.write(_torch_style_bn(), out, template=[("bn.gamma", (5,)), "bn.beta", "bn.moving_mean",
                                                        "bn.moving_variance"])
    report = adapter.write(_torch_style_bn(), out, template=["bn.gamma", "bn2.gamma"], strict=False)
    assert report.names("missing") == ["bn2.gamma"]
    assert sorted(report.names("unexpected")) == ["bn.bias", "bn.running_mean", "bn.running_var"]
    assert [r.tag for r in proto.scan(out)[0]] == ["bn.gamma"]


def test_template_reshapes_size_one_axes(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("conv.weight", LazyTensor.from_array(np.arange(24, dtype=np.float32).reshape(4, 2, 3)),
             TensorInfo(kind="conv1d"))
    report = adapter.write(ckpt, tmp_path / "m.ckpt", template=[("conv.weight", (4, 2, 1, 3))])
    assert report.of("reshaped")[0].detail == "[4, 2, 3]->[4, 2, 1, 3]"
    assert adapter.read(tmp_path / "m.ckpt")["conv.weight"].tensor.shape == (4, 2, 1, 3)


def test_extra_and_optimizer_state(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("fc.weight", LazyTensor.from_array(np.ones((2, 2), np.float32)))
    ckpt.add("moments.fc.weight", LazyTensor.from_array(np.ones((2, 2), np.float32)))
    ckpt.add("learning_rate", LazyTensor.from_array(np.array(0.1, np.float32)))
    ckpt.extra = {"epoch_num": 3, "step_num": 30, "arch": "effnet-b0", "config": {"depth": 1}}
    report = adapter.write(ckpt, tmp_path / "m.ckpt")
    assert report.of("dropped")[0].name == "config"
    back = adapter.read(tmp_path / "m.ckpt")
    assert list(back) == ["fc.weight"]
    assert back.extra == {"epoch_num": 3, "step_num": 30, "arch": "effnet-b0"}
    assert sorted(back.report.names("dropped")) == ["learning_rate", "moments.fc.weight"]
    kept = adapter.read(tmp_path / "m.ckpt", keep_optimizer=True)
    assert list(kept) == ["fc.weight", "moments.fc.weight", "learning_rate"]


def test_read_only_input_and_ordinary_output_mode(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("w", LazyTensor.from_array(np.ones(3, np.float32)))
    src = tmp_path / "ro.ckpt"
    adapter.write(ckpt, src)
    assert stat.S_IMODE(os.stat(src).st_mode) & 0o644 == 0o644 & ~_umask()
    os.chmod(src, 0o400)                   # as mindspore.save_checkpoint leaves its files
    assert adapter.read(src).tensor("w").tolist() == [1, 1, 1]
    with pytest.raises(OutputError):
        adapter.write(ckpt, src)
    adapter.write(ckpt, tmp_path / "x.ckpt")
    adapter.write(ckpt, tmp_path / "x.ckpt", overwrite=True)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_sniff(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("w", LazyTensor.from_array(np.ones(3, np.float32)))
    adapter.write(ckpt, tmp_path / "m.ckpt")
    adapter.write(ckpt, tmp_path / "m.safetensors")
    hubfile.write(ckpt, tmp_path / "hub.safetensors")
    (tmp_path / "junk.ckpt").write_bytes(b"\x0a\x05hello")
    assert adapter.sniff(tmp_path / "m.ckpt") == "mindspore-ckpt"
    assert adapter.sniff(tmp_path / "m.safetensors") == "mindspore-safetensors"
    assert adapter.sniff(tmp_path / "hub.safetensors") is None
    assert adapter.sniff(tmp_path / "junk.ckpt") is None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ckpt=checkpoints())
def test_mindspore_safetensors_round_trip(tmp_path_factory, ckpt):
    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    adapter.write(ckpt, path)
    back = adapter.read(path)
    assert back.source.format == "mindspore-safetensors"
    assert sorted(back) == sorted(ckpt)
    for name in ckpt:
        assert back[name].tensor.dtype == ckpt[name].tensor.dtype
        assert _bits(back, name) == _bits(ckpt, name)


def test_without_mindspore(tmp_path):
    """hub -> .ckpt -> hub bit-exact, every dtype (float64 too) and scalar/empty shapes, where
    `import mindspore` fails."""
    script = f"""
import sys
sys.modules["mindspore"] = None
import numpy as np
from hubfmt.format import dtypes
from hubfmt.io import hubfile
from hubfmt import Checkpoint, LazyTensor
from hubfmt.adapters import mindspore as adapter
rng = np.random.default_rng(0)
c = Checkpoint()
for dt in {DTYPES!r}:
    for shape in [(), (0,), (2, 0), (3,), (2, 3, 1)]:
        n = int(np.prod(shape)) * dtypes.itemsize(dt)
        a = np.frombuffer(rng.bytes(n), dtype=dtypes.storage_dtype(dt)).reshape(shape)
        a = (a.view(np.uint8) & 1).astype(bool) if dt == "bool" else a
        c.add(f"m.{{dt}}_{{len(c)}}", LazyTensor(shape, dt, lambda a=a: a))
d = {str(tmp_path)!r}
# keep_dtype: random float64 bit patterns overflow float32, which the hub refuses to narrow (#13)
hubfile.write(c, d + "/a.safetensors", keep_dtype=True)
adapter.write(hubfile.read(d + "/a.safetensors"), d + "/m.ckpt")
back = adapter.read(d + "/m.ckpt")
hubfile.write(back, d + "/b.safetensors", keep_dtype=True)
a, b = hubfile.read(d + "/a.safetensors"), hubfile.read(d + "/b.safetensors")
assert list(back) == list(c) == list(a) == list(b)
for name in c:
    assert back[name].tensor.dtype == c[name].tensor.dtype and back[name].tensor.shape == c[name].tensor.shape
    assert a.tensor(name).tobytes() == b.tensor(name).tobytes(), name
    assert back.tensor(name).tobytes() == c.tensor(name).tobytes(), name
assert not [m for m in sys.modules if m.startswith("mindspore") and sys.modules[m] is not None]
print("ok", len(c))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.stdout.strip() == f"ok {len(DTYPES) * 5}", proc.stderr


def test_packed_dims_and_unknown_fields_are_read(tmp_path):
    """proto2 parsers accept packed repeated fields and skip unknown ones: so do we."""
    content = np.arange(6, dtype=np.float32).tobytes()
    tensor = (b"\x0a\x02\x02\x03" + b"\x12\x07Float32" + b"\x28\x05"            # packed dims, unknown field 5
              + b"\x1a" + encode_varint(len(content)) + content)
    value = b"\x0a\x01w" + b"\x12" + encode_varint(len(tensor)) + tensor
    (tmp_path / "p.ckpt").write_bytes(b"\x0a" + encode_varint(len(value)) + value)
    ckpt = adapter.read(tmp_path / "p.ckpt")
    assert ckpt.tensor("w").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_reading_is_lazy_and_copies_are_file_to_file(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("fc.weight", LazyTensor.from_array(np.arange(12, dtype=np.float32).reshape(3, 4)))
    adapter.write(ckpt, tmp_path / "m.ckpt")
    back = adapter.read(tmp_path / "m.ckpt")
    span = back["fc.weight"].tensor.span
    assert span is not None and span.nbytes == 48
    assert (tmp_path / "m.ckpt").read_bytes()[span.offset:span.offset + 48] == ckpt.tensor("fc.weight").tobytes()


def test_layer_kind_from_layer_info(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("bn.weight", LazyTensor.from_array(np.ones(2, np.float32)))
    ckpt.layers["bn"] = LayerInfo("batch_norm")
    adapter.write(ckpt, tmp_path / "m.ckpt")
    assert [r.tag for r in proto.scan(tmp_path / "m.ckpt")[0]] == ["bn.gamma"]


def test_options_are_checked_against_the_declared_ones(tmp_path):
    import hubfmt

    ckpt = Checkpoint()
    ckpt.add("w", LazyTensor.from_array(np.ones(2, np.float32)))
    with pytest.raises(HubfmtError, match="templete: the mindspore-ckpt writer has no such option.*did you mean --template"):
        hubfmt.write(ckpt, tmp_path / "m.ckpt", templete=["w"])
    # --keep-dtype means nothing for a MindSpore checkpoint: one clear error, as for every format
    with pytest.raises(HubfmtError, match="--keep-dtype: the mindspore-ckpt writer has no such option"):
        hubfmt.write(ckpt, tmp_path / "m.ckpt", keep_dtype=True)
    with pytest.raises(HubfmtError, match="-W max_slice_bytes.*not a positive size"):
        hubfmt.write(ckpt, tmp_path / "m.ckpt", max_slice_bytes=0)
    assert not (tmp_path / "m.ckpt").exists()
    hubfmt.write(ckpt, tmp_path / "m.ckpt", max_slice_bytes="1KiB")
    assert adapter.read(tmp_path / "m.ckpt").tensor("w").tolist() == [1.0, 1.0]


def test_two_tensors_one_mindspore_name_is_refused(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("bn.weight", LazyTensor.from_array(np.ones(2, np.float32)), TensorInfo(kind="batch_norm"))
    ckpt.add("bn.gamma", LazyTensor.from_array(np.ones(2, np.float32)))
    with pytest.raises(ConversionError, match="bn.weight and bn.gamma would both be written as 'bn.gamma'"):
        adapter.write(ckpt, tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists()


def test_cli_mindspore_safetensors_needs_to_mindspore(tmp_path):
    from conftest import run_cli
    ckpt = Checkpoint()
    ckpt.add("bn.gamma", LazyTensor.from_array(np.ones(2, np.float16)))
    adapter.write(ckpt, tmp_path / "m.ckpt")
    proc = run_cli("convert", tmp_path / "m.ckpt", tmp_path / "ms.safetensors", "--to", "mindspore")
    assert proc.returncode == 0, proc.stderr
    assert adapter.sniff(tmp_path / "ms.safetensors") == "mindspore-safetensors"
    assert adapter.read(tmp_path / "ms.safetensors")["bn.weight"].tensor.dtype == "float16"
    proc = run_cli("convert", tmp_path / "m.ckpt", tmp_path / "hub.safetensors")     # default: the hub
    assert proc.returncode == 0 and adapter.sniff(tmp_path / "hub.safetensors") is None
