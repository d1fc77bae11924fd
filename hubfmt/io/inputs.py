"""Checks on input paths, so every reader says the same true thing about a path that is not the
file it expects (a directory is not 'no such file'; a FIFO or device is never opened, since
reading one could block forever or never end)."""
from __future__ import annotations

import os
import stat

from hubfmt.errors import FormatError


def check_input_file(path: str, what: str, *, inside: str | None = None) -> str:
    """`path` if it is an existing regular file (symlinks followed); else a FormatError naming it
    and saying what it is instead. `what` names the expected file, e.g. "an MXNet .params file".

    With `inside` (the directory of the input the user named), `path` is a companion file the
    input refers to (a shard, a tensor file): it must resolve inside that directory. A symbolic
    link out of it is refused: a converter of untrusted files reads only the input's own files
    (the frameworks themselves may follow such links)."""
    if inside is not None:
        root = os.path.realpath(inside)
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            link = " (a symbolic link)" if os.path.islink(path) else ""
            raise FormatError(f"{what}{link} resolves to {real}, outside the input's directory {root}: refused "
                              f"(hubfmt reads only the input's own files)", path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FormatError("no such file" if not os.path.lexists(path) else "a symbolic link to nothing", path) from None
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise FormatError(f"is a directory, not {what}", path)
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"not a regular file (a FIFO, socket or device), not {what}", path)
    return path


def check_not_special(path: str) -> None:
    """Refuse a FIFO, socket or device before anything opens it (sniffing a FIFO would block)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise FormatError("not a regular file or directory (a FIFO, socket or device); hubfmt reads only files", path)
