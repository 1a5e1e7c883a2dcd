"""python -m dlcore COMMAND ...: see `dlcore.cli`."""

import sys

from dlcore.cli import main

if __name__ == "__main__":
    sys.exit(main())
