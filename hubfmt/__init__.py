"""hubfmt: move trained weights between frameworks through one neutral safetensors file.

>>> import hubfmt
>>> report = hubfmt.convert("dpn-0000.params", "dpn.pth")      # doctest: +SKIP
>>> ckpt = hubfmt.read("dpn.safetensors")                      # doctest: +SKIP

Importing hubfmt imports no framework; adapters live in hubfmt.adapters.<framework>.
"""
from .checkpoint import Checkpoint, Entry, LayerInfo, LazyTensor, SourceInfo, TensorInfo
from .convert import convert, read, write
from .errors import ConversionError, FormatError, HubfmtError, OutputError, UnsafePickleError, VersionError
from .manifest import FORMAT_VERSION
from .report import Report

__version__ = "0.1.0"
__all__ = [
    "Checkpoint", "Entry", "LayerInfo", "LazyTensor", "SourceInfo", "TensorInfo",
    "convert", "read", "write", "Report", "FORMAT_VERSION",
    "HubfmtError", "FormatError", "VersionError", "UnsafePickleError", "ConversionError", "OutputError",
]
