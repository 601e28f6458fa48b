"""The positive control: an output-language intervention must change what the model writes."""

from __future__ import annotations

import json

import pytest

from xlsteer.evaluation.control import ControlConfig, format_control, run_control
from xlsteer.testing import tiny_model

ROW_KEYS = {"prompt_lang", "target_lang", "n", "unsteered_share", "steered_share", "unsteered_ci", "steered_ci",
            "diff", "diff_ci", "p", "test"}
TOP_KEYS = {"format", "version", "model", "method", "layer", "alpha", "n_new_tokens", "rows", "provenance"}


def check_shape(rec: dict) -> None:
    """The exact shape the report renders (control.json)."""
    assert set(rec) == TOP_KEYS and rec["format"] == "xlsteer.control" and rec["version"] == 1
    assert isinstance(rec["layer"], int) and isinstance(rec["alpha"], float) and isinstance(rec["n_new_tokens"], int)
    for row in rec["rows"]:
        assert set(row) == ROW_KEYS and row["test"] == "mcnemar"
        for key in ("unsteered_ci", "steered_ci", "diff_ci"):
            assert len(row[key]) == 2 and row[key][0] <= row[key][1]
        assert 0.0 <= row["p"] <= 1.0
        assert row["diff"] == pytest.approx(row["steered_share"] - row["unsteered_share"])
    json.dumps(rec)  # JSON-ready


def test_control_record_shape_and_directions_on_a_tiny_model():
    lm = tiny_model("llama", vocab_size=256)
    cfg = ControlConfig(target_langs=("de",), n_prompts=4, n_new_tokens=3, fit_limit=4, n_boot=50, layer=1)
    rec = run_control(lm, cfg)
    check_shape(rec)
    assert [(r["prompt_lang"], r["target_lang"]) for r in rec["rows"]] == [("en", "de"), ("de", "en")]
    assert all(r["n"] == 4 for r in rec["rows"]) and rec["layer"] == 1
    assert rec["provenance"]["config"]["n_prompts"] == 4
    assert "en prompts -> de" in format_control(rec)


@pytest.mark.slow
def test_a_language_vector_changes_the_output_language_of_gemma():
    """Large and significant on the shipped model, or the hooks do nothing (measured: see docs/results.md)."""
    from xlsteer.models.loading import load_model

    lm = load_model("gemma3-270m")
    rec = run_control(lm, ControlConfig(target_langs=("de",), n_prompts=16, n_new_tokens=16))
    check_shape(rec)
    to_de, to_en = rec["rows"]
    print(format_control(rec))
    assert to_de["unsteered_share"] <= 0.1 and to_de["steered_share"] >= 0.7
    assert to_de["p"] < 0.001 and to_de["diff_ci"][0] > 0.4
    assert to_en["diff"] > 0
