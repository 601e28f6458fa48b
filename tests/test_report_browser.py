"""The report renders in a real browser (headless Debian chromium): a screenshot that is not blank."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from xlsteer.analysis.neuron_map import neuron_map
from xlsteer.analysis.projection import project
from xlsteer.analysis.similarity import similarity_from_items
from xlsteer.report.html import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; CI lists it in .ci/apt-packages.txt)"
)


def _run_dir(root):
    """A run directory from synthetic results only (no model), so the page has tables and redrawn figures."""
    rng = np.random.default_rng(0)
    langs = ["en", "de", "sw"]
    before = {layer: {lang: rng.normal(size=(12, 16)) + (i * layer) for i, lang in enumerate(langs)}
              for layer in range(4)}
    after = {layer: {lang: v * 0.5 if lang != "en" else v for lang, v in per.items()} for layer, per in before.items()}
    sim = similarity_from_items(before, after, "en")
    docs = {
        "eval.json": {"kind": "eval", "task": "xcopa", "metric": "accuracy", "split": "test", "baseline": "none",
                      "methods": {"none": {lang: {"mean": 0.55, "ci_low": 0.5, "ci_high": 0.6} for lang in langs},
                                  "diffmean": {lang: {"mean": 0.57, "ci_low": 0.52, "ci_high": 0.62,
                                                      "comparison": {"diff": 0.02, "p": 0.3}} for lang in langs[1:]}}},
        "analysis_similarity.json": {"kind": "analysis", "analysis": "similarity", "intervention": "diffmean", **sim},
        "analysis_projection.json": {"kind": "analysis", "analysis": "projection", "projections": [
            {**project(before[3], after[3], "pca", layer=3), "intervention": "diffmean"}]},
        "analysis_neuron_map.json": {"kind": "analysis", "analysis": "neuron_map", **neuron_map(
            {layer: {"dead": 10, "specific": 20 + layer, "partial": 30, "all": 40 - layer} for layer in range(4)},
            {"de": {0: 3, 1: 5}, "sw": {0: 1, 1: 8}}, bridge_layers=[1, 2])},
    }
    for name, doc in docs.items():
        (root / name).write_text(json.dumps(doc, default=lambda o: o.tolist()))
    return root


def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    page = build_report(_run_dir(tmp_path))
    shot = tmp_path / "screenshot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2000, 1200)
    non_white = float((img.min(axis=2) < 245).mean())
    colours = len(np.unique(img.reshape(-1, 3) // 8, axis=0))  # coarse bins: antialiasing noise does not count
    assert non_white > 0.05, f"screenshot is nearly blank ({non_white:.1%} non-white pixels)"
    assert colours > 50, f"screenshot has only {colours} colours: the page did not render text and figures"
    header = img[:60].reshape(-1, 3).mean(0)
    assert header[2] > header[0] + 30, "the dark blue page header is missing: CSS was not applied"
