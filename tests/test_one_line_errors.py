"""Inputs that used to end in a traceback or an internal error (issue 13): each is now one line
`hubfmt: error: PATH: ...`, exit 2, and nothing written; or, where the input is fine, a
conversion that keeps what it can and says what it changed."""
from __future__ import annotations

import base64
import errno
import json
import os
import pickle
import struct
import sys

import msgpack
import numpy as np
import pytest

import hubfmt
from hubfmt.format.checkpoint import Checkpoint
from hubfmt.format.tensor import LazyTensor

from conftest import REPO, run_cli

sys.path.insert(0, str(REPO / "tests" / "hostile"))
import corpus  # noqa: E402

HUGE_EMPTY = [0, 2**62, 2**62]


def _safetensors(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _small(tmp_path):
    ckpt = Checkpoint()
    ckpt.add("a.weight", LazyTensor.from_array(np.arange(6, dtype=np.float32).reshape(1, 2, 3)))
    ckpt.extra = {"epoch": 1}
    hub = tmp_path / "good.safetensors"
    hubfmt.write(ckpt, hub)
    from hubfmt.codecs import safetensors
    header, _, _ = safetensors.read_header(str(hub))
    return ckpt, header["__metadata__"]


def _hub_with(tmp_path, name, meta) -> str:
    path = tmp_path / name
    _safetensors(path, {"__metadata__": meta, "a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}},
                 bytes(24))
    return str(path)


def _bad_inputs(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (input path, what the one line must say)."""
    ckpt, meta = _small(tmp_path)
    out = {}
    p = tmp_path / "empty-huge.safetensors"
    _safetensors(p, {"w": {"dtype": "F32", "shape": HUGE_EMPTY, "data_offsets": [0, 0]}})
    out["safetensors-empty-huge"] = (str(p), "2**62 bytes")
    from hubfmt.adapters.mindspore import proto
    p = tmp_path / "empty-huge.ckpt"
    p.write_bytes(proto.value_header("w", HUGE_EMPTY, "Float32", 0))
    out["mindspore-empty-huge"] = (str(p), "2**62 bytes")
    p = tmp_path / "empty-huge.params"
    hubfmt.write(ckpt, p, framework="mxnet")
    raw = p.read_bytes()
    dims = struct.pack("<I3q", 3, 1, 2, 3)
    assert raw.count(dims) == 1
    p.write_bytes(raw.replace(dims, struct.pack("<I3q", 3, *HUGE_EMPTY)))
    out["mxnet-empty-huge"] = (str(p), "2**62 bytes")
    p = tmp_path / "empty-huge.pt"
    p.write_bytes(corpus.torch_zip(corpus._state_dict(("w", corpus._rebuild(corpus._storage_pid(), 0, tuple(HUGE_EMPTY), (1, 1, 1))))))
    out["torch-empty-huge"] = (str(p), "2**62 bytes")
    man = json.loads(meta["hubfmt.manifest"])
    man["layers"] = {"a": {"kind": "batch_norm", "attrs": {"eps": "x"}}}
    out["manifest-eps-not-a-number"] = (_hub_with(tmp_path, "eps.safetensors", {**meta, "hubfmt.manifest": json.dumps(man)}),
                                        "attribute 'eps'")
    deep: list | int = 1
    for _ in range(150):
        deep = [deep]
    extra = base64.b64encode(msgpack.packb({"deep": deep})).decode()
    out["extra-nested-too-deep"] = (_hub_with(tmp_path, "deep.safetensors", {**meta, "hubfmt.extra": extra}),
                                    "nested more than 100 levels")
    return out


@pytest.mark.parametrize("dest", ["out.safetensors", "out.pt", "out.ckpt"])
def test_bad_inputs_give_one_line_and_exit_2(tmp_path, dest):
    for name, (src, says) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"{name}-{dest}"
        r = run_cli("convert", src, out)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"hubfmt: error: {src}: ") and says in lines[0], (name, r.stderr)
        assert not out.exists()


def test_huge_integers_in_non_tensor_content(tmp_path):
    """Over Python's 4300-digit limit for str(int): kept exactly (as hex) in the hub file."""
    big = 7 ** 10_000                       # 8451 digits
    body = corpus._state_dict(("w", corpus._rebuild(corpus._storage_pid())), ("big", pickle.dumps(big, 2)[2:-1]))
    src = tmp_path / "big.pt"
    src.write_bytes(corpus.torch_zip(body))
    r = run_cli("convert", src, tmp_path / "big.safetensors")
    assert r.returncode == 0, r.stderr
    back = hubfmt.read(tmp_path / "big.safetensors").extra["big"]
    assert int(back["hex"], 16) == big


def test_text_arrays_in_non_tensor_content_written_to_torch(tmp_path):
    names = np.array(["person", "bicycle", "car"])
    body = corpus._state_dict(("w", corpus._rebuild(corpus._storage_pid())), ("names", pickle.dumps(names, 2)[2:-1]))
    src = tmp_path / "names.pt"
    src.write_bytes(corpus.torch_zip(body))
    hub = tmp_path / "names.safetensors"
    assert run_cli("convert", src, hub).returncode == 0
    out = tmp_path / "out.pt"
    r = run_cli("convert", hub, out, "-W", "layout=training")
    assert r.returncode == 0, r.stderr
    import torch
    assert torch.load(out, weights_only=True)["names"] == ["person", "bicycle", "car"]


def test_destination_name_of_240_characters(tmp_path):
    ckpt, _ = _small(tmp_path)
    for suffix in (".pt", ".safetensors", ".ckpt"):
        out = tmp_path / ("n" * (240 - len(suffix)) + suffix)
        r = run_cli("convert", tmp_path / "good.safetensors", out)
        assert r.returncode == 0, r.stderr
        assert np.array_equal(hubfmt.read(out).tensor("a.weight"), np.arange(6, dtype=np.float32).reshape(1, 2, 3))
        assert not [n for n in os.listdir(tmp_path) if "hubfmt-tmp" in n]


def test_cleanup_failure_does_not_mask_the_error(tmp_path, monkeypatch):
    """The error that stopped a write is the one reported, even when removing the temporary fails
    too (a file system gone read-only: EROFS from unlink)."""
    from hubfmt.errors import FormatError
    from hubfmt.io import atomic

    def erofs(path, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    with pytest.raises(FormatError, match="the real problem"):
        with atomic.atomic_output(str(tmp_path / "x.safetensors")) as tmp:
            open(tmp, "wb").close()
            monkeypatch.setattr(atomic.os, "unlink", erofs)
            raise FormatError("the real problem", "src")
