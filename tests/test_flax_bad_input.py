"""Bad and hostile flax msgpack input: a one-line FormatError naming the file (CLI exit 2),
nothing partial written; lengths checked against the file before anything is allocated."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli
from hubfmt.adapters import flax as adapter
from hubfmt.errors import FormatError
from hubfmt.sdk import Checkpoint, LazyTensor, TensorInfo


def _good(tmp_path) -> bytes:
    ckpt = Checkpoint()
    ckpt.add("conv.weight", LazyTensor.from_array(np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)),
             TensorInfo(kind="conv2d"))
    ckpt.add("bn.running_var", LazyTensor.from_array(np.ones(2, np.float16)), TensorInfo(kind="batch_norm"))
    adapter.write(ckpt, tmp_path / "good.msgpack")
    return (tmp_path / "good.msgpack").read_bytes()


def test_every_truncation_is_a_format_error(tmp_path):
    good = _good(tmp_path)
    bad = tmp_path / "cut.msgpack"
    for n in range(len(good)):
        bad.write_bytes(good[:n])
        with pytest.raises(FormatError) as e:
            ckpt = adapter.read(bad)
            for name in ckpt:
                ckpt.tensor(name)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_cli_exit_status_and_no_output(tmp_path):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(_good(tmp_path)[:-3])
    r = run_cli("convert", bad, tmp_path / "out.safetensors")
    assert r.returncode == 2 and str(bad) in r.stderr
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("content,problem", [
    (b"\x81\xa1w\xc7\x05\x01\x93\x91\x02\xa7", "runs past the end"),
    (b"\x81\xa1w\xc1", "starts no msgpack value"),
    (b"\x81\xa1w\xc7\x11\x01\x93\x91\x02\xa7float32\xc4\x04abcd", "needs 8 bytes, holds 4"),
    (b"\x81\xa1w\xc7\x11\x01\x93\x91\x02\xa7float99\xc4\x04abcd", "dtype 'float99'"),
    (b"\x82\xa1w\x01\xa1w\x02", "appears twice"),
    (b"\x81\xa1w" + b"\x91" * 200 + b"\x01", "deeper"),
    (b"\x81\xa1w\x01\x00", "bytes after"),
    (b"\x81\xa1w\xdd\xff\xff\xff\xff", "runs past the end"),            # a 4-billion-element array
    (b"\x81\xa1w\xc9\xff\xff\xff\xf0\x01", "runs past the end"),         # a 4 GB ext
    (b"\x81\xa1w\xc7\x0d\x01\x93\x91\x03\xa7float32\xc4\x00", "ndarray of shape [3] float32 needs 12 bytes"),
    (b"\x81\xa1w\xc7\x0a\x01\x93\x91\xff\xa4bool\xc4\x00", "not a list of sizes"),

])
def test_bad_input_is_a_format_error(tmp_path, content, problem):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(content)
    with pytest.raises(FormatError) as e:
        ckpt = adapter.read(bad)
        for n in ckpt:
            ckpt.tensor(n)
    assert problem in str(e.value) and str(bad) in str(e.value) and "\n" not in str(e.value)
    assert adapter.sniff(bad) is None
