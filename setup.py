"""Only here to list the packages: hubfmt and its sub-packages, and one package per folder in
adapters/, installed as hubfmt.adapters.<name> (pyproject.toml cannot glob a remapped package
directory). Everything else is in pyproject.toml. tests/test_bare_install.py installs the wheel."""
import os

from setuptools import find_packages, setup

ADAPTERS = sorted(
    d for d in os.listdir("adapters") if os.path.isfile(os.path.join("adapters", d, "__init__.py"))
)
HUB = ["hubfmt", *(f"hubfmt.{p}" for p in find_packages("hubfmt"))]
setup(packages=[*HUB, "hubfmt.adapters", *(f"hubfmt.adapters.{d}" for d in ADAPTERS)])
