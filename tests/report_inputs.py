"""Real result files of every kind, made on the tiny random models (seconds), for the schema and
report tests: an unsteered and a steered eval, the paired file, a sweep, an xlsteer compare
directory, analysis files, and a positive-control file of the demo's shape."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from xlsteer.analysis.run import AnalysisInputs, analyze
from xlsteer.baselines.compare import compare_methods, write_compare
from xlsteer.evaluation.pairing import compare_runs
from xlsteer.evaluation.runner import run_task, write_results
from xlsteer.evaluation.sweep import sweep
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.io import atomic_write_json
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model

LANGS = ["en", "sw", "zh"]
TEXTS = {"en": ["the red house", "a dog runs fast", "water is cold", "we eat bread"],
         "sw": ["nyumba nyekundu", "mbwa anakimbia haraka", "maji ni baridi", "tunakula mkate"],
         "zh": ["红色的房子", "狗跑得快", "水很冷", "我们吃面包"]}


def control_doc() -> dict:
    """A positive-control file exactly as the demo writes it (control.json)."""
    rows = [{"prompt_lang": lang, "target_lang": "en", "n": 20, "unsteered_share": 0.10, "steered_share": 0.65,
             "unsteered_ci": [0.0, 0.25], "steered_ci": [0.45, 0.85], "diff": 0.55, "diff_ci": [0.3, 0.8],
             "p": p, "test": "mcnemar"} for lang, p in (("sw", 0.0004), ("zh", 0.002))]
    return {"format": "xlsteer.control", "version": 1, "model": "tiny-llama", "method": "diffmean", "layer": 1,
            "alpha": 4.0, "n_new_tokens": 8, "rows": rows, "provenance": {"versions": {"xlsteer": "0.1.0"}}}


def build(root: Path) -> dict[str, Path]:
    """Every kind of result file under ``root``; returns name -> path (directories for runs)."""
    lm = tiny_model("llama")
    g = torch.Generator().manual_seed(3)
    iv = SteeringVector(sites=[Site(1, "resid_post")], tensors={vector_key(1): torch.randn(2, lm.hidden_size,
                                                                                         generator=g)},
                        params={"normalize": "none"}, languages=["sw", "zh"], anchor="en", strength=4.0)
    kw = dict(split="dev", limit=6, n_boot=200)
    demo = root / "demo"
    demo.mkdir()
    base = run_task(lm, "xcopa", LANGS, **kw)
    steered = run_task(lm, "xcopa", LANGS, interventions=iv, **kw)
    write_results(demo / "eval_zero-shot.json", {**base, "method": "zero-shot"})
    write_results(demo / "eval_diffmean.json", {**steered, "method": "diffmean"})
    write_results(demo / "compare_diffmean.json", {**compare_runs(base, steered), "method": "diffmean"})
    write_results(demo / "sweep_diffmean.json", sweep(lm, "xcopa", LANGS, intervention=iv, alphas=[1.0, 4.0],
                                                      split="dev", limit=4, n_boot=100))
    atomic_write_json(demo / "control.json", control_doc())
    analyze(lm, demo, TEXTS, [0, 1], {"diffmean": iv}, projections=("pca",),
            inputs=AnalysisInputs(eval_results=[demo / "eval_zero-shot.json", demo / "eval_diffmean.json"],
                                  meta={"corpus": "test", "data_hash": "abc123"}))
    eval_file = root / "steered_eval.json"
    write_results(eval_file, {**steered, "baseline": base, "comparison": compare_runs(base, steered)})
    cmp_dir = root / "compare"
    rec = compare_methods(lm, "xcopa", LANGS, ["icl-en", "translate-gmt"], limit=3, max_length=512, n_boot=100,
                          translation_cache=False, out_dir=cmp_dir)
    write_compare(cmp_dir, rec)
    return {"demo": demo, "eval_file": eval_file, "compare": cmp_dir}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
