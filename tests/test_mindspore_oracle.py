"""Real MindSpore 2.10 as the oracle: files it writes read right, files we write load right, and the
layer semantics (Dense, Conv2d, depthwise, Conv1d, BatchNorm momentum) are what its layers do."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_same_outputs, require
from hubfmt.format import dtypes
from hubfmt.adapters import mindspore as adapter
from hubfmt.adapters.mindspore import proto
from hubfmt.format.checkpoint import Checkpoint
from hubfmt.format.tensor import LazyTensor
from hubfmt.errors import FormatError

NUMPY = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int8": np.int8,
         "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16,
         "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_}


def _ms():
    ms = require("mindspore")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return ms


def _ms_tensor(ms, arr, dtype):
    if dtype == "bfloat16":
        return ms.Tensor(dtypes.convert(arr, "bfloat16", "float32"), dtype=ms.bfloat16)
    return ms.Tensor(arr)


def _bits_of(ms, param) -> bytes:
    """Raw little-endian bytes of a MindSpore tensor (bfloat16 through float32, exactly)."""
    if param.dtype == ms.bfloat16:
        return dtypes.convert(param.astype(ms.float32).asnumpy(), "float32", "bfloat16").tobytes()
    return param.asnumpy().tobytes()


def _sample(dtype, shape, rng):
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype == "bfloat16":
        return dtypes.convert(rng.normal(0, 3, shape).astype(np.float32), "float32", "bfloat16")
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(NUMPY[dtype])
        return rng.integers(info.min, info.max, shape, dtype=NUMPY[dtype], endpoint=True)
    return rng.normal(0, 3, shape).astype(NUMPY[dtype])


def _save(ms, path, arrays: dict, **kw):
    ms.save_checkpoint([{"name": n, "data": _ms_tensor(ms, a, dt)} for n, (a, dt) in arrays.items()], str(path), **kw)


ALL = ["float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "int64",
       "uint8", "uint16", "uint32", "uint64", "bool"]


def test_reads_what_mindspore_writes(tmp_path):
    ms = _ms()
    rng = np.random.default_rng(0)
    arrays = {f"layer{i}.{dt}": (_sample(dt, shape, rng), dt)
              for i, (dt, shape) in enumerate([(d, (3, 2)) for d in ALL] + [("float32", ()), ("int64", ()), ("float16", (2, 0, 3))])}
    path = tmp_path / "all.ckpt"
    _save(ms, path, arrays, append_dict={"epoch_num": 4, "note": "trained on ImageNet"})
    assert os.stat(path).st_mode & 0o777 == 0o400       # MindSpore's own mode: we must still read it
    oracle = ms.load_checkpoint(str(path))
    ckpt = adapter.read(path)
    assert ckpt.extra == {"epoch_num": 4, "note": "trained on ImageNet"}
    for name in oracle:
        if name in ckpt.extra:
            continue
        e = ckpt[name]
        assert e.tensor.shape == tuple(oracle[name].shape), name
        assert e.tensor.dtype == adapter.names.TENSOR_TYPES[str(oracle[name].dtype)], name
        assert ckpt.tensor(name).tobytes() == _bits_of(ms, oracle[name]), name
    # save_checkpoint silently skips a tensor with no elements: MindSpore has no such entry.
    assert "layer15.float16" not in oracle and "layer15.float16" not in ckpt


def test_reads_sliced_tensors_and_crc(tmp_path, monkeypatch):
    ms = _ms()
    from mindspore.train import serialization
    monkeypatch.setattr(serialization, "SLICE_SIZE", 1)      # KiB: slices of 1 KiB instead of 512 MiB
    rng = np.random.default_rng(1)
    arrays = {"big.weight": (rng.normal(size=(40, 30)).astype(np.float32), "float32"),
              "small.bias": (rng.normal(size=(3,)).astype(np.float16), "float16")}
    path = tmp_path / "sliced.ckpt"
    _save(ms, path, arrays, crc_check=True)
    records, has_crc = proto.scan(path)
    assert has_crc and len(records) == 2 and len(records[0].pieces) == 5      # 4800 bytes in 1 KiB pieces
    ckpt = adapter.read(path)
    oracle = ms.load_checkpoint(str(path), crc_check=True)
    for name in arrays:
        assert ckpt.tensor(name).tobytes() == oracle[name].asnumpy().tobytes()
    assert not ckpt.report.of("warning")                 # checked by default
    assert "crc_num" in adapter.read(path, verify_checksums=False).report.of("warning")[0].detail


@st.composite
def _checkpoints(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ckpt = Checkpoint()
    for i in range(draw(st.integers(1, 5))):
        dt = draw(st.sampled_from(ALL))
        shape = tuple(draw(st.lists(st.integers(1, 5), max_size=4)))
        arr = _sample(dt, shape, rng)
        ckpt.add(f"cell{i}.w", LazyTensor(arr.shape, dt, lambda a=arr: a))
    return ckpt


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ckpt=_checkpoints(), slice_bytes=st.sampled_from([adapter.writer.SLICE_BYTES, 5]))
def test_mindspore_loads_what_we_write(tmp_path_factory, ckpt, slice_bytes):
    ms = _ms()
    d = tmp_path_factory.mktemp("w")
    ckpt.extra = {"epoch_num": 2, "arch": "effnet"}
    adapter.write(ckpt, d / "m.ckpt", max_slice_bytes=slice_bytes)
    oracle = ms.load_checkpoint(str(d / "m.ckpt"))
    assert list(oracle) == list(ckpt) + ["epoch_num", "arch"]
    assert oracle["arch"] == "effnet" and int(oracle["epoch_num"].asnumpy()) == 2
    for name in ckpt:
        assert tuple(oracle[name].shape) == ckpt[name].tensor.shape
        assert adapter.names.TENSOR_TYPES[str(oracle[name].dtype)] == ckpt[name].tensor.dtype
        assert _bits_of(ms, oracle[name]) == ckpt.tensor(name).tobytes()
    adapter.write(ckpt, d / "m.safetensors")
    oracle = ms.load_checkpoint(str(d / "m.safetensors"), format="safetensors")
    for name in ckpt:
        assert _bits_of(ms, oracle[name]) == ckpt.tensor(name).tobytes()


def test_reads_mindspore_safetensors(tmp_path):
    ms = _ms()
    net = ms.nn.SequentialCell([ms.nn.Conv2d(3, 4, 3), ms.nn.BatchNorm2d(4), ms.nn.Dense(4, 2)])
    path = tmp_path / "net.safetensors"
    ms.save_checkpoint(net, str(path), format="safetensors")
    assert adapter.sniff(path) == "mindspore-safetensors"
    ckpt = adapter.read(path)
    assert ckpt.layers["1"].kind == "batch_norm"
    for name, p in net.parameters_dict().items():
        canon = adapter.names.canonical_name(name)
        assert ckpt.tensor(canon).tobytes() == p.asnumpy().tobytes()


def _transfer(ms, torch, ms_cell, torch_module, tmp_path):
    """MindSpore cell -> .ckpt -> hub -> torch module (same names), as files."""
    path = tmp_path / "cell.ckpt"
    ms.save_checkpoint(ms_cell, str(path))
    ckpt = adapter.read(path)
    state = {n: torch.from_numpy(ckpt.tensor(n).copy()) for n in ckpt}
    torch_module.load_state_dict(state, strict=True)
    return ckpt


def test_dense_conv_depthwise_layouts_match_torch(tmp_path):
    ms = _ms()
    torch = require("torch")
    rng = np.random.default_rng(2)
    cases = [
        (ms.nn.Dense(5, 3), torch.nn.Linear(5, 3), (2, 5), "linear", (3, 5)),
        (ms.nn.Conv2d(4, 6, 3, pad_mode="pad", padding=1, has_bias=True), torch.nn.Conv2d(4, 6, 3, padding=1),
         (2, 4, 7, 7), "conv2d", (6, 4, 3, 3)),
        # depthwise with multiplier 2: group = channels = 4, 8 outputs: [C*m, 1, kh, kw]
        (ms.nn.Conv2d(4, 8, 3, pad_mode="pad", padding=1, group=4, has_bias=True),
         torch.nn.Conv2d(4, 8, 3, padding=1, groups=4), (2, 4, 7, 7), "depthwise_conv2d", (8, 1, 3, 3)),
    ]
    for ms_cell, t_mod, in_shape, kind, wshape in cases:
        ms_cell = ms.nn.SequentialCell([ms_cell])            # parameter names "0.weight", "0.bias"
        t_mod = torch.nn.Sequential(t_mod)
        ckpt = _transfer(ms, torch, ms_cell, t_mod, tmp_path)
        assert ckpt["0.weight"].tensor.shape == wshape and ckpt["0.weight"].info.kind == kind
        x = rng.normal(size=in_shape).astype(np.float32)
        with torch.no_grad():
            expect = t_mod(torch.from_numpy(x)).numpy()
        assert_same_outputs(ms_cell(ms.Tensor(x)).asnumpy(), expect)
        os.remove(tmp_path / "cell.ckpt")


def test_conv1d_weight_is_four_dimensional_in_mindspore(tmp_path):
    ms = _ms()
    torch = require("torch")
    cell = ms.nn.SequentialCell([ms.nn.Conv1d(3, 5, 3, pad_mode="pad", padding=1, has_bias=True)])
    assert tuple(cell.parameters_dict()["0.weight"].shape) == (5, 3, 1, 3)
    ckpt = adapter.from_model(cell)
    assert ckpt["0.weight"].tensor.shape == (5, 3, 3) and ckpt["0.weight"].info.kind == "conv1d"
    t_mod = torch.nn.Sequential(torch.nn.Conv1d(3, 5, 3, padding=1))
    t_mod.load_state_dict({n: torch.from_numpy(ckpt.tensor(n).copy()) for n in ckpt})
    x = np.random.default_rng(3).normal(size=(2, 3, 9)).astype(np.float32)
    with torch.no_grad():
        assert_same_outputs(cell(ms.Tensor(x)).asnumpy(), t_mod(torch.from_numpy(x)).numpy())
    # and back: the file keeps MindSpore's [O, I, 1, K]; a Cell template reshapes too
    adapter.write(ckpt, tmp_path / "c1.ckpt")
    assert adapter.read(tmp_path / "c1.ckpt")["0.weight"].tensor.shape == (5, 3, 1, 3)
    other = ms.nn.SequentialCell([ms.nn.Conv1d(3, 5, 3, pad_mode="pad", padding=1, has_bias=True)])
    report = adapter.to_model(ckpt, other)
    assert report.of("reshaped")[0].detail == "[5, 3, 3]->[5, 3, 1, 3]"
    assert_same_outputs(other(ms.Tensor(x)).asnumpy(), cell(ms.Tensor(x)).asnumpy())


def test_two_conv1d_cells_of_different_sizes_keep_their_own_shapes():
    """from_model reshapes every Conv1d weight from [O, I, 1, K]; each with its own shape (the
    reshape was once a closure over the loop variables: every weight got the last one's shape)."""
    ms = _ms()
    torch = require("torch")
    cell = ms.nn.SequentialCell([ms.nn.Conv1d(3, 5, 3, pad_mode="pad", padding=1, has_bias=True),
                                 ms.nn.Conv1d(5, 2, 1, has_bias=True)])
    ckpt = adapter.from_model(cell)
    assert ckpt["0.weight"].tensor.shape == (5, 3, 3) and ckpt.tensor("0.weight").shape == (5, 3, 3)
    assert ckpt["1.weight"].tensor.shape == (2, 5, 1) and ckpt.tensor("1.weight").shape == (2, 5, 1)
    t_mod = torch.nn.Sequential(torch.nn.Conv1d(3, 5, 3, padding=1), torch.nn.Conv1d(5, 2, 1))
    t_mod.load_state_dict({n: torch.from_numpy(ckpt.tensor(n).copy()) for n in ckpt}, strict=True)
    x = np.random.default_rng(4).normal(size=(2, 3, 9)).astype(np.float32)
    with torch.no_grad():
        assert_same_outputs(cell(ms.Tensor(x)).asnumpy(), t_mod(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("ms_momentum", [0.9, 0.99])
def test_batchnorm_momentum_recorded_in_torch_convention(ms_momentum):
    """Measured, not assumed: a training-mode forward moves moving_mean by the recorded momentum m
    as new = (1 - m) * old + m * batch_mean, which is torch's meaning of momentum."""
    ms = _ms()
    bn = ms.nn.BatchNorm2d(3, momentum=ms_momentum)
    cell = ms.nn.SequentialCell([bn])
    m = adapter.from_model(cell).layers["0"].attrs["momentum"]
    assert m == pytest.approx(1 - ms_momentum)
    assert adapter.from_model(cell).layers["0"].attrs["eps"] == pytest.approx(1e-5)
    x = np.random.default_rng(4).normal(5.0, 2.0, (8, 3, 4, 4)).astype(np.float32)
    cell.set_train(True)
    cell(ms.Tensor(x))
    expect = m * x.mean(axis=(0, 2, 3))          # old moving_mean is 0
    assert np.allclose(bn.moving_mean.asnumpy(), expect, rtol=1e-5)
    torch = require("torch")
    tbn = torch.nn.BatchNorm2d(3, momentum=m).train()
    tbn(torch.from_numpy(x))
    assert np.allclose(tbn.running_mean.numpy(), bn.moving_mean.asnumpy(), rtol=1e-5)
    assert np.allclose(tbn.running_var.numpy(), bn.moving_variance.asnumpy(), rtol=1e-5)


def test_half_precision_cells_in_memory_round_trip():
    ms = _ms()
    net = ms.nn.SequentialCell([ms.nn.Dense(4, 3), ms.nn.Dense(3, 2)])
    net[0].weight.set_dtype(ms.float16)
    net[1].weight.set_dtype(ms.bfloat16)
    ckpt = adapter.from_model(net)
    assert ckpt["0.weight"].tensor.dtype == "float16" and ckpt["1.weight"].tensor.dtype == "bfloat16"
    other = ms.nn.SequentialCell([ms.nn.Dense(4, 3), ms.nn.Dense(3, 2)])
    other[0].weight.set_dtype(ms.float16)
    other[1].weight.set_dtype(ms.bfloat16)
    adapter.to_model(ckpt, other)
    for name, p in net.parameters_dict().items():
        q = other.parameters_dict()[name]
        assert p.dtype == q.dtype and _bits_of(ms, p) == _bits_of(ms, q)


def test_training_checkpoint_optimizer_state_dropped(tmp_path):
    ms = _ms()
    net = ms.nn.SequentialCell([ms.nn.Dense(4, 2)])
    opt = ms.nn.Adam(net.trainable_params(), 1e-3)
    step = ms.nn.TrainOneStepCell(ms.nn.WithLossCell(net, ms.nn.MSELoss()), opt)
    step(ms.Tensor(np.ones((2, 4), np.float32)), ms.Tensor(np.zeros((2, 2), np.float32)))
    ms.save_checkpoint(step, str(tmp_path / "train.ckpt"), append_dict={"epoch_num": 1, "step_num": 1})
    ckpt = adapter.read(tmp_path / "train.ckpt")
    assert list(ckpt) == ["0.weight", "0.bias"]
    assert sorted(ckpt.report.names("dropped")) == sorted(
        ["global_step", "learning_rate", "beta1_power", "beta2_power", "moment1.0.weight", "moment1.0.bias",
         "moment2.0.weight", "moment2.0.bias"])
    assert ckpt.extra == {"epoch_num": 1, "step_num": 1}


@pytest.mark.parametrize("suffix,fmt", [(".ckpt", "ckpt"), (".safetensors", "safetensors")])
def test_crc_written_by_mindspore_is_verified(tmp_path, suffix, fmt):
    ms = _ms()
    rng = np.random.default_rng(5)
    arrays = {"a.weight": (rng.normal(size=(6, 5)).astype(np.float32), "float32"),
              "b.bias": (rng.normal(size=(4,)).astype(np.float16), "float16")}
    path = tmp_path / f"crc{suffix}"
    _save(ms, path, arrays, crc_check=True, format=fmt)
    ckpt = adapter.read(path, verify_checksums=True)
    assert not ckpt.report.of("warning")
    raw = bytearray(path.read_bytes())
    span = ckpt["a.weight"].tensor.span
    raw[span.offset + 3] ^= 0x01                 # one bit of one weight
    damaged = tmp_path / f"damaged{suffix}"
    damaged.write_bytes(bytes(raw))
    assert adapter.read(damaged, verify_checksums=False).tensor("a.weight").tobytes() != arrays["a.weight"][0].tobytes()
    with pytest.raises(FormatError, match="crc_num does not match"):
        adapter.read(damaged)                    # checked by default
    with pytest.raises(FormatError, match="crc_num does not match"):
        adapter.read(damaged, verify_checksums=True)
    with pytest.raises(ValueError):              # MindSpore agrees that the file is damaged
        ms.load_checkpoint(str(damaged), crc_check=True, format=fmt)


def test_encrypted_checkpoint_is_named_as_such(tmp_path):
    ms = _ms()
    path = tmp_path / "enc.ckpt"
    ms.save_checkpoint(ms.nn.SequentialCell([ms.nn.Dense(4, 2)]), str(path), enc_key=b"0123456789abcdef")
    with pytest.raises(FormatError, match="encrypted MindSpore checkpoint"):
        adapter.read(path)
    assert adapter.sniff(path) is None


def test_conv_transpose_layout_is_torch_layout():
    """Conv2dTranspose weights are [in, out/groups, kh, kw] in both frameworks (measured, groups 1 and 2).
    A file cannot tell them from convolutions; the live Cell can."""
    ms = _ms()
    torch = require("torch")
    x = np.random.default_rng(6).normal(size=(1, 4, 5, 5)).astype(np.float32)
    for groups in (1, 2):
        cell = ms.nn.SequentialCell([ms.nn.Conv2dTranspose(4, 8, 3, stride=2, pad_mode="valid", group=groups,
                                                           has_bias=True)])
        ckpt = adapter.from_model(cell)
        assert ckpt["0.weight"].info.kind == "conv_transpose2d"
        assert ckpt["0.weight"].tensor.shape == (4, 8 // groups, 3, 3)
        t_mod = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 8, 3, stride=2, groups=groups))
        t_mod.load_state_dict({n: torch.from_numpy(ckpt.tensor(n).copy()) for n in ckpt})
        with torch.no_grad():
            assert_same_outputs(cell(ms.Tensor(x)).asnumpy(), t_mod(torch.from_numpy(x)).numpy())


def test_norms_prelu_embedding_map_to_torch(tmp_path):
    """MindSpore LayerNorm/GroupNorm/InstanceNorm2d/PReLU/Embedding parameters land on torch's
    equivalents, and from_model records the eps torch must use."""
    ms = _ms()
    torch = require("torch")
    rng = np.random.default_rng(7)
    cell = ms.nn.SequentialCell([ms.nn.LayerNorm((6,)), ms.nn.GroupNorm(2, 4), ms.nn.InstanceNorm2d(4),
                                 ms.nn.PReLU(4), ms.nn.Embedding(5, 3)])
    for p in cell.get_parameters():
        p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
    ms.save_checkpoint(cell, str(tmp_path / "norms.ckpt"))
    ckpt = adapter.read(tmp_path / "norms.ckpt")
    # A file cannot tell InstanceNorm2d (moving_mean, moving_variance, gamma, beta) from BatchNorm,
    # nor a PReLU's `w` from any parameter named w; the live Cell can.
    assert ckpt.layers["2"].kind == "batch_norm" and "3.w" in ckpt
    live = adapter.from_model(cell)
    attrs = live.layers
    assert attrs["2"].kind == "instance_norm" and attrs["3"].kind == "prelu" and "3.weight" in live
    assert [live.tensor(n).tobytes() for n in live] == [ckpt.tensor(n).tobytes() for n in ckpt]
    assert attrs["0"].attrs["eps"] == pytest.approx(1e-7) and attrs["1"].attrs == {"eps": 1e-5, "num_groups": 2}
    t = {
        "0": torch.nn.LayerNorm(6, eps=attrs["0"].attrs["eps"]), "1": torch.nn.GroupNorm(2, 4),
        "2": torch.nn.InstanceNorm2d(4, affine=True, track_running_stats=True), "3": torch.nn.PReLU(4),
        "4": torch.nn.Embedding(5, 3),
    }
    state = {n: torch.from_numpy(live.tensor(n).copy()) for n in live}
    torch_seq = torch.nn.ModuleDict(t)
    missing, unexpected = torch_seq.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"2.num_batches_tracked"}
    x2 = rng.normal(size=(3, 6)).astype(np.float32)
    x4 = rng.normal(size=(2, 4, 5, 5)).astype(np.float32)
    ids = np.array([[0, 4, 2]], np.int32)
    with torch.no_grad():
        assert_same_outputs(cell[0](ms.Tensor(x2)).asnumpy(), t["0"](torch.from_numpy(x2)).numpy())
        assert_same_outputs(cell[1](ms.Tensor(x4)).asnumpy(), t["1"](torch.from_numpy(x4)).numpy())
        assert_same_outputs(cell[3](ms.Tensor(x4)).asnumpy(), t["3"](torch.from_numpy(x4)).numpy())
        assert_same_outputs(cell[4](ms.Tensor(ids)).asnumpy(), t["4"](torch.from_numpy(ids).long()).numpy())
    # and back into MindSpore names
    adapter.write(ckpt, tmp_path / "back.ckpt")
    assert [r.tag for r in proto.scan(tmp_path / "back.ckpt")[0]] == list(cell.parameters_dict())


def test_hubfmt_writes_the_crc_num_mindspore_checks(tmp_path):
    """A .ckpt hubfmt writes ends in the crc_num trailer (#13): MindSpore loads it with and without
    crc_check, hubfmt verifies it, and the file cut on a record boundary is no longer a valid
    smaller model: it has no trailer, so hubfmt's report warns (MindSpore 2.10's crc_check only logs
    a warning too, and loads the smaller model)."""
    ms = _ms()
    rng = np.random.default_rng(7)
    arrays = {"a.weight": rng.normal(size=(6, 5)).astype(np.float32), "b.bias": rng.normal(size=(4,)).astype(np.float16)}
    ckpt = Checkpoint()
    for n, a in arrays.items():
        ckpt.add(n, LazyTensor.from_array(a))
    ckpt.extra = {"epoch_num": 3}
    path = tmp_path / "crc.ckpt"
    adapter.write(ckpt, path)
    records, has_crc = proto.scan(path)
    assert has_crc and [r.tag for r in records] == ["a.weight", "b.bias", "epoch_num"]
    for crc_check in (True, False):
        loaded = ms.load_checkpoint(str(path), crc_check=crc_check)
        assert all(np.array_equal(loaded[n].asnumpy(), a) for n, a in arrays.items())
    back = adapter.read(path, verify_checksums=True)
    assert not back.report.of("warning")
    raw = bytearray(path.read_bytes())
    raw[records[0].pieces[0][0] + 2] ^= 0x10
    (tmp_path / "flipped.ckpt").write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="crc_num does not match"):
        adapter.read(tmp_path / "flipped.ckpt")
    off, n = records[0].pieces[0]
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[: off + n])           # ends on the first record's boundary
    short = adapter.read(cut)
    assert list(short) == ["a.weight"]
    assert any("no crc_num" in w.detail for w in short.report.of("warning"))
    assert list(ms.load_checkpoint(str(cut), crc_check=True)) == ["a.weight"]


