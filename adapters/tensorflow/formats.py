"""The format the TensorFlow adapter reads and writes without TensorFlow (checkpoint bundles), with
its options, and `sniff`. Keras files are the keras adapter's."""
from __future__ import annotations

import os

from hubfmt.sdk import (MAX_SHARD_SIZE, PREFER_EMA, READ, RESTORE_DTYPE, STRICT_READ, STRICT_WRITE, TEMPLATE,
                        VERIFY_CHECKSUMS, WRITE, NativeFormat, Option)

NAME = "tensorflow"
FRAMEWORK = "tensorflow"
FRAMEWORK_MODULE = "tensorflow"
PIP_NAME = "tensorflow-cpu"
TF1_FORGET_BIAS = 1.0

KINDS_READ = Option("kinds", "mapping", None, "{layer: kind} overrides of the inferred layer kinds", READ)
KINDS_WRITE = Option("kinds", "mapping", None, "{layer: kind} overrides of the layer kinds", WRITE)
FORGET_BIAS_READ = Option("forget_bias", "float", TF1_FORGET_BIAS, "the forget_bias TF1 LSTM cells add at run "
                          "time (folded into the canonical bias)", READ)
FORGET_BIAS_WRITE = Option("forget_bias", "float", TF1_FORGET_BIAS, "the forget_bias of the destination's TF1 "
                           "LSTM cells (taken out of the bias)", WRITE)
RNN_STYLE = Option("rnn_style", "str", "tf1", "tf1: fused LSTMCell kernels; keras: Keras LSTM variables", WRITE,
                   choices=("tf1", "keras"))
UPDATE_STATE = Option("update_state", "bool", True, "point the directory's `checkpoint` state file at the output",
                      WRITE)
FLATTEN_DOC = ("a Dense after a Flatten of conv features (a checkpoint does not record the map's shape): HxW (its "
               "height and width; the input rows are permuted between TF's H,W,C and the canonical C,H,W order) or "
               "as-is (rows kept as they are)")
FLATTEN_READ = Option("flatten", "str", None, FLATTEN_DOC, READ)
FLATTEN_WRITE = Option("flatten", "str", None, FLATTEN_DOC, WRITE)
BUNDLE = NativeFormat(
    "tf-checkpoint", (".index",),
    "TensorFlow checkpoint bundle, TF1 name-based or TF2 object-based (prefix.index + prefix.data-*)",
    layout="prefix",
    options=(PREFER_EMA, KINDS_READ, FORGET_BIAS_READ, STRICT_READ, VERIFY_CHECKSUMS, FLATTEN_READ,
             RESTORE_DTYPE, TEMPLATE, MAX_SHARD_SIZE, KINDS_WRITE, RNN_STYLE, FORGET_BIAS_WRITE, STRICT_WRITE,
             UPDATE_STATE, FLATTEN_WRITE),
    cannot_hold=("num_batches_tracked",))
FORMATS = (BUNDLE,)


def sniff(path) -> str | None:
    """'tf-checkpoint' when `path` designates a checkpoint bundle (the prefix, `prefix.index`, a
    shard or a directory with a `checkpoint` state file), else None. Cheap: reads the index's
    last 8 bytes; never raises."""
    from .bundle import is_bundle

    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "checkpoint")):
        return BUNDLE.name          # a TF checkpoint directory: the reader says what is wrong with it
    try:
        return BUNDLE.name if is_bundle(path) else None
    except (OSError, ValueError):
        return None
