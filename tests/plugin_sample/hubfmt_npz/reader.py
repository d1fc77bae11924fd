import os
import zipfile

import numpy as np

from hubfmt.sdk import Checkpoint, FormatError, LazyTensor, SourceInfo, dtypes


def read(path) -> Checkpoint:
    path = os.fspath(path)
    ckpt = Checkpoint(source=SourceInfo("numpy", np.__version__, os.path.basename(path), "npz"))
    try:
        with np.load(path, allow_pickle=False) as z:      # never unpickles
            for name in z.files:
                arr = z[name]
                ckpt.add(name, LazyTensor.from_array(arr, dtypes.name_of(arr.dtype)))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FormatError(f"not a readable .npz: {e}", path) from None
    return ckpt
