"""The report in a real browser (headless Debian chromium): the summary table is in the first
screenful, and a compare directory's full table renders."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from report_inputs import build
from xlsteer.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; CI lists it in .ci/apt-packages.txt)"
)
MAGENTA = np.array([255, 0, 255])
WIDTH, SCREEN = 1280, 800  # a laptop's first screenful


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return build(tmp_path_factory.mktemp("browser"))


def _screenshot(page, tmp_path, height: int, outline: str):
    """Chromium's screenshot of ``page`` with the element ``outline`` (a CSS id) drawn in magenta."""
    from PIL import Image

    marked = tmp_path / f"marked_{page.name}"
    marked.write_text(page.read_text(encoding="utf-8").replace(
        "</style>", f"#{outline}{{outline:6px solid #ff00ff;outline-offset:2px}}</style>", 1), encoding="utf-8")
    shot = tmp_path / f"{outline}.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", f"--window-size={WIDTH},{height}", "--hide-scrollbars", marked.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def _magenta_rows(img) -> np.ndarray:
    hit = (np.abs(img - MAGENTA).sum(axis=2) < 60)
    return np.nonzero(hit.sum(axis=1) > 40)[0]  # rows where the outline runs horizontally


def test_summary_table_is_in_the_first_screenful(made, tmp_path):
    img = _screenshot(build_report(made["demo"]), tmp_path, SCREEN, "summary-table")
    assert img.shape[:2] == (SCREEN, WIDTH)
    rows = _magenta_rows(img)
    assert rows.size >= 2, "the summary table is not in the first screenful"
    assert rows.max() - rows.min() > 60, "the summary table's top and bottom edges are not both on screen"
    header = img[:60].reshape(-1, 3).mean(0)
    assert header[2] > header[0] + 30, "the dark blue page header is missing: CSS was not applied"
    colours = len(np.unique(img.reshape(-1, 3) // 8, axis=0))
    assert colours > 20, "the first screenful did not render text"


def test_compare_directory_shows_its_full_table(made, tmp_path):
    page = build_report(made["compare"])
    top = _screenshot(page, tmp_path, SCREEN, "summary-table")
    assert _magenta_rows(top).size >= 2, "the summary table of a compare directory is not in the first screenful"
    full = _screenshot(page, tmp_path, 3000, "compare-table")
    rows = _magenta_rows(full)
    assert rows.size >= 2 and rows.max() - rows.min() > 60, "the compare table did not render"
