"""A corrupt source fails every writer (#13): the checksum a format stores travels with the byte
range (FileSpan.checksum) and is verified whether the bytes are loaded or copied in the kernel."""
from __future__ import annotations

import struct
import zipfile

import pytest

import hubfmt
from hubfmt.io import hubfile

from conftest import run_cli
from helpers import small_cnn

OUTPUTS = ["x.safetensors", "x.pth", "x.params", "x.ckpt", "x.index", "x.oneflow", "x.msgpack"]


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _fails_cleanly(r, out_dir, source_files):
    assert r.returncode == 2 and "checksum mismatch" in r.stderr and "corrupt" in r.stderr, r.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(source_files)     # nothing written


@pytest.fixture(scope="module")
def corrupt_tf(tmp_path_factory):
    d = tmp_path_factory.mktemp("tf")
    hubfile.write(small_cnn(), d / "m.safetensors")
    assert run_cli("convert", d / "m.safetensors", d / "tf", "--to", "tensorflow", "-q").returncode == 0
    (d / "m.safetensors").unlink()
    span = hubfmt.read(d / "tf")["classifier.bias"].tensor.span     # a 1-d tensor: copied, not transposed
    _flip(d / "tf.data-00000-of-00001", span.offset)
    return d


@pytest.mark.parametrize("out", OUTPUTS)
def test_a_corrupt_tf_shard_fails_every_writer(corrupt_tf, tmp_path, out):
    import shutil

    for p in corrupt_tf.iterdir():
        shutil.copy(p, tmp_path / p.name)
    before = [p.name for p in tmp_path.iterdir()]
    _fails_cleanly(run_cli("convert", tmp_path / "tf", tmp_path / out), tmp_path, before)


@pytest.mark.parametrize("out", OUTPUTS)
def test_a_corrupt_torch_member_fails_every_writer(tmp_path, out):
    src = tmp_path / "m.pth"
    hubfile.write(small_cnn(), tmp_path / "m.safetensors")
    assert run_cli("convert", tmp_path / "m.safetensors", src, "-q").returncode == 0
    (tmp_path / "m.safetensors").unlink()
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    raw = src.read_bytes()
    n, extra = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    _flip(src, info.header_offset + 30 + n + extra)
    _fails_cleanly(run_cli("convert", src, tmp_path / out), tmp_path, ["m.pth"])


def test_a_deflated_keras_archive_is_inflated_once(tmp_path, monkeypatch):
    # #13: h5py seeks backwards; through zipfile every seek back re-inflated from byte 0, and every
    # lazy tensor re-opened the archive. Now the member is inflated once per process.
    from conftest import require

    keras = require("keras")
    import numpy as np

    model = keras.Sequential([keras.Input((8,)), *[keras.layers.Dense(8) for _ in range(30)]])
    stored = tmp_path / "m.keras"
    model.save(stored)
    deflated = tmp_path / "d.keras"
    with zipfile.ZipFile(stored) as zin, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        member = zin.getinfo("model.weights.h5").file_size
    inflated = []
    real_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = real_read(self, n)
        if self.name == "model.weights.h5":
            inflated.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    want, got = hubfmt.read(stored), hubfmt.read(deflated)
    assert list(got) == list(want) and len(got) == 60
    for name in got:
        assert np.array_equal(got.array(name), want.array(name)), name
    assert sum(inflated) <= member, (sum(inflated), member)          # once, not per seek or tensor


# ---- parts of a checksummed range (#13): a view of part of a zip member, a fused tensor cut
# into pieces by a rule, a tensor written as MindSpore slices. Each part answers for the whole
# range's checksum, read once, so corruption anywhere in it fails the conversion.

def _views_file(tmp_path):
    """A torch file whose two tensors are views of halves of one storage (one zip member)."""
    import torch

    base = torch.arange(64, dtype=torch.float32).reshape(16, 4)
    src = tmp_path / "views.pth"
    torch.save({"low.weight": base[:8], "high.weight": base[8:]}, src)
    with zipfile.ZipFile(src) as z:
        members = [i for i in z.infolist() if "/data/" in i.filename]
    assert len(members) == 1                                    # both views share one member
    info = members[0]
    raw = src.read_bytes()
    n, extra = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return src, info.header_offset + 30 + n + extra


