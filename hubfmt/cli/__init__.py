"""The `hubfmt` command.

    main.py      entry point: dispatch, exit statuses, signals
    parser.py    the arguments (exact option names, 'did you mean')
    commands.py  what each subcommand does
    inspect.py   what a checkpoint holds (`hubfmt inspect`)
    diff.py      tensor-by-tensor comparison (`hubfmt diff`)
    demo.py      the built-in example (`scripts/dev demo`)
"""
from hubfmt.cli.main import main

__all__ = ["main"]
