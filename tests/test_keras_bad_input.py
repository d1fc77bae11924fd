"""Damaged or foreign Keras inputs: one FormatError naming the file and the problem; the CLI exits
with status 2 and writes nothing."""
from __future__ import annotations

import json
import os
import zipfile

import h5py
import numpy as np
import pytest

from hubfmt.errors import FormatError
from hubfmt.adapters import keras as keras_adapter

from conftest import run_cli


def _h5(path, datasets: dict, attrs: dict | None = None):
    with h5py.File(path, "w") as f:
        for name, a in datasets.items():
            f[name] = a
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return str(path)


def _expect(path, *fragments):
    with pytest.raises(FormatError) as e:
        ckpt = keras_adapter.read(path)
        for n in ckpt:          # lazily read data must fail too, not only the structure
            ckpt.tensor(n)
    msg = str(e.value)
    assert e.value.path == str(path) and str(path) in msg
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def good(tmp_path):
    return _h5(tmp_path / "good.weights.h5", {
        "layers/dense/vars/0": np.ones((64, 32), np.float32),
        "layers/dense/vars/1": np.ones(32, np.float32),
    })


def test_hdf5_that_is_not_keras_weights(tmp_path):
    p = _h5(tmp_path / "other.h5", {"data/x": np.zeros(3)})
    _expect(p, "not Keras weights")


def test_legacy_h5_listing_a_missing_weight(tmp_path):
    p = _h5(tmp_path / "old.h5", {"dense/dense/kernel:0": np.zeros((2, 2))},
            {"layer_names": [b"dense"], "keras_version": "2.15.0"})
    with h5py.File(p, "a") as f:
        f["dense"].attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
    _expect(p, "weight_names lists 'dense/bias:0'")


@pytest.mark.parametrize("keep", [0.2, 0.6, 0.95])
def test_truncated_weights_file(tmp_path, keep):
    src = good(tmp_path)
    data = open(src, "rb").read()
    p = tmp_path / "cut.weights.h5"
    p.write_bytes(data[: int(len(data) * keep)])
    _expect(str(p))


def test_garbage_with_keras_suffix(tmp_path):
    p = tmp_path / "junk.weights.h5"
    p.write_bytes(os.urandom(300))
    _expect(str(p), "neither an HDF5")


def test_wrong_variable_count_for_the_class(tmp_path):
    p = _h5(tmp_path / "c.weights.h5", {f"layers/conv2d/vars/{i}": np.zeros((3, 3, 2, 2), np.float32)
                                        for i in range(3)})
    _expect(p, "layers/conv2d/vars", "Conv2D has 3 variables")


def test_wrong_rank_for_the_class(tmp_path):
    p = _h5(tmp_path / "d.weights.h5", {"layers/dense/vars/0": np.zeros((2, 2, 2), np.float32)})
    _expect(p, "Dense kernel must have rank 2")


def test_batch_norm_ambiguous_without_config(tmp_path):
    p = _h5(tmp_path / "b.weights.h5", {f"layers/batch_normalization/vars/{i}": np.zeros(4, np.float32)
                                        for i in range(3)})
    _expect(p, "BatchNormalization with 3 variables")


def test_variables_not_numbered_from_zero(tmp_path):
    p = _h5(tmp_path / "n.weights.h5", {"layers/dense/vars/0": np.zeros((2, 2), np.float32),
                                        "layers/dense/vars/2": np.zeros(2, np.float32)})
    _expect(p, "not numbered 0..1")


def test_dataset_outside_vars(tmp_path):
    p = _h5(tmp_path / "o.weights.h5", {"layers/dense/vars/0": np.zeros((2, 2), np.float32),
                                        "layers/dense/kernel": np.zeros((2, 2), np.float32)})
    _expect(p, "outside a 'vars' group")


def _zip(path, members: dict):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return str(path)


def test_archive_without_weights(tmp_path):
    p = _zip(tmp_path / "m.keras", {"config.json": "{}", "metadata.json": "{}"})
    _expect(p, "without model.weights.h5")


def test_archive_with_bad_config(tmp_path):
    weights = open(good(tmp_path), "rb").read()
    p = _zip(tmp_path / "m.keras", {"config.json": "{not json", "model.weights.h5": weights})
    _expect(p, "config.json is not valid JSON")


def test_archive_with_garbage_weights(tmp_path):
    p = _zip(tmp_path / "m.keras", {"config.json": json.dumps({"class_name": "Functional"}),
                                    "model.weights.h5": os.urandom(500)})
    _expect(p, "model.weights.h5 in the archive is not a readable HDF5 file")


def test_cli_exit_status_2_and_nothing_written(tmp_path):
    p = _h5(tmp_path / "other.h5", {"data/x": np.zeros(3)})
    out = tmp_path / "out.safetensors"
    proc = run_cli("convert", p, out)
    assert proc.returncode == 2, proc.stderr
    assert "other.h5" in proc.stderr and "not Keras weights" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["other.h5"]


def test_damaged_global_heap_is_refused_before_hdf5_reads_it(tmp_path):
    """HDF5 1.14 spins forever reading a name attribute whose global heap ends in a free-space
    object of size 0 (found by fuzzing); the reader checks every heap collection first."""
    import struct

    from hubfmt.adapters.keras.files import check_global_heaps
    src = good(tmp_path)
    with h5py.File(src, "a") as f:
        f["layers/dense/vars"].attrs["name"] = "fc"       # a variable-length string: global heap
    data = bytearray(open(src, "rb").read())
    at = data.find(b"GCOL")
    pos = 16
    while True:
        index, _, _, size = struct.unpack_from("<HHIQ", data, at + pos)
        if index == 0:
            break
        pos += 16 + (size + 7) // 8 * 8
    struct.pack_into("<Q", data, at + pos + 8, 0)
    p = tmp_path / "heap.weights.h5"
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="global heap"):
        check_global_heaps(str(p), 0, len(data), [])
    _expect(str(p), "damaged HDF5 global heap")


def test_keras_file_without_a_keras_suffix_reads_by_content(tmp_path):
    # The TensorFlow adapter dispatches on content: a Keras weights file saved as *.hdf5 is Keras.
    from hubfmt import Checkpoint, LazyTensor, TensorInfo, read, write

    ckpt = Checkpoint()
    ckpt.add("dense.weight", LazyTensor.from_array(np.ones((3, 2), np.float32)), TensorInfo(kind="linear"))
    ckpt.add("dense.bias", LazyTensor.from_array(np.zeros(3, np.float32)), TensorInfo(kind="linear"))
    src = tmp_path / "m.weights.h5"
    write(ckpt, src, framework="tensorflow")
    renamed = tmp_path / "m.hdf5"
    renamed.write_bytes(src.read_bytes())
    back = read(renamed, framework="tensorflow")
    assert np.array_equal(back.tensor("dense.weight"), np.ones((3, 2), np.float32))
