"""``python -m xlsteer``: SIGINT/SIGTERM give one line from the very start (even during imports)."""

import signal
import sys

from .errors import Terminated, raise_terminated

signal.signal(signal.SIGTERM, raise_terminated)
try:
    from .cli import main

    code = main()
except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    code = 130
except Terminated:
    print("error: terminated", file=sys.stderr)
    code = 143
sys.exit(code)
