"""The formats the OneFlow adapter reads and writes without OneFlow, with their options."""
from __future__ import annotations

from hubfmt.sdk import PREFER_EMA, RESTORE_DTYPE, WRITE, NativeFormat, Option

LAYOUT = Option("layout", "str", "state_dict", "state_dict: flow.load gives the state dict (non-tensor content in "
                "hubfmt_extra/); training: {'model': state_dict, **non-tensor content}", WRITE,
                choices=("state_dict", "training"))

FORMATS = (
    NativeFormat("oneflow", (".oneflow",), "oneflow.save directory: pickled_data + tensor_N/{out,meta} (OneFlow >= 0.6)",
                 layout="directory", options=(PREFER_EMA, RESTORE_DTYPE, LAYOUT)),
    NativeFormat("oneflow-legacy", (), "older OneFlow snapshot: snapshot_done + <variable>/{out,meta}",
                 writes=False, layout="directory", options=(PREFER_EMA,)),
)
