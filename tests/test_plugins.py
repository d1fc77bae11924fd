"""Third-party adapters: a package from outside (tests/plugin_sample) installed into a fresh venv
registers through the entry-point group `hubfmt.adapters`, converts through the hub like a built-in,
and passes the contract suite (hubfmt.contract) there."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest

from conftest import CLEAN_ENV, REPO


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory):
    """A venv holding the sample adapter, seeing this environment's packages (hubfmt, numpy)."""
    d = tmp_path_factory.mktemp("plugin") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d)], check=True)
    py = d / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages")] + [sysconfig.get_paths()["purelib"]]
    with open(os.path.join(site, "_parent_env.pth"), "w") as f:
        f.write("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in dict.fromkeys(ours)) + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                        "--no-build-isolation", str(REPO / "tests" / "plugin_sample")],
                       capture_output=True, text=True, env=CLEAN_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    return py


def _run(py, *args, cwd=None):
    return subprocess.run([str(py), *map(str, args)], capture_output=True, text=True, env=CLEAN_ENV, cwd=cwd,
                          timeout=600)


def test_an_installed_plugin_is_listed_and_converts_through_the_hub(plugin_venv, tmp_path):
    r = _run(plugin_venv, "-m", "hubfmt", "formats")
    assert r.returncode == 0, r.stderr
    assert "npz " in r.stdout and "-W compress=..." in r.stdout
    src = tmp_path / "a.npz"
    np.savez(src, **{"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "fc.bias": np.ones(2, np.float32)})
    r = _run(plugin_venv, "-m", "hubfmt", "convert", src, tmp_path / "a.pth", "-q")
    assert r.returncode == 0, r.stderr
    r = _run(plugin_venv, "-m", "hubfmt", "convert", tmp_path / "a.pth", tmp_path / "b.npz", "-W", "compress=true", "-q")
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "b.npz") as z:
        assert np.array_equal(z["fc.weight"], np.arange(6, dtype=np.float32).reshape(2, 3))
    # its options are checked by the hub like any other format's
    r = _run(plugin_venv, "-m", "hubfmt", "convert", tmp_path / "a.pth", tmp_path / "c.npz", "-W", "compres=true")
    assert r.returncode == 2 and "did you mean -W compress" in r.stderr, r.stderr
    # and without the plugin installed, this environment does not know the format
    r = subprocess.run([sys.executable, "-m", "hubfmt", "convert", tmp_path / "a.pth", tmp_path / "d.npz"],
                       capture_output=True, text=True, env=CLEAN_ENV)
    assert r.returncode == 2 and "cannot tell the output format" in r.stderr


def test_the_plugin_passes_the_contract_suite(plugin_venv, tmp_path):
    (tmp_path / "test_npz_contract.py").write_text(textwrap.dedent("""
        from hubfmt.contract import AdapterContract

        class TestNpz(AdapterContract):
            adapter_name = "npz"
            output_name = "model.npz"
            dtypes = ("float32", "int64", "bool")
    """))
    r = _run(plugin_venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", tmp_path / "test_npz_contract.py", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
