"""The format the ONNX adapter reads and writes without onnx, with its options."""
from __future__ import annotations

from hubfmt.sdk import READ, STRICT_WRITE, TEMPLATE, WRITE, NativeFormat, Option

FORMAT = "onnx-model"
# A protobuf message cannot exceed 2 GiB: past this the writer puts initializers in a data file.
INLINE_LIMIT = 1_800_000_000
# onnx.external_data_helper's default: smaller initializers stay inline in the model.
EXTERNAL_THRESHOLD = 1024

KEEP_CONSTANTS = Option("keep_constants", "bool", False, "keep graph constants (initializers with generated "
                        "names that feed no weight slot, e.g. Reshape shapes) as tensors instead of dropping them",
                        READ)
EXTERNAL_DATA = Option("external_data", "bool", None, "store initializers of 1 KiB and more in <model>.data beside "
                       "the model (default: when the template does, or when the model would pass 1.8 GB)", WRITE)

FORMATS = (
    NativeFormat(FORMAT, (".onnx",),
                 "ONNX ModelProto initializers (inline raw/typed data, external data files); written into an "
                 "existing model given as template (the graph is kept)",
                 options=(KEEP_CONSTANTS, TEMPLATE, STRICT_WRITE, EXTERNAL_DATA), template_required=True,
                 cannot_hold=("num_batches_tracked",)),    # exported graphs keep no BatchNorm step count
)
