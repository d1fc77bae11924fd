"""Packaging and import hygiene: adapters install as hubfmt.adapters.*, the hub imports no framework."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO

FRAMEWORKS = ("torch", "tensorflow", "mxnet", "mindspore", "oneflow", "keras", "h5py")


def test_a_built_wheel_holds_every_adapter_under_hubfmt(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("hubfmt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    folders = [p.name for p in (REPO / "adapters").iterdir() if (p / "__init__.py").exists()]
    for name in folders:
        assert f"hubfmt/adapters/{name}/__init__.py" in names
    assert not [n for n in names if n.startswith("adapters/")]


def test_importing_hubfmt_and_its_cli_imports_no_framework():
    code = ("import sys, hubfmt, hubfmt.cli, hubfmt.registry; "
            "print(','.join(m for m in %r if m in sys.modules))" % (FRAMEWORKS,))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_adapters_is_not_a_top_level_name():
    r = subprocess.run([sys.executable, "-c", "import adapters"], capture_output=True, text=True, cwd="/")
    assert r.returncode != 0 and "No module named 'adapters'" in r.stderr


def test_the_version_is_pyprojects():
    import tomllib

    import hubfmt
    from hubfmt.version import __version__

    with open(REPO / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["version"] == __version__ == hubfmt.__version__
