"""hubfmt's error types. Every failure a user can cause is one of these, so the CLI can print one
line naming the file and the problem instead of a traceback."""
from __future__ import annotations

import os


class HubfmtError(Exception):
    """Base class. `path` is the file the problem is in (None when no file is involved)."""

    exit_status = 2

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class FormatError(HubfmtError):
    """The file is not what it claims to be: truncated, corrupt, wrong magic, bad offsets."""


class VersionError(FormatError):
    """A hub file of a major version this reader does not know."""


class UnsafePickleError(FormatError):
    """A pickle asked for a callable outside the allow-list (it would have run code)."""


class ConversionError(HubfmtError):
    """The content is readable but cannot be mapped as asked (missing, ambiguous, wrong shape)."""


class AlignmentError(ConversionError):
    """Tensors could not all be matched to the template's names (missing, unexpected, ambiguous,
    shape mismatch). Exit status 1 ('unmatched'); `table` is the alignment table for the user."""

    exit_status = 1

    def __init__(self, message: str, path: str | os.PathLike | None = None, table: str = ""):
        super().__init__(message, path)
        self.table = table


class OutputError(HubfmtError):
    """The destination cannot be written: it exists, equals the source, or the disk refused."""


class MissingFrameworkError(HubfmtError):
    """An in-memory operation needs a framework that is not installed."""

    def __init__(self, framework: str, pip_name: str, what: str = ""):
        msg = f"{what or 'this operation'} needs {framework}, which is not installed (pip install {pip_name})"
        super().__init__(msg)
