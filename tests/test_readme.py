"""The README's examples are code too: the rules file it shows must do what it says, and every
command and Python block runs as written on what `scripts/dev demo` leaves (#17)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

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


# ---- every command block runs, as written, on what `scripts/dev demo` leaves ----------------------

def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (REPO / "README.md").read_text(), re.S)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    subprocess.run([sys.executable, "-m", "hubfmt.cli.demo", "--out", str(d / "out" / "demo")], check=True,
                   capture_output=True, timeout=600)
    return d


def test_readme_has_command_blocks():
    assert len(_blocks("sh")) >= 2 and len(_blocks("python")) >= 1


def test_every_shell_command_in_the_readme_runs(demo_dir):
    for block in _blocks("sh"):
        for line in block.splitlines():
            command = line.split(" # ")[0].strip()
            if not command:
                continue
            argv = shlex.split(command)
            assert argv[0] == "hubfmt", command
            for attempt in (1, 2):         # twice: the examples are safe to repeat
                r = subprocess.run([sys.executable, "-m", "hubfmt", *argv[1:]], cwd=demo_dir, capture_output=True,
                                   text=True, timeout=300)
                assert r.returncode == 0, f"{command} (run {attempt}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
                assert "DIFFERENT" not in r.stdout, command


def test_every_python_block_in_the_readme_runs(demo_dir):
    for block in _blocks("python"):
        r = subprocess.run([sys.executable, "-c", block], cwd=demo_dir, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{block}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
