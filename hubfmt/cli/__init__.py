"""The `hubfmt` command.

    main.py     argument parsing and the commands
    inspect.py  what a checkpoint holds (`hubfmt inspect`)
    diff.py     tensor-by-tensor comparison (`hubfmt diff`)
    demo.py     the built-in example (`scripts/dev demo`)
"""
from hubfmt.cli.main import main

__all__ = ["main"]
