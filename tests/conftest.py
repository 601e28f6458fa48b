"""Shared test setup: everything runs offline, on tiny random models unless marked slow."""

from __future__ import annotations

import os

# Tests never reach the network; a hub id must fail fast instead of hanging on a download.
os.environ["HF_HUB_OFFLINE"] = "1"
# No progress bars in test output (tests that check bars set it back themselves).
os.environ.setdefault("XLSTEER_QUIET", "1")
