import sys

from hubfmt.cli.main import main

sys.exit(main())
