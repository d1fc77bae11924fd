"""Nothing lost or silently changed (issue 13): narrowing that would change values is an error,
a shard of the source is never the destination, and writers refuse what their own reader would."""
from __future__ import annotations

import glob
import hashlib

import numpy as np
import pytest

import hubfmt
from hubfmt.errors import ConversionError
from hubfmt.format.checkpoint import Checkpoint, TensorInfo
from hubfmt.format.tensor import LazyTensor

from conftest import run_cli


def _f64(tmp_path, values: dict[str, np.ndarray]) -> str:
    ckpt = Checkpoint()
    for n, v in values.items():
        ckpt.add(n, LazyTensor.from_array(v.astype(np.float64)))
    path = tmp_path / "f64.safetensors"
    hubfmt.write(ckpt, path, keep_dtype=True)
    return str(path)


@pytest.mark.parametrize("bad, count", [
    (np.array([1e39, -1e300, 1.0]), 2),                 # overflow to +-inf
    (np.array([1e-46, -1e-300, 0.0, 2.0]), 2),          # non-zero flushed to (signed) zero
    (np.array([1.0, 2.0]).view(np.uint64) * 0 + np.uint64(0x7FF0000000000001), 2),   # NaN payload in the low bits
])
def test_lossy_float64_narrowing_is_an_error_naming_tensor_and_count(tmp_path, bad, count):
    bad = bad.view(np.float64) if bad.dtype == np.uint64 else bad
    src = _f64(tmp_path, {"fine": np.array([0.1, 1e-30, np.inf, -0.0, np.nan]), "bad": bad})
    out = tmp_path / "f32.safetensors"
    r = run_cli("convert", src, out)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "'bad'" in r.stderr and f"change {count} of its {bad.size} values" in r.stderr and "--keep-dtype" in r.stderr
    assert not out.exists()
    r = run_cli("convert", src, out, "--keep-dtype")
    assert r.returncode == 0, r.stderr
    assert hubfmt.read(out).tensor("bad").tobytes() == bad.tobytes()


def test_ordinary_rounding_stays_a_reported_cast(tmp_path):
    src = _f64(tmp_path, {"w": np.array([0.1, 1 / 3, 1e-30, np.inf, -np.inf, np.nan, -0.0, 1e38])})
    out = tmp_path / "f32.safetensors"
    report = hubfmt.convert(src, out)
    assert any(e.name == "w" and "float64->float32" in e.detail for e in report.of("cast"))
    assert hubfmt.read(out).tensor("w").dtype == np.float32


def test_a_shard_of_the_source_is_never_the_destination(tmp_path):
    ckpt = Checkpoint()
    for i in range(4):
        ckpt.add(f"t{i}", LazyTensor.from_array(np.full(100, i, np.float32)))
    index = tmp_path / "m.safetensors"
    hubfmt.write(ckpt, index, max_shard_size=500)
    shards = sorted(glob.glob(str(tmp_path / "m-*.safetensors")))
    before = {s: hashlib.sha256(open(s, "rb").read()).hexdigest() for s in shards}
    for shard in (shards[0], shards[-1]):
        r = run_cli("convert", f"{index}.index.json", shard, "--overwrite")
        assert r.returncode == 2 and "a file of the source" in r.stderr, r.stderr
    r = run_cli("convert", f"{index}.index.json", tmp_path / "m-00002-of-00004.pt", "--overwrite")
    assert r.returncode == 0, r.stderr           # a different file beside the shards is fine
    assert before == {s: hashlib.sha256(open(s, "rb").read()).hexdigest() for s in shards}


def _named(name: str) -> Checkpoint:
    ckpt = Checkpoint()
    ckpt.add(name, LazyTensor.from_array(np.ones(2, np.float32)))
    return ckpt


@pytest.mark.parametrize("suffix, framework", [(".params", "mxnet"), (".ckpt", "mindspore")])
def test_writers_refuse_names_their_reader_refuses(tmp_path, suffix, framework):
    out = tmp_path / f"long{suffix}"
    with pytest.raises(ConversionError, match="more than the"):
        hubfmt.write(_named("w" * (10 << 20)), out, framework=framework)
    assert not out.exists() and not list(tmp_path.iterdir())
    hubfmt.write(_named("w" * 1000), out, framework=framework)       # long but readable: fine
    assert list(hubfmt.read(out)) == ["w" * 1000]


def test_hub_writer_refuses_a_header_over_the_read_limit(tmp_path):
    ckpt = Checkpoint()
    for i in range(11):
        ckpt.add(f"{i}" + "n" * (10 << 20), LazyTensor.from_array(np.ones(1, np.float32)))
    with pytest.raises(ConversionError, match="more than the 104857600 readers accept"):
        hubfmt.write(ckpt, tmp_path / "big-header.safetensors")
    assert not list(tmp_path.iterdir())


def test_hub_writer_refuses_a_tensor_tied_to_itself(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("a", LazyTensor.from_array(np.ones(2, np.float32)))
    ckpt.add("b", LazyTensor.from_array(np.ones(2, np.float32)), TensorInfo(tied_to="b"))
    with pytest.raises(ConversionError, match="tied to 'b'"):
        hubfmt.write(ckpt, tmp_path / "self.safetensors")
    assert not list(tmp_path.iterdir())
