"""What the repository may track: no virtual environment.

Why: a worktree's ``.venv`` is a link to a shared environment (or the environment itself). Once a
commit tracks it, checking that commit out or merging it into a folder that holds a real ``.venv``
makes git delete that environment's files (ignored files are expendable to git) and put the link
in its place.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_virtual_environment_is_tracked():
    try:
        proc = subprocess.run(["git", "ls-files", "--", ".venv", "venv", ".venv/*"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("git is not available")
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    assert proc.stdout.split() == [], "untrack it: git rm --cached .venv (.gitignore lists .venv)"
