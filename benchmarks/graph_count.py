"""Graph accounting of a steered, torch.compile'd decode step, per steering method (CPU, seconds).

For every built-in method (DiffMean, learned, CLAS, LAPE, Int_mu, INCLINE, and any other
registered method that fits from a parallel corpus), fitted on synthetic parallel text with a
tiny random Llama (4 layers), this compiles the model's forward with a graph-counting dynamo
backend (no code generation: ``--backend eager``) and runs decode steps with a static KV cache
(batch 4, mixed anchor/target rows):

1. three steps at alpha 1 (the first compiles);
2. three steps after the intervention's strength changed (a new ``steer`` block, alpha 0.5);
3. three steps after the rows' languages changed (``session.set_langs``).

It prints per method: graphs compiled, graph breaks and recompiles after the first step (dynamo's
own counters), and whether ``fullgraph=True`` compiles the step at all. The target is 1 graph,
0 breaks, 0 recompiles for every method.

    python benchmarks/graph_count.py                 # all methods
    python benchmarks/graph_count.py --methods diffmean,clas --json graphs.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("XLSTEER_QUIET", "1")

ALPHABETS = {"en": "abcdefghijklm ", "de": "nopqrstuvwxyz ", "sw": "ABCDEFGHIJKLMNOP "}
FIT_PARAMS: dict[str, dict[str, Any]] = {"incline": {"ridge": 0.1}, "learned": {"steps": 2, "eval_every": 1}}


def parallel_texts(n: int = 16, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    lengths = [rng.randint(6, 18) for _ in range(n)]
    return {lang: ["".join(rng.choice(a) for _ in range(k)) for k in lengths] for lang, a in ALPHABETS.items()}


def fitted(lm: Any, methods: list[str]) -> dict[str, Any]:
    from xlsteer.interventions.fit import fit

    texts = parallel_texts()
    out = {}
    for m in methods:
        out[m] = fit(m, lm, texts, ["en", "de", "sw"], anchor="en", **FIT_PARAMS.get(m, {}))
    return out


class Counter:
    """A dynamo backend that counts the graphs handed to it and runs them as traced (no codegen)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: Any, example_inputs: Any) -> Any:
        self.graphs += 1
        return gm.forward


def decode_steps(lm: Any, iv: Any, fullgraph: bool, steps: int = 3) -> dict[str, Any]:
    """Steps at alpha 1, then at alpha 0.5 (new steer block), then with other row languages."""
    import torch
    from torch._dynamo.utils import counters
    from transformers import StaticCache

    from xlsteer.hooks import steer

    model = lm.model
    torch._dynamo.reset()
    counters.clear()
    backend = Counter()
    compiled = torch.compile(model.forward, backend=backend, fullgraph=fullgraph)
    batch, prompt, total = 4, 6, 6 + 3 * steps + 1
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, int(model.config.vocab_size), (batch, prompt), generator=g)
    mask = torch.ones(batch, total, dtype=torch.long)
    cache = StaticCache(config=model.config, max_cache_len=total)
    langs_a, langs_b = ["de", "en", "sw", "de"], ["sw", "de", "en", "en"]
    after_first: list[int] = []
    pos = prompt

    def step(tok: torch.Tensor) -> torch.Tensor:
        nonlocal pos
        cp = torch.tensor([pos])
        model.forward = compiled  # the root hook (if any) runs eagerly in __call__, the forward compiled
        try:
            out = model(input_ids=tok, attention_mask=mask, past_key_values=cache, cache_position=cp,
                        position_ids=cp.expand(batch, 1), use_cache=True)
        finally:
            del model.forward
        pos += 1
        if not after_first:
            after_first.append(backend.graphs)
        return out.logits[:, -1:].argmax(-1)

    with torch.inference_mode():
        with steer(model, iv, langs=langs_a, anchor="en"):
            out = model(input_ids=ids, attention_mask=mask[:, :prompt], past_key_values=cache,
                        cache_position=torch.arange(prompt), use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            for _ in range(steps):
                tok = step(tok)
        with steer(model, iv.with_strength(0.5), langs=langs_a, anchor="en") as session:
            for _ in range(steps):
                tok = step(tok)
            session.set_langs(langs_b)
            for _ in range(steps):
                tok = step(tok)
    breaks = sum(counters["graph_break"].values())
    return {"graphs": backend.graphs, "graphs_first_step": after_first[0], "graph_breaks": breaks,
            "recompiles": backend.graphs - after_first[0],
            "break_reasons": sorted({str(k)[:120] for k in counters["graph_break"]})[:3]}


def main(argv: list[str] | None = None) -> int:
    import torch

    from xlsteer.interventions.registry import method_names
    from xlsteer.testing import tiny_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    methods = args.methods.split(",") if args.methods else list(method_names())
    lm = tiny_model("llama", layers=4)
    t0 = time.perf_counter()
    ivs = fitted(lm, methods)
    rows = {}
    print(f"{'method':<10} {'sites':>5} {'graphs':>6} {'breaks':>6} {'recompiles':>10} {'fullgraph':>9}")
    for m, iv in ivs.items():
        row = decode_steps(lm, iv, fullgraph=False)
        try:
            decode_steps(lm, iv, fullgraph=True)
            row["fullgraph"] = "ok"
        except Exception as e:  # noqa: BLE001 - reported, not raised: this is the measurement
            row["fullgraph"] = f"fails: {type(e).__name__}"
        row["sites"] = len(iv.sites)
        rows[m] = row
        print(f"{m:<10} {row['sites']:>5} {row['graphs']:>6} {row['graph_breaks']:>6} {row['recompiles']:>10} "
              f"{row['fullgraph'][:9]:>9}", flush=True)
    print(f"(tiny Llama, 4 layers, batch 4, static cache; 9 decode steps per method; {time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"torch": torch.__version__, "methods": rows}, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
