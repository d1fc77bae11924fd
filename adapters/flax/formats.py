"""The format the Flax adapter reads and writes without flax, with its options."""
from __future__ import annotations

from hubfmt.sdk import STRICT_WRITE, TEMPLATE, WRITE, NativeFormat, Option

FORMAT = "flax-msgpack"

COLLECTIONS = Option("collections", "bool", None, "write {'params': ..., 'batch_stats': ...} (Linen variables); false: "
                     "a bare params tree as HF flax_model.msgpack (default: as the source or template had it)", WRITE)

FORMATS = (
    NativeFormat(FORMAT, (".msgpack",),
                 "flax.serialization to_bytes / msgpack_serialize state files (Linen variables or a bare params "
                 "tree, e.g. flax_model.msgpack), chunked arrays included",
                 options=(TEMPLATE, STRICT_WRITE, COLLECTIONS),
                 cannot_hold=("num_batches_tracked",)),     # flax BatchNorm keeps mean and var only
)
