"""Shared test helpers.

Framework oracles: `require("torch")` returns the imported framework, or skips the test when it
is absent on a developer's machine. Under `scripts/dev test` (HUBFMT_REQUIRE_FRAMEWORKS=1, as in
CI) a missing framework FAILS the test instead: a skipped oracle test is a hole.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
STRICT = os.environ.get("HUBFMT_REQUIRE_FRAMEWORKS") == "1"
# The environment as the test run started. Frameworks write to os.environ when imported
# (MindSpore sets PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION and LD_LIBRARY_PATH, TensorFlow
# TF2_BEHAVIOR, ...); child processes get this copy, so one test's imports can't break another's child.
CLEAN_ENV = dict(os.environ)


def _fix_numpy_for_mxnet() -> None:
    # mxnet 1.9.1 uses aliases numpy removed in 1.24; restore them before importing it.
    for alias, value in (("bool", bool), ("int", int), ("float", float), ("object", object),
                         ("str", str), ("complex", complex)):
        if not hasattr(np, alias):
            setattr(np, alias, value)


def require(framework: str):
    """Import `framework` for an oracle test (see module docstring)."""
    if framework == "mxnet":
        _fix_numpy_for_mxnet()
    try:
        return importlib.import_module(framework)
    except ImportError as e:
        if STRICT:
            pytest.fail(f"{framework} is required by this oracle test but cannot be imported: {e}")
        pytest.skip(f"{framework} not installed")


@pytest.fixture(scope="module")
def keras():
    """Keras for the oracle tests that build Keras models (TensorFlow is its backend here)."""
    require("tensorflow")
    return require("keras")


@pytest.fixture(scope="module")
def torch():
    """torch for the oracle tests (a module that changes torch's global state defines its own)."""
    return require("torch")


def oneflow_python() -> str:
    """The Python 3.10 side environment that has OneFlow (scripts/setup builds it)."""
    exe = os.environ.get("HUBFMT_ONEFLOW_PYTHON") or str(REPO / ".venv-oneflow/bin/python-oneflow")
    if not os.path.exists(exe):
        if STRICT:
            pytest.fail(f"OneFlow side environment missing: {exe} (run scripts/setup)")
        pytest.skip("OneFlow side environment not built")
    return exe


def run_oneflow(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `script` (Python source) in the OneFlow environment; fail the test with its output on error."""
    proc = subprocess.run([oneflow_python(), "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                          env=CLEAN_ENV)
    if proc.returncode != 0:
        pytest.fail(f"OneFlow subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_transformers4(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `script` in a child process with transformers 4.x first on its path (scripts/setup
    installs it beside the main environment: requirements/transformers4.txt); torch and
    TensorFlow are the main environment's. Fails the test with the child's output on error."""
    t4 = Path(sys.prefix) / "transformers4"
    if not t4.is_dir():
        if STRICT:
            pytest.fail(f"transformers 4.x oracle missing: {t4} (run scripts/setup)")
        pytest.skip("transformers 4.x oracle not installed")
    env = dict(CLEAN_ENV, PYTHONPATH=os.pathsep.join([str(t4), str(REPO / "tests")]))
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    if proc.returncode != 0:
        pytest.fail(f"transformers 4.x subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run the `hubfmt` command line in a child process (how users run it)."""
    return subprocess.run([sys.executable, "-m", "hubfmt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=CLEAN_ENV if env is None else env, timeout=600)


def rel_diff(a, b) -> float:
    """max |a-b| / max(|b|) : the brief's 'relative difference' of two outputs."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def assert_same_outputs(a, b, tol: float = 1e-5) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"output shapes differ: {a.shape} vs {b.shape}"
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    d = rel_diff(a, b)
    assert d <= tol, f"outputs differ: relative difference {d:.3g} > {tol}"
