"""The code checks run with the tests (so CI runs them): ruff's pyflakes and bugbear rules on the
whole repository, mypy on the hub (configuration in pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_ruff_finds_nothing():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "hubfmt", "adapters", "tests", "benchmarks"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_finds_nothing_in_the_hub(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
