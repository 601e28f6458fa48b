"""``python -m xlsteer`` and the ``xlsteer`` script: Ctrl-C and SIGTERM give one line from the very start.

The handlers are installed before the command line module (and through it click, torch, ...) is
imported, so an interrupt during start-up is one line and exit 130 / 143 too.
"""

import signal
import sys

from . import signals
from .errors import Terminated


def run() -> None:
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
    # the work is done (or has unwound): a signal during interpreter shutdown must not become a traceback
    signals.disarm()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    run()
