"""Builders shared by the hub tests (no framework needed)."""
from __future__ import annotations

import numpy as np

from hubfmt import Checkpoint, LayerInfo, LazyTensor, TensorInfo


def small_cnn(seed: int = 0, half: bool = False) -> Checkpoint:
    """A conv -> batch norm -> linear checkpoint in canonical form, built from numpy."""
    rng = np.random.default_rng(seed)
    ft = np.float16 if half else np.float32
    ckpt = Checkpoint()
    ckpt.source.framework = "test"
    ckpt.add("features.0.weight", LazyTensor.from_array(rng.standard_normal((8, 3, 3, 3)).astype(ft)), TensorInfo(kind="conv2d"))
    ckpt.add("features.0.bias", LazyTensor.from_array(rng.standard_normal(8).astype(ft)), TensorInfo(kind="conv2d"))
    for role, arr in (("weight", rng.random(8) + 0.5), ("bias", rng.standard_normal(8)),
                      ("running_mean", rng.standard_normal(8)), ("running_var", rng.random(8) + 0.5)):
        ckpt.add(f"features.1.{role}", LazyTensor.from_array(arr.astype(ft)), TensorInfo(kind="batch_norm"))
    ckpt.add("features.1.num_batches_tracked", LazyTensor.from_array(np.array(7, dtype=np.int64)), TensorInfo(kind="batch_norm"))
    ckpt.layers["features.1"] = LayerInfo("batch_norm", {"eps": 1e-5, "momentum": 0.1})
    ckpt.add("classifier.weight", LazyTensor.from_array(rng.standard_normal((4, 8)).astype(ft)), TensorInfo(kind="linear"))
    ckpt.add("classifier.bias", LazyTensor.from_array(rng.standard_normal(4).astype(ft)), TensorInfo(kind="linear"))
    ckpt.extra = {"epoch": 3, "names": ["cat", "dog", "emu", "yak"]}
    return ckpt
