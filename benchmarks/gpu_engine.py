"""The engine-level measurements of ``gpu_check.py``: compiled decoding and the scoring strategy.

Decode cells run xlsteer's own generation path (``Engine`` batches; eager, or compiled: a static
KV cache reused across calls and a compiled decode step with steering inside the graph), so
they measure what ``xlsteer generate --compile`` and generation tasks run. The time of every
decode step is stamped when its tokens reach the host (the loop copies them there anyway), so
timing adds no synchronisation. Scoring cells time the engine with the automatic strategy
choice against each strategy forced and against one full forward per pair (lm-eval ``hf``).

Imports are limited to torch, transformers and xlsteer's engine modules (as ``gpu_parts.py``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from xlsteer.hooks import steer


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _dynamo_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process, from dynamo's own counters."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0)), int(sum(counters["graph_break"].values()))


@dataclass(frozen=True)
class EngineDecode:
    batch: int
    new_tokens: int
    repeats: int
    compile: bool | str  # the Engine's compile setting (False: eager)


def engine_decode_cell(lm: Any, ivs: dict[str, Any], prompt: torch.Tensor, setup: EngineDecode, device: str,
                       lang: str = "de") -> list[dict[str, Any]]:
    """Per mode (unsteered and each intervention): tokens/s and median ms per decode step of the
    engine's batches, interleaved repeats with a rotating order; graphs and breaks each mode added."""
    from xlsteer.evaluation.engine import Engine

    if not hasattr(lm.tokenizer, "decode"):  # config-only models: token ids only, no text to decode
        lm.tokenizer.decode = lambda ids, **kw: ""
    engine = Engine(lm, batch_size=setup.batch, max_length=4096, compile=setup.compile)
    engine.eos_id = None  # every row decodes exactly new_tokens tokens
    enc = [row.tolist() for row in prompt[: setup.batch].cpu()]

    def run(iv: Any) -> Callable[[], tuple[float, float | None]]:
        def go() -> tuple[float, float | None]:
            engine.step_stamps = []
            _sync(device)
            t0 = time.perf_counter()
            with steer(lm.model, [] if iv is None else iv, langs=lang, anchor="en") as session, torch.inference_mode():
                engine._gen_batch(session, enc, [lang] * len(enc), setup.new_tokens, [])
            _sync(device)
            s = engine.step_stamps
            step = 1000 * statistics.median(b - a for a, b in zip(s, s[1:])) if len(s) > 2 else None
            return setup.batch * setup.new_tokens / (time.perf_counter() - t0), step
        return go

    runs = {"unsteered": run(None), **{m: run(iv) for m, iv in ivs.items()}}
    warm: dict[str, dict[str, Any]] = {}
    for mode, fn in runs.items():  # compilation and CUDA-graph recording happen here
        g0, b0 = _dynamo_counts()
        t0 = time.perf_counter()
        for _ in range(3 if setup.compile else 1):
            fn()
        g1, b1 = _dynamo_counts()
        warm[mode] = {"warmup_s": round(time.perf_counter() - t0, 2), "graphs": g1 - g0, "graph_breaks": b1 - b0}
    tps: dict[str, list[float]] = {m: [] for m in runs}
    steps: dict[str, list[float]] = {m: [] for m in runs}
    modes = list(runs)
    for r in range(setup.repeats):
        for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
            t, ms = runs[mode]()
            tps[mode].append(t)
            if ms is not None:
                steps[mode].append(ms)
    engine.step_stamps = None
    return [_row(setup, mode, tps, steps, warm[mode]) for mode in modes]


def _row(setup: EngineDecode, mode: str, tps: dict[str, list[float]], steps: dict[str, list[float]],
         warm: dict[str, Any]) -> dict[str, Any]:
    ratios = [a / b for a, b in zip(tps[mode], tps["unsteered"])]
    row: dict[str, Any] = {"batch": setup.batch, "fast_path": bool(setup.compile), "path": "engine", "mode": mode,
                           "tok_s": round(statistics.median(tps[mode]), 2), "tok_s_all": [round(x, 2) for x in tps[mode]],
                           "ratio": round(statistics.median(ratios), 4),
                           "ratio_range": [round(min(ratios), 4), round(max(ratios), 4)], **warm,
                           "peak_extra_mb": None}
    if steps[mode] and len(steps[mode]) == len(steps["unsteered"]):
        step_ratios = [b / a for a, b in zip(steps[mode], steps["unsteered"])]  # as a speed ratio
        row.update(step_ms=round(statistics.median(steps[mode]), 3), step_ms_all=[round(x, 3) for x in steps[mode]],
                   step_ratio=round(statistics.median(step_ratios), 4),
                   step_ratio_range=[round(min(step_ratios), 4), round(max(step_ratios), 4)])
    return row


# ---------------------------------------------------------------------------------------------
# scoring: the automatic strategy choice against each strategy and the full-forward baseline


def scoring_strategy_cell(lm: Any, reqs: list[tuple[list[int], list[list[int]]]], batch: int, repeats: int,
                          device: str) -> dict[str, Any]:
    """Items/s of the engine (auto, shared prefix, full forward) and of the lm-eval-style baseline.

    Best of ``repeats`` interleaved timings per variant; ``auto_vs_best`` is auto's items/s over
    the faster forced strategy's (>= 1 minus noise is the target), ``choice`` what auto chose.
    """
    import gpu_parts as gp
    from xlsteer.evaluation.engine import Engine

    engines = {name: Engine(lm, batch_size=batch, max_length=4096, scoring=name)
               for name in ("auto", "shared_prefix", "full_forward")}
    runs = {name: (lambda e=e: gp.engine_scores(e, reqs, batch)) for name, e in engines.items()}
    runs["full_forward_baseline"] = lambda: gp.full_forward_scores(lm.model, reqs, 2 * batch, device)
    got = {k: fn() for k, fn in runs.items()}  # warm-up (and auto's one-off cost measurement)
    engines["auto"].scored_by.clear()  # count the batches of one pass
    rate: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            runs[k]()
            _sync(device)
            rate[k].append(len(reqs) / (time.perf_counter() - t0))
    best = {k: max(v) for k, v in rate.items()}
    choice = {k: v // repeats for k, v in engines["auto"].scored_by.items()}  # items per pass
    diff = max(abs(a - b) for a, b in zip(got["shared_prefix"], got["full_forward"]))
    return {"items": len(reqs), "engine_batch": batch, "items_s": {k: round(v, 1) for k, v in best.items()},
            "choice": choice, "cost_model": engines["auto"]._forward_cost().describe(),
            "auto_vs_best": round(best["auto"] / max(best["shared_prefix"], best["full_forward"]), 3),
            "auto_vs_baseline": round(best["auto"] / best["full_forward_baseline"], 3),
            "strategies_max_abs_logprob_diff": round(diff, 5)}
