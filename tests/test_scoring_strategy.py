"""Scoring chooses its strategy per batch from a cost model of the device, and records it.

Both strategies give the same scores (tests/test_engine.py checks each against scoring every
sequence alone, fp32 atol 1e-4); here: the choice (fewer tokens on a CPU; one forward where a
forward's time is flat in its tokens, the shared prefix where it grows), the measured cost
model (taken once, kept in the cache folder, reused), and the results file saying which
strategy scored how many requests, the same whether scores were computed or read back.
"""

from __future__ import annotations

import pytest
import torch

from xlsteer.evaluation import scoring_strategy as S
from xlsteer.evaluation.config import EvalConfig
from xlsteer.evaluation.engine import Engine
from xlsteer.evaluation.runner import run_task as evaluate
from xlsteer.testing import tiny_model


def _batch(items: int, choices: int, ctx: int = 15, cont: int = 10):
    """XCOPA-shaped requests: a context and ``choices`` continuations (token lists)."""
    return [([5] * ctx, [[6] * cont for _ in range(choices)]) for _ in range(items)]


def test_fewer_tokens_win_on_a_cpu_and_ties_go_to_one_forward():
    cpu = S.ForwardCost()  # proportional to tokens
    assert S.batch_tokens(_batch(8, 2)) == {"shared_prefix": [8 * 15, 16 * 9], "full_forward": [16 * 24]}
    assert S.choose(_batch(8, 2), cpu) == "shared_prefix"  # 264 tokens against 384
    assert S.choose(_batch(8, 1), cpu) == "full_forward"  # the same tokens in one forward instead of two
    assert S.choose([([5] * 3, [[6]])], cpu) == "full_forward"  # a one-token continuation: no second forward


def test_a_flat_cost_picks_one_forward_until_the_forward_grows_with_its_tokens():
    """A GPU reads every weight once per forward: flat up to ~1k tokens here, then compute-bound."""
    gpu = S.ForwardCost(((32, 0.010), (128, 0.010), (512, 0.0105), (2048, 0.030), (8192, 0.120)))
    assert S.choose(_batch(8, 2), gpu) == "full_forward"  # two flat forwards cost twice one
    assert S.choose(_batch(256, 2), gpu) == "shared_prefix"  # 10k tokens against 12k, all compute-bound
    assert gpu(16) == 0.010 and gpu(16384) == pytest.approx(0.240)  # floor below, proportional beyond


def test_measured_cost_grows_with_tokens_and_stops_early():
    lm = tiny_model("llama")
    cost = S.measure(lm.model, torch.device("cpu"), budget_s=0.2)
    tokens = [n for n, _ in cost.points]
    assert tokens[0] == S.PROBE_WIDTH and tokens == sorted(tokens) and tokens[-1] <= S.MAX_PROBE_TOKENS
    assert all(t > 0 for _, t in cost.points)
    assert "ms_by_tokens" in cost.describe()


def test_an_accelerator_is_measured_once_and_the_measurement_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("XLSTEER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(S, "_MEASURED", {})
    calls = []
    monkeypatch.setattr(S, "measure", lambda model, device: calls.append(device) or S.ForwardCost(((32, 1.0),)))
    lm = tiny_model("llama")
    device = torch.device("xpu")  # any non-CPU device type; nothing runs on it here
    assert S.forward_cost(lm.model, lm.fingerprint, torch.device("cpu")) == S.ForwardCost()  # no measurement
    first = S.forward_cost(lm.model, lm.fingerprint, device)
    assert S.forward_cost(lm.model, lm.fingerprint, device) == first and len(calls) == 1
    monkeypatch.setattr(S, "_MEASURED", {})  # a new process: read back from the cache folder
    assert S.forward_cost(lm.model, lm.fingerprint, device) == first and len(calls) == 1
    assert len(list((tmp_path / "calibration").glob("forward-*.json"))) == 1


def test_engine_choice_follows_the_cost_model_per_batch():
    lm = tiny_model("llama")
    reqs = [("hallo welt wie", [" geht", " es"])] * 3 + [("ein hund", [" bellt"])] * 3
    engine = Engine(lm, batch_size=3)
    engine.loglikelihood(reqs, ["de"] * 3 + ["sw"] * 3)
    assert engine.scored_by == {"shared_prefix": 3, "full_forward": 3}
    engine._cost = S.ForwardCost(((32, 1.0), (8192, 1.0)))  # flat: one forward always wins
    engine.loglikelihood(reqs, ["de"] * 3 + ["sw"] * 3)
    assert engine.scored_by == {"shared_prefix": 3, "full_forward": 9}
    with pytest.raises(Exception, match="scoring must be"):
        Engine(lm, scoring="fastest")


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def test_results_record_the_strategy_computed_or_read_back(lm, tmp_path):
    cfg = EvalConfig(split="dev", limit=4, n_boot=50, cache_dir=tmp_path / "cache")
    fresh = evaluate(lm, "xcopa", ["en", "sw"], cfg=cfg)
    assert fresh["engine"]["scoring"] == {"strategy": "auto", "requests": {"shared_prefix": 8}}
    again = evaluate(lm, "xcopa", ["en", "sw"], cfg=cfg)  # every score from the cache
    assert again["engine"] == fresh["engine"]
    full = evaluate(lm, "xcopa", ["en", "sw"], cfg=cfg.replace(scoring="full_forward", cache_dir=None))
    assert full["engine"]["scoring"] == {"strategy": "full_forward", "requests": {"full_forward": 8}}
    for a, b in zip(fresh["items"], full["items"]):  # the strategy is not part of the cache key: same scores
        assert a["id"] == b["id"] and a["correct"] == b["correct"]
    with pytest.raises(Exception, match="scoring must be"):
        cfg.replace(scoring="fastest")
