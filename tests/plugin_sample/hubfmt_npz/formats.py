"""The one format: numpy.savez archives, names as they are."""
import os
import zipfile

from hubfmt.sdk import WRITE, NativeFormat, Option

COMPRESS = Option("compress", "bool", False, "deflate the members (numpy.savez_compressed)", WRITE)
FORMATS = (NativeFormat("npz", (".npz",), "numpy.savez archive of named arrays", options=(COMPRESS,)),)


def sniff(path) -> str | None:
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return "npz" if names and all(n.endswith(".npy") for n in names) else None
