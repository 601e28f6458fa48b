"""Ctrl-C and SIGTERM for the command line: unwind cleanly, but never in the middle of an import.

Why: the exception a signal raises unwinds the stack, so the atomic writers remove their temp
files and the CLI prints one line (exit 130 for SIGINT, 143 for SIGTERM). Raised inside an
``import`` (torch, numpy and transformers take seconds to import) it leaves a half-initialised
module behind -- numpy then fails with RecursionError -- or is swallowed by a library's
``try: import ... except:`` and the command carries on; raised inside a ``__del__`` it is
printed and ignored. So a signal that arrives during an import or a ``__del__`` is held back and
delivered (by a short SIGALRM timer) as soon as neither is running, and raised again after a
second unless the CLI has caught it.
Standard library only: installed before anything heavy is imported.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from .errors import Terminated

_RETRY_S = 0.02  # how soon a held-back signal is tried again
_REDELIVER_S = 1.0  # a delivered one is raised again if nothing unwound (a __del__ swallowed it)
_pending: list[int] = []
_armed: list[bool] = [False]  # whether the SIGALRM timer is ours (never cancel someone else's)


def _unsafe(frame: FrameType | None) -> bool:
    """Inside an import, or a ``__del__`` (whose exceptions Python prints and ignores)."""
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<frozen importlib") or code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _arm(seconds: float) -> None:
    signal.signal(signal.SIGALRM, _retry)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    _armed[0] = True


def _deliver(signum: int) -> None:
    _pending[:] = [signum]
    _arm(_REDELIVER_S)  # cancelled by restore()/disarm() once the CLI has caught it
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _unsafe(frame):
        _pending[:] = [signum]
        _arm(_RETRY_S)
        return
    _deliver(signum)


def _retry(signum: int, frame: FrameType | None) -> None:
    if not _pending:
        return
    if _unsafe(frame):
        _arm(_RETRY_S)
        return
    _deliver(_pending[0])


def disarm() -> None:
    """The signal has been handled (the CLI caught it): stop any pending or repeated delivery."""
    if _armed[0] and threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)
        _armed[0] = False
    _pending.clear()


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
    disarm()
    for signum, handler in previous.items():
        if handler is not None:
            signal.signal(signum, handler)
