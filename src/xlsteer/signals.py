"""Ctrl-C and SIGTERM for the command line: unwind cleanly, but never in the middle of an import.

Why: the exception a signal raises unwinds the stack, so the atomic writers remove their temp
files and the CLI prints one line (exit 130 for SIGINT, 143 for SIGTERM). Raised inside an
``import`` (torch, numpy and transformers take seconds to import) it leaves a half-initialised
module behind -- numpy then fails with RecursionError -- or is swallowed by a library's
``try: import ... except:`` and the command carries on. So a signal that arrives during an
import is held back and delivered (by a short SIGALRM timer) as soon as no import is running.
Standard library only: installed before anything heavy is imported.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from .errors import Terminated

_RETRY_S = 0.02
_pending: list[int] = []


def _in_import(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _deliver(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated()


def _hold(signum: int) -> None:
    _pending.append(signum)
    signal.signal(signal.SIGALRM, _retry)
    signal.setitimer(signal.ITIMER_REAL, _RETRY_S)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _in_import(frame):
        _hold(signum)
        return
    _pending.clear()
    _deliver(signum)


def _retry(signum: int, frame: FrameType | None) -> None:
    if not _pending:
        return
    if _in_import(frame):
        signal.setitimer(signal.ITIMER_REAL, _RETRY_S)
        return
    first = _pending[0]
    _pending.clear()
    _deliver(first)


def install() -> dict[int, Any] | None:
    """Handle SIGINT and SIGTERM as above; returns the previous handlers (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    return previous


def restore(previous: dict[int, Any] | None) -> None:
    """Put back the handlers :func:`install` replaced (and stop a pending retry timer)."""
    if previous is None:
        return
    if _pending:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _pending.clear()
    for signum, handler in previous.items():
        if handler is not None:
            signal.signal(signum, handler)
