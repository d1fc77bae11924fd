"""Builders shared by the hub tests (no framework needed)."""
from hubfmt.cli.demo import example_checkpoint as small_cnn  # noqa: F401  (one definition, pinned by spec/examples)
