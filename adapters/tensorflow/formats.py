"""The formats the TensorFlow adapter reads and writes without TensorFlow, with their options."""
from __future__ import annotations

from hubfmt.sdk import (MAX_SHARD_SIZE, PREFER_EMA, READ, RESTORE_DTYPE, STRICT_READ, STRICT_WRITE, TEMPLATE,
                        VERIFY_CHECKSUMS, WRITE, NativeFormat, Option)

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
KERAS_TEMPLATE_READ = Option("template", "template", None, "the model's .keras archive or live Keras model: "
                             "layer classes for a bare .weights.h5", READ)

BUNDLE = NativeFormat(
    "tf-checkpoint", (".index",),
    "TensorFlow checkpoint bundle, TF1 name-based or TF2 object-based (prefix.index + prefix.data-*)",
    layout="prefix",
    options=(PREFER_EMA, KINDS_READ, FORGET_BIAS_READ, STRICT_READ, VERIFY_CHECKSUMS,
             RESTORE_DTYPE, TEMPLATE, MAX_SHARD_SIZE, KINDS_WRITE, RNN_STYLE, FORGET_BIAS_WRITE, STRICT_WRITE,
             UPDATE_STATE),
    cannot_hold=("num_batches_tracked",))
_KERAS_OPTIONS = (STRICT_READ, KERAS_TEMPLATE_READ, RESTORE_DTYPE, TEMPLATE, STRICT_WRITE)
KERAS_WEIGHTS = NativeFormat("keras-weights-h5", (".weights.h5",), "Keras 3 model.save_weights() file "
                             "(HDF5, positional vars)", options=_KERAS_OPTIONS, cannot_hold=("num_batches_tracked",))
KERAS_ARCHIVE = NativeFormat("keras-archive", (".keras",), "Keras 3 model.save() archive "
                             "(config.json + model.weights.h5)", options=_KERAS_OPTIONS,
                             cannot_hold=("num_batches_tracked",))
KERAS_H5 = NativeFormat("keras-h5", (".h5",), "legacy Keras 2 HDF5 weights or model (named variables; read only)",
                        writes=False, options=(STRICT_READ, KERAS_TEMPLATE_READ), cannot_hold=("num_batches_tracked",))
KERAS_FORMATS = (KERAS_WEIGHTS, KERAS_ARCHIVE, KERAS_H5)
FORMATS = (BUNDLE, *KERAS_FORMATS)
