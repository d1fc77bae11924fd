"""hubfmt's version (the same as pyproject.toml's; tests/test_packaging.py checks). A module of its
own so that any part of the hub can name it without importing the user API."""
__version__ = "0.1.0"