@pytest.mark.parametrize("out", OUTPUTS)
def test_a_view_of_part_of_a_corrupt_member_fails_every_writer(tmp_path, out):
    src, data = _views_file(tmp_path)
    (tmp_path / "ok").mkdir()
    assert run_cli("convert", src, tmp_path / "ok" / out, "-q").returncode == 0     # intact: converts
    __import__("shutil").rmtree(tmp_path / "ok")
    _flip(src, data + 40 * 4)        # inside the `high` half only: `low` must fail too (same member)
    _fails_cleanly(run_cli("convert", src, tmp_path / out), tmp_path, ["views.pth"])


def test_views_of_one_member_read_it_once(tmp_path, monkeypatch):
    # N views of one member cost one verifying pass over it, not N.
    import torch

    from hubfmt.format import tensor as tensor_mod

    base = torch.arange(4096, dtype=torch.float32)
    src = tmp_path / "many.pth"
    torch.save({f"v{i}": base[i * 64:(i + 1) * 64] for i in range(64)}, src)
    passes = []
    real = tensor_mod.EnclosingChecksum.verify

    def counting(self):
        if not self._ok:
            passes.append(self.span.nbytes)
        real(self)

    monkeypatch.setattr(tensor_mod.EnclosingChecksum, "verify", counting)
    ckpt = hubfmt.read(src)
    for i in range(64):
        assert ckpt.array(f"v{i}")[0] == i * 64
    assert passes == [4096 * 4]


def test_a_piece_of_a_corrupt_fused_tensor_fails(tmp_path):
    # A rule cuts a CRC-checked TF tensor into row pieces that are copied file to file: the pieces
    # must not escape the whole tensor's CRC-32C.
    import numpy as np

    from hubfmt import Checkpoint, LazyTensor, TensorInfo

    ckpt = Checkpoint()
    ckpt.add("blk.qkv.bias", LazyTensor.from_array(np.arange(12, dtype=np.float32)), TensorInfo(kind="tensor"))
    hubfile.write(ckpt, tmp_path / "m.safetensors")
    assert run_cli("convert", tmp_path / "m.safetensors", tmp_path / "tf", "--to", "tensorflow", "-q").returncode == 0
    span = hubfmt.read(tmp_path / "tf")["blk.qkv.bias"].tensor.span
    _flip(tmp_path / "tf.data-00000-of-00001", span.offset + 11 * 4)       # in the `v` part only
    rules = tmp_path / "split.toml"
    rules.write_text("[[rule]]\npattern = '(.*)\\.qkv\\.(weight|bias)'\nreplace = '\\1.{part}.\\2'\n"
                     "split = { axis = 0, parts = ['q', 'k', 'v'] }\n")
    r = run_cli("convert", tmp_path / "tf", tmp_path / "out.safetensors", "--rules", rules)
    assert r.returncode == 2 and "checksum mismatch" in r.stderr, r.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_mindspore_slices_of_a_corrupt_tensor_fail(corrupt_tf, tmp_path):
    # A tensor written as several MindSpore slices is copied slice by slice: still checked.
    import shutil

    for p in corrupt_tf.iterdir():
        shutil.copy(p, tmp_path / p.name)
    before = [p.name for p in tmp_path.iterdir()]
    r = run_cli("convert", tmp_path / "tf", tmp_path / "x.ckpt", "-W", "max_slice_bytes=8")
    _fails_cleanly(r, tmp_path, before)


@pytest.mark.parametrize("out", OUTPUTS)
def test_a_corrupt_stored_keras_member_fails_every_writer(tmp_path, out):
    # A .keras archive stores model.weights.h5 uncompressed, with the member's CRC-32; tensors are
    # read (or copied) in place, as parts of that member, so a flipped bit anywhere in it fails.
    from conftest import require

    keras = require("keras")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(4)])
    src = tmp_path / "m.keras"
    model.save(src)
    (tmp_path / "ok").mkdir()
    assert run_cli("convert", src, tmp_path / "ok" / out, "-q").returncode == 0     # intact: converts
    __import__("shutil").rmtree(tmp_path / "ok")
    offset = next(e.tensor.span.offset for e in hubfmt.read(src).entries.values() if e.tensor.span)  # a bias
    _flip(src, offset + 4)
    _fails_cleanly(run_cli("convert", src, tmp_path / out), tmp_path, ["m.keras"])
