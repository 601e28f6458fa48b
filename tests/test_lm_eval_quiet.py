"""lm-eval's git probe and index logging never reach the user's terminal."""

from __future__ import annotations

import logging
import shutil

import pytest

pytest.importorskip("lm_eval")

from xlsteer.evaluation.lm_eval_quiet import quiet_lm_eval  # noqa: E402


def test_the_git_probe_is_silent_outside_a_checkout_and_restored_after(tmp_path, monkeypatch, capfd):
    import lm_eval.evaluator as ev
    import lm_eval.loggers.utils as lu

    monkeypatch.chdir(tmp_path)  # not a git checkout
    original = ev.get_git_commit_hash
    with quiet_lm_eval():
        assert ev.get_git_commit_hash() is None and lu.get_git_commit_hash() is None
        assert logging.getLogger("lm_eval").getEffectiveLevel() >= logging.WARNING
    err = capfd.readouterr().err
    assert "fatal" not in err and err == ""
    assert ev.get_git_commit_hash is original
    if shutil.which("git"):  # what the user saw before: lm-eval's own probe prints git's error
        original()
        assert "not a git repository" in capfd.readouterr().err
