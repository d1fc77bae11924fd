"""The format the MXNet adapter reads and writes without MXNet, with its options."""
from __future__ import annotations

import os

from hubfmt.sdk import READ, RESTORE_DTYPE, STRICT_WRITE, TEMPLATE, WRITE, NativeFormat, Option

NAME = "mxnet"
FRAMEWORK = "mxnet"
FRAMEWORK_MODULE = "mxnet"
PIP_NAME = "mxnet"

FORMAT = "mxnet-params"

SYMBOL_FILE_READ = Option("symbol_file", "str", None, "the -symbol.json to take layer kinds, attributes and order "
                          "from (default: prefix-symbol.json beside prefix-NNNN.params; \"false\" ignores it)", READ)
SYMBOL_FILE_WRITE = Option("symbol_file", "bool", None, "write -symbol.json beside the .params (default: when a graph "
                           "is known and the style is module)", WRITE)
STYLE = Option("style", "str", None, "module: arg:/aux: names (default for prefix-NNNN.params); gluon: "
               "save_parameters names", WRITE, choices=("module", "gluon"))

FORMATS = (
    NativeFormat(FORMAT, (".params",),
                 "NDArray list (mx.nd.save): Gluon save_parameters, or export/save_checkpoint arg:/aux: with "
                 "prefix-symbol.json (written when a graph is known)",
                 options=(SYMBOL_FILE_READ, RESTORE_DTYPE, STYLE, TEMPLATE, SYMBOL_FILE_WRITE, STRICT_WRITE),
                 cannot_hold=("num_batches_tracked",)),
)


def sniff(path: str) -> str | None:
    """"mxnet-params" when `path` is an NDArray list file (mx.nd.save / save_parameters / export)."""
    from .ndlist import is_ndlist

    return FORMAT if os.path.isfile(path) and is_ndlist(path) else None
