"""``python -m malstrom``: the ``malstrom`` command."""

import sys

from malstrom.cli import main

if __name__ == "__main__":
    sys.exit(main())