def test_hubfmt_writes_the_safetensors_crc_num_mindspore_checks(tmp_path):
    """MindSpore safetensors files hubfmt writes carry the metadata crc_num that
    save_checkpoint(format="safetensors", crc_check=True) writes: the value MindSpore computes
    (equal to its own file's), accepted by load_checkpoint(crc_check=True), verified by hubfmt; a
    flipped byte fails MindSpore's check and hubfmt's."""
    import json
    import struct

    ms = _ms()
    rng = np.random.default_rng(8)
    # names out of sorted order, so the sorted-order CRC is really exercised
    arrays = {"z.weight": rng.normal(size=(6, 5)).astype(np.float32), "a.bias": rng.normal(size=(4,)).astype(np.float16),
              "m.w": rng.normal(size=(3, 3)).astype(np.float32)}
    ckpt = Checkpoint()
    for n, a in arrays.items():
        ckpt.add(n, LazyTensor.from_array(a))
    path = tmp_path / "crc.safetensors"
    adapter.write(ckpt, path, write_extra=False)
    theirs = tmp_path / "theirs.safetensors"
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()], str(theirs),
                       format="safetensors", crc_check=True)

    def meta(p):
        raw = p.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        return json.loads(raw[8:8 + n])["__metadata__"]

    assert meta(path)["crc_num"] == meta(theirs)["crc_num"]
    loaded = ms.load_checkpoint(str(path), crc_check=True, format="safetensors")
    assert all(np.array_equal(loaded[n].asnumpy(), a) for n, a in arrays.items())
    back = adapter.read(path, verify_checksums=True)
    assert not back.report.of("warning")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10                                       # inside the last tensor's bytes
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="crc_num does not match"):
        adapter.read(flipped)
    with pytest.raises(ValueError, match="crc check has failed"):
        ms.load_checkpoint(str(flipped), crc_check=True, format="safetensors")
