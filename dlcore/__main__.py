"""python -m dlcore COMMAND ...: see `dlcore.cli`."""

import os
import sys

from dlcore.cli import main

if __name__ == "__main__":
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `zoo list | head` closed the pipe: the reader has what it wanted, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush stays quiet
        code = 0
    sys.exit(code)
