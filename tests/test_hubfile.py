"""The hub file: streaming writer, lazy reader, spec rules (framework-free)."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import load_file

import hubfmt
from hubfmt.codecs import safetensors as st_codec
from hubfmt import Checkpoint, LazyTensor, TensorInfo
from hubfmt.format import dtypes
from hubfmt.io import hubfile
from hubfmt.errors import FormatError, OutputError, VersionError

from helpers import small_cnn


def test_round_trip_widens_floats_and_records_original_dtype(tmp_path):
    src = small_cnn(half=True)
    out = tmp_path / "m.safetensors"
    report = hubfile.write(src, out)
    assert {e.name for e in report.of("cast")} == {n for n in src if src[n].tensor.dtype == "float16"}
    back = hubfile.read(out)
    assert list(back) == list(src)
    for name in src:
        assert back[name].info.original_dtype == src[name].tensor.dtype
        want = src.tensor(name)
        got = back.tensor(name)
        if src[name].tensor.dtype == "float16":
            assert got.dtype == np.float32
            assert np.array_equal(got.astype(np.float16), want)
        else:
            assert np.array_equal(got, want)
    assert back.layers["features.1"].attrs == {"eps": 1e-5, "momentum": 0.1}
    assert back.extra == src.extra


def test_any_safetensors_reader_opens_a_hub_file(tmp_path):
    src = small_cnn()
    out = tmp_path / "m.safetensors"
    hubfile.write(src, out)
    plain = load_file(str(out))
    assert set(plain) == set(src)
    for name in src:
        assert np.array_equal(plain[name], src.tensor(name))


def test_keep_dtype_stores_original_floating_dtype(tmp_path):
    src = small_cnn(half=True)
    out = tmp_path / "m.safetensors"
    report = hubfile.write(src, out, keep_dtype=True)
    assert not report.of("cast")
    header, _, _ = st_codec.read_header(str(out))
    assert header["features.0.weight"]["dtype"] == "F16"
    assert hubfmt.validate(out) == []


def test_bfloat16_widens_exactly_and_narrows_back(tmp_path):
    bits = np.array([0x3F80, 0xC000, 0x7F80, 0x0001, 0x8000, 0x7FC0], dtype=np.uint16)  # 1,-2,inf,subnormal,-0,nan
    ckpt = Checkpoint()
    ckpt.add("w", LazyTensor.from_array(bits, dtype="bfloat16"))
    hubfile.write(ckpt, tmp_path / "b.safetensors")
    back = hubfile.read(tmp_path / "b.safetensors")
    wide = back.tensor("w")
    assert wide.dtype == np.float32
    assert np.array_equal(wide[:5], np.array([1.0, -2.0, np.inf, wide[3], -0.0], dtype=np.float32))
    assert np.signbit(wide[4]) and np.isnan(wide[5])
    narrowed = dtypes.convert(wide, "float32", "bfloat16")
    assert np.array_equal(narrowed, bits)


def test_tied_tensors_are_stored_once(tmp_path):
    ckpt = Checkpoint()
    emb = LazyTensor.from_array(np.arange(12, dtype=np.float32).reshape(3, 4))
    ckpt.add("embed.weight", emb, TensorInfo(kind="embedding"))
    ckpt.add("head.weight", emb, TensorInfo(kind="linear", tied_to="embed.weight"))
    out = tmp_path / "t.safetensors"
    hubfile.write(ckpt, out)
    header, _, _ = st_codec.read_header(str(out))
    assert "head.weight" not in header and "embed.weight" in header
    back = hubfile.read(out)
    assert back["head.weight"].info.tied_to == "embed.weight"
    assert np.array_equal(back.tensor("head.weight"), back.tensor("embed.weight"))
    assert hubfmt.validate(out) == []


def test_sharded_output_round_trips_and_index_names_every_tensor(tmp_path):
    src = small_cnn()
    out = tmp_path / "m.safetensors"
    hubfile.write(src, out, max_shard_size=200)
    index = json.loads((tmp_path / "m.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("m-*-of-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    assert not out.exists()
    back = hubfile.read(out)      # the base name finds the index
    assert list(back) == list(src)
    for name in src:
        assert np.array_equal(back.tensor(name), src.tensor(name))
    assert hubfmt.validate(tmp_path / "m.safetensors.index.json") == []


_dtype_names = st.sampled_from(sorted(dtypes.DTYPES - {"bfloat16"}))


@st.composite
def checkpoints(draw):
    ckpt = Checkpoint()
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,6}(\.[a-z0-9_]{1,5}){0,3}", fullmatch=True),
                          min_size=1, max_size=6, unique=True))
    for name in names:
        dt = draw(_dtype_names)
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
        arr = draw(hnp.arrays(dtypes.storage_dtype(dt), shape))
        ckpt.add(name, LazyTensor.from_array(arr, dtype=dt))
    return ckpt


@settings(max_examples=60, deadline=None)
@given(checkpoints())
def test_keep_dtype_round_trip_is_bit_exact(tmp_path_factory, ckpt):
    out = tmp_path_factory.mktemp("rt") / "x.safetensors"
    hubfile.write(ckpt, out, keep_dtype=True)
    back = hubfile.read(out)
    assert list(back) == list(ckpt)
    for name in ckpt:
        a, b = ckpt.tensor(name), back.tensor(name)
        assert a.shape == b.shape and a.dtype == b.dtype
        assert a.tobytes() == b.tobytes()


def _write_raw(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_unknown_major_version_is_refused_with_both_versions(tmp_path):
    p = tmp_path / "future.safetensors"
    _write_raw(p, {"__metadata__": {"hubfmt.version": "2.0", "hubfmt.manifest": "{}"}})
    with pytest.raises(VersionError) as e:
        hubfile.read(p)
    assert "2.0" in str(e.value) and "1.0" in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b"\x01\x02"), "shorter than"),
    (lambda p: p.write_bytes(struct.pack("<Q", 10**12) + b"{}"), "exceeds the file"),
    (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{no}"), "not valid JSON"),
    (lambda p: _write_raw(p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "past the end"),
    (lambda p: _write_raw(p, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 16), "do not fit"),
    (lambda p: _write_raw(p, {"w": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unsupported dtype"),
    (lambda p: _write_raw(p, {"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "hole"),
    (lambda p: _write_raw(p, {"w": {"dtype": "F32", "shape": [2 ** 40, 2 ** 30], "data_offsets": [0, 4]}}, b"\0" * 4), "do not fit"),
])
def test_broken_files_give_one_clear_error(tmp_path, damage, message):
    p = tmp_path / "bad.safetensors"
    damage(p)
    with pytest.raises(FormatError) as e:
        hubfile.read(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists"):
        hubfile.write(small_cnn(), out)
    assert out.read_bytes() == b"precious"
    hubfile.write(small_cnn(), out, overwrite=True)
    assert hubfmt.validate(out) == []
    assert not [p for p in os.listdir(tmp_path) if "hubfmt-tmp" in p]


def test_failed_write_leaves_nothing(tmp_path):
    ckpt = small_cnn()

    def boom():
        raise RuntimeError("disk on fire")

    ckpt.add("late.weight", LazyTensor((2, 2), "float32", boom))
    with pytest.raises(RuntimeError):
        hubfile.write(ckpt, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_validate_reports_spec_violations(tmp_path):
    p = tmp_path / "v.safetensors"
    manifest = {"tensors": {"w": {"kind": "warp_drive", "role": "weight", "original_name": "w", "original_dtype": "float16"}}}
    _write_raw(p, {"__metadata__": {"hubfmt.version": "1.0", "hubfmt.manifest": json.dumps(manifest)},
                   "w": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    problems = hubfmt.validate(p)
    assert any("unknown layer kind 'warp_drive'" in x for x in problems)
    assert any("floating tensor stored as I32" in x for x in problems)


def test_plain_safetensors_reads_as_foreign(tmp_path):
    from safetensors.numpy import save_file
    p = tmp_path / "plain.safetensors"
    save_file({"a.weight": np.ones((2, 2), np.float32)}, str(p))
    ckpt = hubfile.read(p)
    assert list(ckpt) == ["a.weight"]
    assert ckpt.report.of("warning")
    assert hubfmt.validate(p) and "not a hub file" in hubfmt.validate(p)[0]
