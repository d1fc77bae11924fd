"""The README's examples are code too: the rules file it shows must do what it says."""
from __future__ import annotations

import re

import numpy as np

from hubfmt import Checkpoint, LazyTensor, TensorInfo
from hubfmt.alignment.rules import RuleSet

from conftest import REPO


def test_readme_rules_example_renames_reshapes_and_splits():
    text = (REPO / "README.md").read_text()
    toml = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    rules = RuleSet.loads(toml, "README.md")
    ckpt = Checkpoint()
    ckpt.add("_blocks.0._bn1.weight", LazyTensor.from_array(np.ones(4, np.float32)), TensorInfo(kind="batch_norm"))
    ckpt.add("fc6.weight", LazyTensor.from_array(np.arange(6, dtype=np.float32).reshape(3, 2, 1, 1)), TensorInfo(kind="conv2d"))
    ckpt.add("attn.in_proj_weight", LazyTensor.from_array(np.arange(18, dtype=np.float32).reshape(6, 3)), TensorInfo(kind="linear"))
    out = rules.apply(ckpt)
    assert set(out) == {"blocks.0.bn1.weight", "classifier.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight"}
    assert out["classifier.weight"].tensor.shape == (3, 2)
    assert np.array_equal(out.tensor("attn.k_proj.weight"), np.arange(18, dtype=np.float32).reshape(6, 3)[2:4])
