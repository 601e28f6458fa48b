"""``python -m xlsteer``: Ctrl-C and SIGTERM give one line from the very start (even during imports)."""

import signal
import sys

from . import signals
from .errors import Terminated

signals.install()
try:
    from .cli import main

    code = main()
except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    code = 130
except Terminated:
    print("error: terminated", file=sys.stderr)
    code = 143
# the work is done (or has unwound): a signal during interpreter shutdown must not turn into a traceback
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.exit(code)
