"""The Keras files the keras adapter reads and writes without Keras (h5py and numpy only), with
their options, and `sniff`."""
from __future__ import annotations

import os

from hubfmt.sdk import READ, RESTORE_DTYPE, STRICT_READ, STRICT_WRITE, TEMPLATE, NativeFormat, Option

NAME = "keras"
FRAMEWORK = "tensorflow"            # --from/--to tensorflow covers these files too
FRAMEWORK_MODULE = "keras"
PIP_NAME = "tensorflow-cpu"              # Keras 3 with its TensorFlow backend

TEMPLATE_READ = Option("template", "template", None, "the model's .keras archive or live Keras model: "
                       "layer classes for a bare .weights.h5", READ)
_OPTIONS = (STRICT_READ, TEMPLATE_READ, RESTORE_DTYPE, TEMPLATE, STRICT_WRITE)
NO_STEP_COUNT = ("num_batches_tracked",)     # Keras BatchNormalization keeps no step count
WEIGHTS_H5 = NativeFormat("keras-weights-h5", (".weights.h5",), "Keras 3 model.save_weights() file "
                          "(HDF5, positional vars)", options=_OPTIONS, cannot_hold=NO_STEP_COUNT)
ARCHIVE = NativeFormat("keras-archive", (".keras",), "Keras 3 model.save() archive "
                       "(config.json + model.weights.h5)", options=_OPTIONS, cannot_hold=NO_STEP_COUNT)
LEGACY_H5 = NativeFormat("keras-h5", (".h5",), "legacy Keras 2 HDF5 weights or model (named variables; read only)",
                         writes=False, options=(STRICT_READ, TEMPLATE_READ), cannot_hold=NO_STEP_COUNT)
FORMATS = (WEIGHTS_H5, ARCHIVE, LEGACY_H5)


def sniff(path) -> str | None:
    """'keras-weights-h5' or 'keras-archive' when `path` is (or claims to be) one; None otherwise.

    Cheap: the HDF5 signature (no other framework here writes HDF5), a zip's member names, or the
    Keras suffixes. Claiming a damaged `x.weights.h5` lets read() say what is wrong with it.

    >>> sniff("model.keras")          # doctest: +SKIP
    'keras-archive'
    """
    from .files import is_hdf5, is_keras_archive

    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    try:
        if is_hdf5(path):
            return WEIGHTS_H5.name
        if is_keras_archive(path):
            return ARCHIVE.name
    except OSError:
        return None
    if path.endswith(".weights.h5"):
        return WEIGHTS_H5.name
    if path.endswith(".keras"):
        return ARCHIVE.name
    return None
