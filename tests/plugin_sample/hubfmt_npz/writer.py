import os
import zipfile

import numpy as np

from hubfmt.sdk import Checkpoint, Report, TensorStream, atomic_output


def write(ckpt: Checkpoint, path, *, overwrite: bool = False, progress=None, compress: bool = False) -> Report:
    path = os.fspath(path)
    report = Report(stage="write")
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    names = ckpt.stored_names()
    stream = TensorStream(names, progress=progress, tensor=lambda n: ckpt[n].tensor, dtype=lambda n: None)
    with atomic_output(path, overwrite=overwrite) as tmp, zipfile.ZipFile(tmp, "w", mode) as z:
        for name, piece in stream:
            with z.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, piece.array(), allow_pickle=False)
            report.add("matched", name)
    report.tensors_in = len(ckpt)
    report.tensors_out = len(names)
    report.bytes_out = stream.bytes
    return report
