"""The adapter SDK: everything an adapter may use from the hub, and the only module it imports.

An adapter is a package (built in under hubfmt.adapters, or any importable module registered in
the entry-point group `hubfmt.adapters`) exposing these names:

    NAME             the adapter's name on the command line (--from/--to NAME)
    FRAMEWORK        the framework it serves ("tensorflow" for both the bundle and the Keras adapter)
    FRAMEWORK_MODULE the framework's import name, for from_model/to_model
    PIP_NAME         what to `pip install` for the in-memory functions
    FORMATS          tuple of NativeFormat: the files it reads/writes without the framework, each with
                     its reader and writer options declared as data (Option)
    sniff(path)      -> a FORMATS name if `path` holds one of them, else None (cheap, no framework,
                     never raises)
    read(path, **options) -> Checkpoint
                     native file -> canonical, lazy checkpoint; framework-free; bad input raises
                     FormatError naming the file
    write(ckpt, path, *, overwrite=False, progress=None, **options) -> Report
                     canonical -> native file, streaming (TensorStream), atomic (atomic_outputs);
                     framework-free
    from_model(model, **options) -> Checkpoint   in-memory model -> canonical (needs the framework)
    to_model(ckpt, model, *, strict=True) -> Report  canonical -> in-memory model (needs the framework)

The hub validates options against FORMATS before calling read/write, so an adapter's functions
receive only options its format declares, with values of the declared types. Rules: an adapter
imports its framework only inside from_model/to_model, never another adapter, and from the hub
only this module. hubfmt.contract.AdapterContract is the conformance suite any adapter can reuse.

The modules of an adapter have the same names for the same jobs: `__init__.py` (re-exports
only: formats.py's names eagerly, the functions through `lazy_exports`, imported on first use),
`formats.py` (FORMATS and sniff), `reader.py`, `writer.py`, `names.py` (native names and
layouts <-> canonical ones), `memory.py` (from_model/to_model), plus the codecs of its format.
"""
from __future__ import annotations


from hubfmt.codecs import protowire, safetensors, ziparchive
from hubfmt.codecs.filecursor import FileCursor
from hubfmt.codecs.pickle_emit import PickleEmitter
from hubfmt.codecs.safe_pickle import OpaqueObject, RestrictedUnpickler, restricted_loads, unwrap
from hubfmt.errors import (ConversionError, FormatError, HubfmtError, MissingFrameworkError, OutputError,
                           UnsafePickleError)
from hubfmt.format import checksums, dtypes, layouts
from hubfmt.format.checksums import Checksum
from hubfmt.format.checkpoint import Checkpoint, Entry, LayerInfo, SourceInfo, TensorInfo
from hubfmt.format.extra import from_plain, to_plain
from hubfmt.format.tensor import FileSpan, LazyTensor
from hubfmt.io import attention, flatten, layer_rules
from hubfmt.io.atomic import atomic_output, atomic_outputs
from hubfmt.io.hubfile import write_safetensors
from hubfmt.io.inputs import check_input_file
from hubfmt.io.attention import Heads
from hubfmt.io.layer_rules import LayerRules, Leaf, Mapped, Stacked, Summed
from hubfmt.io.norm_attrs import norm_attr_mismatches
from hubfmt.io.parallel import BehindWriter, fold_file
from hubfmt.io.parallel import combine as combine_checksums
from hubfmt.io.progress import Progress
from hubfmt.format.tensor import file_span, part_of, pread_into, read_region, region_tensor, span_tensor
from hubfmt.io.stream import OUTPUT_BUFFER, Piece, TensorStream, fold_region, kernel_copyable, prefetched, write_tensor
from hubfmt.io.transforms import convert_layout, depthwise_to_hwcm, permute, reorder_gates
from hubfmt.registry import (KEEP_DTYPE, MAX_SHARD_SIZE, PREFER_EMA, READ, RESTORE_DTYPE, STRICT_READ, STRICT_WRITE,
                             TEMPLATE, VERIFY_CHECKSUMS, WRITE, NativeFormat, Option, lazy_exports, parse_size)
from hubfmt.report import Report

__all__ = [
    # the data model
    "Checkpoint", "Entry", "LayerInfo", "SourceInfo", "TensorInfo", "LazyTensor", "FileSpan", "Report",
    "dtypes", "layouts", "to_plain", "from_plain",
    # errors
    "HubfmtError", "FormatError", "ConversionError", "OutputError", "MissingFrameworkError", "UnsafePickleError",
    # declaring formats and their options
    "NativeFormat", "Option", "READ", "WRITE", "parse_size", "lazy_exports",
    "PREFER_EMA", "KEEP_DTYPE", "MAX_SHARD_SIZE", "RESTORE_DTYPE", "TEMPLATE", "STRICT_READ", "STRICT_WRITE",
    "VERIFY_CHECKSUMS",
    # reading and writing bytes
    "region_tensor", "span_tensor", "part_of", "file_span", "read_region", "pread_into", "fold_region", "prefetched",
    "write_tensor", "kernel_copyable", "OUTPUT_BUFFER", "Progress",
    "TensorStream", "Piece", "Checksum", "checksums", "fold_file", "BehindWriter", "combine_checksums",
    "atomic_output", "atomic_outputs", "check_input_file", "write_safetensors",
    # layouts, and a layer's native tensors <-> canonical ones as a declarative table (names.py)
    "convert_layout", "depthwise_to_hwcm", "reorder_gates", "permute",
    "attention", "Heads", "flatten", "norm_attr_mismatches", "layer_rules", "LayerRules", "Leaf", "Summed", "Stacked", "Mapped",
    # codecs
    "RestrictedUnpickler", "restricted_loads", "unwrap", "OpaqueObject", "PickleEmitter", "protowire", "safetensors",
    "ziparchive", "FileCursor",
]
