"""Load the object graph of a torch.save file (zip or legacy) without torch and without running
anything from it: the pickle goes through hubfmt.safe_pickle with torch's vocabulary mapped to
inert stand-ins, and storages become Blobs pointing at their bytes.

>>> obj, fmt = load("model.pth")          # doctest: +SKIP
>>> fmt
'torch-zip'
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any, BinaryIO, Callable

from hubfmt.sdk import FormatError, UnsafePickleError
from hubfmt.sdk import RestrictedUnpickler, unwrap

from . import legacy, zipformat
from .vocabulary import allow_list

# torch.storage._load_from_bytes nests whole torch files in a pickle; a few levels is plenty.
_MAX_NESTING = 4
# ...and all of them together hold no more bytes than the nesting levels could each hold the whole
# file (a pickle can hand the same bytes to _load_from_bytes hundreds of times per level).
_NESTED_SLACK = 1 << 20
MAX_NESTED_LOADS = 100_000


class NestedBudget:
    """What the nested torch files of one read may cost in all: MAX_NESTED_LOADS loads and
    _MAX_NESTING x the outer file's size + 1 MiB of bytes."""

    def __init__(self, outer_size: int):
        self.limit = _MAX_NESTING * outer_size + _NESTED_SLACK
        self.loads = self.nbytes = 0

    def charge(self, n: int, path: str) -> None:
        self.loads += 1
        self.nbytes += n
        if self.nbytes > self.limit or self.loads > MAX_NESTED_LOADS:
            raise FormatError(f"torch.storage._load_from_bytes: nested torch files add up to more than "
                              f"{self.limit} bytes ({_MAX_NESTING} x the file + 1 MiB) or {MAX_NESTED_LOADS} loads: "
                              "the same bytes are loaded over and over", path)


def unpickle(stream: BinaryIO, *, path: str, persistent_load: Callable[[Any], Any] | None,
             depth: int = 0, budget: NestedBudget | None = None) -> Any:
    """One pickle from `stream`, torch vocabulary allowed, unknown classes as OpaqueObjects.
    Every failure is a FormatError naming `path` (UnsafePickleError when the pickle tried to run code)."""
    spend = budget if budget is not None else NestedBudget(0)
    nested = (lambda data: load_bytes(data, path, depth + 1, spend)) if depth < _MAX_NESTING else None
    unpickler = RestrictedUnpickler(stream, allowed=allow_list(nested), persistent_load=persistent_load,
                                    opaque=True, source=path)
    try:
        return unwrap(unpickler.load())
    except UnsafePickleError as e:
        raise UnsafePickleError(e.message, path) from None
    except FormatError:
        raise
    except RecursionError:
        raise FormatError("pickle nests too deeply", path) from None
    except ValueError as e:         # our stand-ins' own checks, and pickle's
        raise FormatError(f"bad pickle: {e}", path) from None
    except (pickle.UnpicklingError, EOFError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, UnicodeDecodeError, ImportError) as e:
        raise FormatError(f"corrupt pickle: {type(e).__name__}: {e}", path) from None


def sniff_bytes(head: bytes) -> str | None:
    """'zip' (a torch checkpoint only if it has a <dir>/data.pkl member) or 'torch-legacy' from a
    file's first bytes; None for anything else."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if legacy.MAGIC_BYTES in head[:32]:
        return "torch-legacy"
    return None


def load(path: str) -> tuple[Any, str]:
    """(unpickled object, format name) of the torch file at `path`."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except FileNotFoundError:
        raise FormatError("no such file", path) from None
    except IsADirectoryError:
        raise FormatError("is a directory, not a torch checkpoint", path) from None
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path) from None
    kind = sniff_bytes(head)
    budget = NestedBudget(os.path.getsize(path))
    if kind == "zip":
        return zipformat.load(path, None, lambda s, pl: unpickle(s, path=path, persistent_load=pl, budget=budget)), "torch-zip"
    if kind == "torch-legacy":
        with open(path, "rb") as f:
            return legacy.load(f, path, os.path.getsize(path), True,
                               lambda s, pl: unpickle(s, path=path, persistent_load=pl, budget=budget)), "torch-legacy"
    raise FormatError("not a torch checkpoint (neither a zip archive nor a legacy torch.save file)", path)


def load_bytes(data: bytes, path: str, depth: int, budget: NestedBudget) -> Any:
    """A torch file embedded in a pickle (torch.storage._load_from_bytes), read from memory."""
    if not isinstance(data, (bytes, bytearray)):
        raise FormatError("torch.storage._load_from_bytes without bytes", path)
    budget.charge(len(data), path)
    data = bytes(data)
    kind = sniff_bytes(data[:32])

    def up(s, pl):
        return unpickle(s, path=path, persistent_load=pl, depth=depth, budget=budget)

    if kind == "zip":
        return zipformat.load(path, data, up)
    if kind == "torch-legacy":
        return legacy.load(io.BytesIO(data), path, len(data), False, up)
    raise FormatError("embedded storage is not a torch file", path)
