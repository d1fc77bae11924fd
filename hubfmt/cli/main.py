"""The `hubfmt` command. Exit status: 0 success; 1 'differs / does not conform / unmatched';
2 bad input or usage, one line `hubfmt: error: PATH: what is wrong`; 3 a bug in hubfmt itself,
one line saying so (HUBFMT_DEBUG=1 shows the traceback); 130/143 interrupted (SIGINT/SIGTERM), with
no temporary left behind."""
from __future__ import annotations

import os
import signal
import sys

from hubfmt.cli import commands

COMMANDS = {"convert": commands.cmd_convert, "convert-many": commands.cmd_convert_many, "align": commands.cmd_align, "inspect": commands.cmd_inspect,
            "diff": commands.cmd_diff, "validate": commands.cmd_validate, "formats": commands.cmd_formats}


class Terminated(SystemExit):
    """SIGTERM, raised where the process is, so every `finally` (temporaries, locks) runs."""


def _on_sigterm(signum, frame):
    raise Terminated(128 + signum)


def main(argv: list[str] | None = None) -> int:
    # A file-size limit (ulimit -f) must give EFBIG, a clear error, not kill us mid-write.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    from hubfmt.io.malloc import allow_reuse
    allow_reuse()
    from hubfmt.cli.parser import build

    args = build().parse_args(argv)
    debug = bool(os.environ.get("HUBFMT_DEBUG"))
    from hubfmt.errors import AlignmentError, HubfmtError

    try:
        return COMMANDS[args.command](args)
    except AlignmentError as e:
        # The table (with the mismatches) goes to stdout, the one-line error to stderr.
        if debug:
            raise
        print(e.table)
        print(f"hubfmt: error: {e}", file=sys.stderr)
        return e.exit_status
    except HubfmtError as e:
        if debug:
            raise
        print(f"hubfmt: error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("hubfmt: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:
        print("hubfmt: terminated", file=sys.stderr)
        return int(e.code or 143)
    except BrokenPipeError:
        return 0
    except OSError as e:
        # The operating system refused something hubfmt asked of it (disk full, permission,
        # read-only file system...): the user's to fix, named by its file.
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"hubfmt: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError:
        if debug:
            raise
        print("hubfmt: error: out of memory", file=sys.stderr)
        return 2
    except Exception as e:     # noqa: BLE001 - the last line of defence: a bug, said in one line
        if debug:
            raise
        print(f"hubfmt: internal error (a bug in hubfmt; please report it, with HUBFMT_DEBUG=1 for the traceback): "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
