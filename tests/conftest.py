"""Shared test setup: everything runs offline, on tiny random models unless marked slow."""

from __future__ import annotations

import os

# Tests never reach the network; a hub id must fail fast instead of hanging on a download.
os.environ["HF_HUB_OFFLINE"] = "1"
# No progress bars in test output (tests that check bars set it back themselves).
os.environ.setdefault("XLSTEER_QUIET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def catalogue_files(tmp_path_factory):
    """The inputs of the bad-input catalogue's sibling modules (tests/catalogue.py), made once."""
    from catalogue import build_files

    mp = pytest.MonkeyPatch()
    mp.setenv("XLSTEER_QUIET", "1")
    mp.setenv("XLSTEER_CACHE_DIR", str(tmp_path_factory.mktemp("catalogue_cache")))
    try:  # the settings hold while the files are made, not for the session
        files = build_files(tmp_path_factory.mktemp("catalogue"))
    finally:
        mp.undo()
    return files
