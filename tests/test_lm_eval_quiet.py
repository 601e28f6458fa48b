"""lm-eval's git probe and index logging never reach the user's terminal."""

from __future__ import annotations

import logging
import shutil

import pytest

pytest.importorskip("lm_eval")

from xlsteer.lmeval.harness import quiet  # noqa: E402


def test_the_git_probe_is_silent_outside_a_checkout_and_restored_after(tmp_path, monkeypatch, capfd):
    import lm_eval.evaluator as ev
    import lm_eval.loggers.utils as lu

    monkeypatch.chdir(tmp_path)  # not a git checkout
    original = ev.get_git_commit_hash
    with quiet(keep_progress=True):
        assert ev.get_git_commit_hash() is None and lu.get_git_commit_hash() is None
        assert logging.getLogger("lm_eval").getEffectiveLevel() >= logging.WARNING
    err = capfd.readouterr().err
    assert "fatal" not in err and err == ""
    assert ev.get_git_commit_hash is original
    if shutil.which("git"):  # what the user saw before: lm-eval's own probe prints git's error
        original()
        assert "not a git repository" in capfd.readouterr().err


def test_quiet_before_lm_evals_evaluator_is_imported_leaves_its_git_probe_alone():
    """The evaluator binds ``loggers.utils.get_git_commit_hash`` when it is imported: a first
    ``quiet()`` that imported it while the probe was patched kept the silent one for good."""
    import subprocess
    import sys

    code = ("from xlsteer.lmeval.harness import quiet\n"
            "with quiet():\n    pass\n"
            "import lm_eval.evaluator as ev, lm_eval.loggers.utils as lu\n"
            "assert ev.get_git_commit_hash is lu.get_git_commit_hash, ev.get_git_commit_hash\n"
            "assert ev.get_git_commit_hash.__module__ == 'lm_eval.loggers.utils'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
