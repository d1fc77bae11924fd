"""hubfmt: move trained weights between frameworks through one neutral safetensors file.

>>> import hubfmt
>>> report = hubfmt.convert("dpn-0000.params", "dpn.pth")      # doctest: +SKIP
>>> ckpt = hubfmt.read("dpn.safetensors")                      # doctest: +SKIP

This module is the user API. Adapters (hubfmt.adapters.<name>) use hubfmt.sdk; every other module
is internal. Importing hubfmt imports no framework.
"""
from hubfmt.alignment import Alignment, Mapping, Move, RuleSet, load_rules
from hubfmt.errors import (AlignmentError, ConversionError, FormatError, HubfmtError, MissingFrameworkError,
                           OutputError, UnsafePickleError, VersionError)
from hubfmt.format.checkpoint import Checkpoint, Entry, LayerInfo, SourceInfo, TensorInfo
from hubfmt.format.manifest import FORMAT_VERSION
from hubfmt.format.tensor import LazyTensor
from hubfmt.io.conformance import validate
from hubfmt.pipeline import align, convert, read, rename, write
from hubfmt.batch import BatchReport, convert_many
from hubfmt.report import Report
from hubfmt.verification import Verification, verify

from hubfmt.version import __version__ as __version__

__all__ = [
    "read", "write", "convert", "convert_many", "BatchReport", "align", "rename", "validate", "verify",
    "Checkpoint", "Entry", "LayerInfo", "LazyTensor", "SourceInfo", "TensorInfo", "Report", "FORMAT_VERSION",
    "Alignment", "RuleSet", "load_rules", "Mapping", "Move", "Verification",
    "HubfmtError", "FormatError", "VersionError", "UnsafePickleError", "ConversionError", "AlignmentError",
    "OutputError", "MissingFrameworkError",
]
