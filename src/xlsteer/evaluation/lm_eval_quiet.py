"""Keep lm-evaluation-harness's environment probing off the user's terminal.

Why: ``lm_eval.simple_evaluate`` records the git commit of the *current directory* by running
``git describe --always`` with stderr going to the terminal, so outside a git checkout every run
prints ``fatal: not a git repository``; its task index logs at INFO about every YAML it scans.
Neither says anything about the user's evaluation. Inside :func:`quiet_lm_eval` the probe runs
with its stderr discarded (the hash, when there is one, is still recorded) and lm-eval's loggers
only pass warnings and errors.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from typing import Iterator


def _quiet_git_commit_hash() -> str | None:
    """lm-eval's ``get_git_commit_hash`` without its stderr: the hash of the working directory's
    checkout, or None outside one."""
    try:
        out = subprocess.run(["git", "describe", "--always"], capture_output=True, check=True, timeout=10)  # noqa: S607
        return out.stdout.decode().strip() or None
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired, OSError):
        return None


@contextlib.contextmanager
def quiet_lm_eval(level: int = logging.WARNING) -> Iterator[None]:
    """Within the block: lm-eval's git probe is silent and its loggers pass ``level`` and above."""
    patched: list[tuple[object, str, object]] = []
    for name in ("lm_eval.loggers.utils", "lm_eval.evaluator"):
        try:
            mod = __import__(name, fromlist=["get_git_commit_hash"])
        except ImportError:
            continue
        if hasattr(mod, "get_git_commit_hash"):
            patched.append((mod, "get_git_commit_hash", getattr(mod, "get_git_commit_hash")))
            setattr(mod, "get_git_commit_hash", _quiet_git_commit_hash)
    log = logging.getLogger("lm_eval")
    old_level = log.level
    log.setLevel(max(level, old_level) if old_level else level)
    try:
        yield
    finally:
        log.setLevel(old_level)
        for mod, attr, value in reversed(patched):
            setattr(mod, attr, value)
