"""The formats the MindSpore adapter reads and writes without MindSpore, with their options."""
from __future__ import annotations

from hubfmt.sdk import READ, RESTORE_DTYPE, STRICT_WRITE, TEMPLATE, VERIFY_CHECKSUMS, WRITE, NativeFormat, Option

CKPT = "mindspore-ckpt"
SAFETENSORS = "mindspore-safetensors"
SLICE_BYTES = 512 << 20     # save_checkpoint splits a tensor's content into Values of at most this

KEEP_OPTIMIZER = Option("keep_optimizer", "bool", False, "keep optimizer state (moments, learning_rate, "
                        "global_step) as tensors instead of dropping it", READ)
WRITE_EXTRA = Option("write_extra", "bool", True, "append scalar non-tensor content (epoch, step) as "
                     "save_checkpoint(append_dict=...) does", WRITE)
MAX_SLICE_BYTES = Option("max_slice_bytes", "size", SLICE_BYTES, "split a tensor's content into Values of at most "
                         "this many bytes, as save_checkpoint does", WRITE)

_READ = (KEEP_OPTIMIZER, VERIFY_CHECKSUMS)
NO_STEP_COUNT = ("num_batches_tracked",)    # BatchNorm here has moving_mean/moving_variance only
FORMATS = (
    NativeFormat(CKPT, (".ckpt",), "mindspore.save_checkpoint protobuf (Checkpoint/Value/TensorProto), incl. "
                 "sliced tensors > 512 MiB and the crc_num trailer; not encrypted files",
                 options=_READ + (RESTORE_DTYPE, TEMPLATE, STRICT_WRITE, WRITE_EXTRA, MAX_SLICE_BYTES),
                 cannot_hold=NO_STEP_COUNT),
    NativeFormat(SAFETENSORS, (".safetensors",), "save_checkpoint(format=\"safetensors\"): safetensors with "
                 "MindSpore names, metadata {\"format\": \"ms\"}",
                 options=_READ + (RESTORE_DTYPE, TEMPLATE, STRICT_WRITE, WRITE_EXTRA), cannot_hold=NO_STEP_COUNT),
)
