"""The formats the OneFlow adapter reads and writes without OneFlow, with their options."""
from __future__ import annotations

import os

from hubfmt.sdk import PREFER_EMA, RESTORE_DTYPE, WRITE, NativeFormat, Option

NAME = "oneflow"
FRAMEWORK = "oneflow"
FRAMEWORK_MODULE = "oneflow"
PIP_NAME = "oneflow"

LAYOUT = Option("layout", "str", "state_dict", "state_dict: flow.load gives the state dict (non-tensor content in "
                "hubfmt_extra/); training: {'model': state_dict, **non-tensor content}", WRITE,
                choices=("state_dict", "training"))

FORMATS = (
    NativeFormat("oneflow", (".oneflow",), "oneflow.save directory: pickled_data + tensor_N/{out,meta} (OneFlow >= 0.6)",
                 layout="directory", options=(PREFER_EMA, RESTORE_DTYPE, LAYOUT)),
    NativeFormat("oneflow-legacy", (), "older OneFlow snapshot: snapshot_done + <variable>/{out,meta}",
                 writes=False, layout="directory", options=(PREFER_EMA,)),
)

SNAPSHOT_DONE = "snapshot_done"


def sniff(path: str) -> str | None:
    """'oneflow' for a oneflow.save directory, 'oneflow-legacy' for an old snapshot, else None."""
    from .pickled import PICKLE_FILENAME

    try:
        if not os.path.isdir(path):
            return None
        if os.path.isfile(os.path.join(path, PICKLE_FILENAME)):
            return "oneflow"
        if os.path.isfile(os.path.join(path, SNAPSHOT_DONE)):
            return "oneflow-legacy"
    except OSError:
        return None
    return None
