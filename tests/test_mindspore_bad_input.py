"""Bad .ckpt input: one-line FormatError naming the file (CLI exit 2), nothing partial written."""
import os

import numpy as np
import pytest

from conftest import run_cli
from hubfmt.adapters import mindspore as adapter
from hubfmt.adapters.mindspore import proto
from hubfmt.format.checkpoint import Checkpoint
from hubfmt.format.tensor import LazyTensor
from hubfmt.errors import FormatError


def _good(tmp_path) -> bytes:
    ckpt = Checkpoint()
    ckpt.add("conv.weight", LazyTensor.from_array(np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)))
    ckpt.add("bn.gamma", LazyTensor.from_array(np.ones(2, np.float16)))
    adapter.write(ckpt, tmp_path / "good.ckpt", write_extra=False)
    return (tmp_path / "good.ckpt").read_bytes()


def _value(tag: str, dims, ttype: str, content: bytes) -> bytes:
    return proto.value_header(tag, dims, ttype, len(content)) + content


def _read_error(path) -> str:
    with pytest.raises(FormatError) as e:
        adapter.read(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


def test_every_truncation_is_a_format_error(tmp_path):
    good = _good(tmp_path)
    bad = tmp_path / "cut.ckpt"
    for n in range(len(good)):
        bad.write_bytes(good[:n])
        try:
            ckpt = adapter.read(bad)
        except FormatError as e:
            assert str(bad) in str(e) and "\n" not in str(e)
            continue
        # A cut exactly between two Values is a valid, shorter checkpoint: protobuf cannot tell,
        # but the crc_num trailer hubfmt writes is gone, and the report says so.
        first = len(_value("conv.weight", [2, 3, 2, 2], "Float32", bytes(96)))
        assert n in (first, len(good) - proto.CRC_TRAILER_SIZE), n
        assert len(ckpt) == (1 if n == first else 2) and list(ckpt)[0] == "conv.weight"
        assert any("no crc_num" in w.detail for w in ckpt.report.of("warning"))


@pytest.mark.parametrize("content,problem", [
    (b"", "empty"),
    (b"hello, this is not a checkpoint\n", "does not start"),
    (b"PK\x03\x04" + bytes(60), "does not start"),
    (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint"),
    (b"\x0a\x80\x80\x80\x80\x10", "runs past the end"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), ""),
])
def test_not_a_checkpoint(tmp_path, content, problem):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    assert problem in _read_error(bad)
    assert adapter.sniff(bad) is None


def test_unknown_tensor_type(tmp_path):
    bad = tmp_path / "f8.ckpt"
    bad.write_bytes(_value("w", [2], "Float8E4M3", b"\x00\x01"))
    assert "unsupported tensor_type 'Float8E4M3'" in _read_error(bad)


def test_content_disagrees_with_dims(tmp_path):
    bad = tmp_path / "short.ckpt"
    bad.write_bytes(_value("w", [2, 3], "Float32", bytes(20)))
    msg = _read_error(bad)
    assert "tensor 'w': 20 content bytes, but dims [2, 3] of Float32 need 24" in msg


def test_structural_damage(tmp_path):
    cases = {
        "neg.ckpt": (_value("w", [-1, 2], "Float32", bytes(8)), "negative dimension"),
        "dup.ckpt": (_value("w", [1], "Float32", bytes(4)) + _value("v", [1], "Float32", bytes(4))
                     + _value("w", [1], "Float32", bytes(4)), "appears twice"),
        "slices.ckpt": (_value("w", [2], "Float32", bytes(4)) + _value("w", [3], "Float32", bytes(4)),
                        "slices of tensor 'w' disagree"),
        "notag.ckpt": (b"\x0a\x02\x12\x00", "without its required tag"),
        "group.ckpt": (_value("w", [1], "Float32", bytes(4)) + b"\x0b", "wire type 3"),
    }
    for name, (content, problem) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert problem in _read_error(tmp_path / name), name


def test_cli_exit_2_and_nothing_written(tmp_path):
    good = _good(tmp_path)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good[:-5])
    out = tmp_path / "out.safetensors"
    proc = run_cli("convert", bad, out, "--from", "mindspore")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "truncated" in lines[0]
    assert not out.exists()
    proc = run_cli("inspect", bad, "--from", "mindspore")
    assert proc.returncode == 2 and str(bad) in proc.stderr


def test_failure_mid_write_publishes_nothing(tmp_path):
    """A source tensor that turns out unreadable while the .ckpt is being streamed."""
    good = _good(tmp_path)
    src = tmp_path / "src.ckpt"
    src.write_bytes(good)
    ckpt = adapter.read(src)
    src.write_bytes(good[:120])                 # the second tensor's bytes are gone now
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(FormatError):
        adapter.write(ckpt, tmp_path / "out.ckpt", restore_dtype=False)
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_converts_a_good_file_both_ways(tmp_path):
    _good(tmp_path)
    hub = tmp_path / "hub.safetensors"
    assert run_cli("convert", tmp_path / "good.ckpt", hub).returncode == 0
    back = tmp_path / "back.ckpt"
    proc = run_cli("convert", hub, back)
    assert proc.returncode == 0, proc.stderr
    assert back.read_bytes() == (tmp_path / "good.ckpt").read_bytes()
