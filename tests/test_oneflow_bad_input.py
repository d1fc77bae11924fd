"""Damaged or hostile OneFlow directories: one-line FormatError naming the path, CLI exit 2, nothing
(not even a temporary) left behind, and nothing from a pickle ever runs."""
from __future__ import annotations

import os
import pickle
import shutil

import pytest

from hubfmt.io import hubfile
from hubfmt.adapters import oneflow as of
from hubfmt.errors import FormatError, UnsafePickleError

from conftest import run_cli
from helpers import small_cnn


@pytest.fixture
def good(tmp_path):
    d = tmp_path / "good.oneflow"
    of.write(small_cnn(), d)
    return d


def _cli_fails(tmp_path, src, *needles):
    out = tmp_path / "out.safetensors"
    before = set(os.listdir(tmp_path))
    r = run_cli("convert", src, out, "--from", "oneflow")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubfmt: error: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert str(n) in lines[0], lines[0]
    assert set(os.listdir(tmp_path)) == before, "something was written"
    return lines[0]


def test_directory_without_pickled_data(tmp_path, good):
    os.unlink(good / "pickled_data")
    with pytest.raises(FormatError, match="no pickled_data"):
        of.read(good)
    _cli_fails(tmp_path, good, good, "no pickled_data")
    r = run_cli("convert", good, tmp_path / "o.safetensors")            # nothing claims it
    assert r.returncode == 2 and "pass --from" in r.stderr


def test_meta_disagrees_with_out(tmp_path, good):
    with open(good / "tensor_0" / "out", "ab") as f:
        f.write(b"\0\0\0\0")
    with pytest.raises(FormatError, match="out holds"):
        of.read(good)
    _cli_fails(tmp_path, good, good / "tensor_0" / "out", "meta says float32[8, 3, 3, 3]", "bytes")


def test_truncated_out(tmp_path, good):
    os.truncate(good / "tensor_2" / "out", 3)
    _cli_fails(tmp_path, good, good / "tensor_2" / "out", "out holds 3 bytes")


def test_missing_tensor_folder(tmp_path, good):
    shutil.rmtree(good / "tensor_3")
    _cli_fails(tmp_path, good, good / "tensor_3", "missing tensor folder")


def test_garbage_meta(tmp_path, good):
    (good / "tensor_1" / "meta").write_bytes(b"shape {\n  dim: 8\n}\ndata_type: kOFRecord\n")
    _cli_fails(tmp_path, good, good / "tensor_1" / "meta", "kOFRecord")
    (good / "tensor_1" / "meta").write_bytes(b"\x12\x02\x08\x08\x18\x02")        # binary protobuf
    _cli_fails(tmp_path, good, good / "tensor_1" / "meta", "not a OneFlow VariableMetaInfo")


def test_truncated_pickle(tmp_path, good):
    raw = (good / "pickled_data").read_bytes()
    (good / "pickled_data").write_bytes(raw[:-1])                  # no STOP
    _cli_fails(tmp_path, good, good / "pickled_data", "corrupt pickle")
    (good / "pickled_data").write_bytes(raw[: len(raw) // 2])       # cut anywhere: still one line
    _cli_fails(tmp_path, good, good / "pickled_data")


def test_pickle_folder_outside_the_directory(tmp_path, good):
    raw = (good / "pickled_data").read_bytes()
    (good / "pickled_data").write_bytes(raw.replace(b"X\x08\x00\x00\x00tensor_0", b"X\x08\x00\x00\x00../../xx"))
    _cli_fails(tmp_path, good, good / "pickled_data", "outside its checkpoint directory")


class _Payload:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, good):
    live, canary = tmp_path / "live-canary", tmp_path / "canary"
    # The payload is real: plain pickle runs it.
    pickle.loads(pickle.dumps({"protocol_version": 1, "data": _Payload(f"touch {live}")}))
    assert live.exists()
    os.unlink(live)
    (good / "pickled_data").write_bytes(pickle.dumps({"protocol_version": 1, "data": _Payload(f"touch {canary}")}))
    with pytest.raises(UnsafePickleError, match="system"):
        of.read(good)
    _cli_fails(tmp_path, good, good / "pickled_data", "refused to load", "system")
    assert not canary.exists()


def test_pickle_naming_an_unexpected_class_is_refused(tmp_path, good):
    # What oneflow.save(model) of a user's module would hold: a class hubfmt will not stand in for.
    raw = b"\x80\x03}(X\x10\x00\x00\x00protocol_versionK\x01X\x04\x00\x00\x00datacmodels.yolo\nModel\n)\x81u."
    (good / "pickled_data").write_bytes(raw)
    _cli_fails(tmp_path, good, good / "pickled_data", "refused to load 'models.yolo.Model'")
    raw = b"\x80\x03}(X\x10\x00\x00\x00protocol_versionK\x01X\x04\x00\x00\x00dataconeflow\nload\nX\x01\x00\x00\x00x\x85Ru."
    (good / "pickled_data").write_bytes(raw)
    _cli_fails(tmp_path, good, good / "pickled_data", "refused to load 'oneflow.load'")


def test_not_a_oneflow_pickle(tmp_path, good):
    (good / "pickled_data").write_bytes(pickle.dumps([1, 2, 3]))
    _cli_fails(tmp_path, good, good / "pickled_data", "not a oneflow.save pickle")
    (good / "pickled_data").write_bytes(pickle.dumps({"protocol_version": 1, "data": {"epoch": 3}}))
    _cli_fails(tmp_path, good, good / "pickled_data", "holds no state dict")


def test_source_damaged_during_write_leaves_nothing(tmp_path):
    hub = tmp_path / "m.safetensors"
    hubfile.write(small_cnn(), hub)
    ckpt = hubfile.read(hub)
    os.truncate(hub, os.path.getsize(hub) - 64)            # the last tensors are gone now
    with pytest.raises(FormatError, match="file ends inside a tensor"):
        of.write(ckpt, tmp_path / "o.oneflow")
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_existing_output_cli(tmp_path, good):
    hub = tmp_path / "m.safetensors"
    hubfile.write(small_cnn(), hub)
    r = run_cli("convert", hub, good)
    assert r.returncode == 2 and "output exists" in r.stderr


def test_pickle_that_expands_to_millions_of_parts(tmp_path, good):
    # 20 levels of [x, x]: ~300 bytes of pickle, 2 million nodes once shared references are walked.
    bomb = []
    for _ in range(20):
        bomb = [bomb, bomb]
    (good / "pickled_data").write_bytes(pickle.dumps({"protocol_version": 1, "data": {"epoch": bomb}}))
    _cli_fails(tmp_path, good, good / "pickled_data", "more than 1000000 parts")


def test_pickle_nesting_too_deep(tmp_path, good):
    deep = []
    for _ in range(150):
        deep = [deep]
    (good / "pickled_data").write_bytes(pickle.dumps({"protocol_version": 1, "data": {"epoch": deep}}))
    _cli_fails(tmp_path, good, good / "pickled_data", "nests more than 100 levels")
