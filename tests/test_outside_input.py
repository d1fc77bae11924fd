"""Reading never reaches outside the input (#13): a shard, data file or tensor folder that is a
symbolic link out of the input's directory is refused in one line, however the framework itself
would follow it; a FIFO where a checkpoint should be is refused before anything opens it."""
from __future__ import annotations

import os
import shutil

import pytest

from hubfmt.io import hubfile

from conftest import run_cli
from helpers import small_cnn


def _refused(r, path) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "outside the input's directory" in r.stderr and str(path) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def _move_out_and_link(inside, outside_dir):
    """Replace `inside` by a symbolic link to a copy of it in `outside_dir`."""
    target = outside_dir / os.path.basename(inside)
    shutil.move(str(inside), str(target))
    os.symlink(target, inside)
    return target


@pytest.fixture
def dirs(tmp_path):
    model, elsewhere, out = tmp_path / "model", tmp_path / "elsewhere", tmp_path / "out"
    for d in (model, elsewhere, out):
        d.mkdir()
    return model, elsewhere, out


def test_a_hub_shard_linked_out_of_the_directory(dirs):
    model, elsewhere, out = dirs
    hubfile.write(small_cnn(), model / "m.safetensors", max_shard_size=300)
    shard = sorted(model.glob("m-0000*.safetensors"))[1]
    _move_out_and_link(shard, elsewhere)
    _refused(run_cli("convert", model / "m.safetensors", out / "x.pth"), shard)
    assert not list(out.iterdir())


def test_a_symlink_inside_the_directory_is_fine(dirs):
    model, _, out = dirs
    hubfile.write(small_cnn(), model / "m.safetensors", max_shard_size=300)
    shard = sorted(model.glob("m-0000*.safetensors"))[0]
    os.rename(shard, model / "real.bin")
    os.symlink("real.bin", shard)
    r = run_cli("convert", model / "m.safetensors", out / "x.pth", "-q")
    assert r.returncode == 0, r.stderr


def test_an_hf_shard_linked_out(dirs):
    model, elsewhere, out = dirs
    hubfile.write(small_cnn(), model / "m.safetensors", max_shard_size=300)   # a sharded set, HF layout
    assert run_cli("convert", model / "m.safetensors", out / "hf", "--to", "hf", "--max-shard-size", "300B",
                   "-q").returncode == 0
    hf = out / "hf"
    shard = sorted(hf.glob("model-0000*.safetensors"))[0]
    _move_out_and_link(shard, elsewhere)
    _refused(run_cli("convert", hf, out / "y.pth"), shard)
    assert not (out / "y.pth").exists()


def test_a_tf_data_shard_linked_out(dirs):
    model, elsewhere, out = dirs
    hubfile.write(small_cnn(), model / "m.safetensors")
    assert run_cli("convert", model / "m.safetensors", model / "ckpt", "--to", "tensorflow", "-q").returncode == 0
    data = model / "ckpt.data-00000-of-00001"
    _move_out_and_link(data, elsewhere)
    _refused(run_cli("convert", model / "ckpt", out / "x.pth"), data)
    assert not list(out.iterdir())


def test_oneflow_tensor_files_linked_out(dirs):
    model, elsewhere, out = dirs
    hubfile.write(small_cnn(), model / "m.safetensors")
    of = model / "m.oneflow"
    assert run_cli("convert", model / "m.safetensors", of, "-q").returncode == 0
    folders = sorted(p for p in of.iterdir() if p.is_dir() and (p / "out").exists())
    out_file = folders[0] / "out"
    _move_out_and_link(out_file, elsewhere)
    _refused(run_cli("convert", of, out / "x.pth"), out_file)
    folder = folders[1]
    _move_out_and_link(folder, elsewhere)
    r = run_cli("convert", of, out / "x.pth")
    assert r.returncode == 2 and "outside the input's directory" in r.stderr, r.stderr
    assert not list(out.iterdir())


def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    fifo = tmp_path / "model.pth"
    os.mkfifo(fifo)
    for args in (("inspect", fifo), ("convert", fifo, tmp_path / "x.safetensors"),
                 ("convert", fifo, tmp_path / "y.safetensors", "--from", "torch")):
        r = run_cli(*args)           # without the check, sniffing would block here forever
        assert r.returncode == 2 and "FIFO" in r.stderr, r.stderr


@pytest.mark.parametrize("kind", ["external_link", "external_storage", "virtual_dataset"])
def test_keras_files_whose_bytes_live_elsewhere_are_refused(tmp_path, kind):
    import h5py
    import numpy as np

    hubfile.write(small_cnn(), tmp_path / "m.safetensors")
    keras_file = tmp_path / "m.weights.h5"
    assert run_cli("convert", tmp_path / "m.safetensors", keras_file, "-q").returncode == 0
    with h5py.File(tmp_path / "secret.h5", "w") as f:
        f["x"] = np.arange(10.0)
    (tmp_path / "raw.bin").write_bytes(np.arange(8, dtype="<f4").tobytes())
    with h5py.File(keras_file, "r+") as f:
        if kind == "external_link":
            f["layers/evil"] = h5py.ExternalLink(str(tmp_path / "secret.h5"), "/x")
        elif kind == "external_storage":
            f.create_dataset("layers/evil", shape=(8,), dtype="<f4", external=[(str(tmp_path / "raw.bin"), 0, 32)])
        else:
            layout = h5py.VirtualLayout(shape=(10,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(tmp_path / "secret.h5"), "x", shape=(10,))
            f.create_virtual_dataset("layers/evil", layout)
    r = run_cli("convert", keras_file, tmp_path / "x.pth")
    assert r.returncode == 2 and "refused (hubfmt reads only the input's own bytes)" in r.stderr, r.stderr
    assert not (tmp_path / "x.pth").exists()


def test_a_keras_dag_of_hard_links_is_refused_quickly(tmp_path):
    import time

    import h5py

    hubfile.write(small_cnn(), tmp_path / "m.safetensors")
    keras_file = tmp_path / "m.weights.h5"
    assert run_cli("convert", tmp_path / "m.safetensors", keras_file, "-q").returncode == 0
    with h5py.File(keras_file, "r+") as f:           # 40 levels, 2 links each: 2**40 paths, 41 groups
        prev = f["layers"].create_group("bomb")
        for i in range(40):
            node = f["layers"].create_group(f"bomb{i}")
            node["a"], node["b"] = prev, prev
            prev = node
    t0 = time.monotonic()
    r = run_cli("convert", keras_file, tmp_path / "x.pth")
    assert r.returncode == 2 and "reached a second time (hard links)" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 30
