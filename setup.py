"""Only here to list the packages: one per folder in adapters/, installed as hubfmt.adapters.<name>
(pyproject.toml cannot glob a remapped package directory). Everything else is in pyproject.toml."""
import os

from setuptools import setup

ADAPTERS = sorted(
    d for d in os.listdir("adapters") if os.path.isfile(os.path.join("adapters", d, "__init__.py"))
)
setup(packages=["hubfmt", "hubfmt.adapters", *(f"hubfmt.adapters.{d}" for d in ADAPTERS)])
