"""Decoding through xlsteer's engine, eager or compiled, unsteered vs steered: ms per step and ratios.

The same cells as ``gpu_check.py``'s compiled section (``gpu_engine.engine_decode_cell``), for
any device and model: the shipped Gemma-3-270M on a CPU (interventions fitted on 20 NTREX lines,
as ``steer_overhead.py`` does) or a config-only model on a GPU. One process measures every mode
of a cell in interleaved repeats with a rotating order, so drift on a shared machine hits all
alike; ratios are per repeat, then the median (with [min, max]).

    python benchmarks/engine_decode.py --batch-sizes 1,8 --new-tokens 32 --repeats 5 --threads 1
    python benchmarks/engine_decode.py --compile inductor --batch-sizes 1 --threads 1   # CPU inductor
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("XLSTEER_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    import torch

    import gpu_engine as ge
    import steer_overhead as so

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--config-only", default=None, help="llama3-8b or qwen2.5-7b: random weights from the real config")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--compile", default="false", help="false, true (inductor), inductor, aot_eager or eager")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = {"false": False, "true": True}.get(args.compile, args.compile)
    t0 = time.perf_counter()
    ns = argparse.Namespace(config_only=args.config_only, device=args.device, dtype=args.dtype, num_layers=None,
                            allow_cpu=False, model=args.model)
    lm = so.load(ns)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    vocab = int(lm.model.config.vocab_size)
    prompt = torch.randint(10, min(vocab, 32000), (max(sizes), args.prompt_tokens),
                           generator=torch.Generator().manual_seed(0)).to(args.device)
    ivs = so.random_interventions(lm, prompt[:1], ["de"]) if args.config_only else so.fitted_interventions(lm, ["de"])
    how = ivs.pop("_how")
    print(f"{lm.name}; {how}; compile={setting}; loaded and fitted in {time.perf_counter() - t0:.0f} s", flush=True)
    out = {"model": lm.name, "interventions": how, "compile": setting, "threads": torch.get_num_threads(), "cells": []}
    print(f"{'batch':>5} {'mode':<10} {'tok/s':>8} {'ms/step':>8} {'step ratio':>11} {'[min, max]':>16} "
          f"{'graphs':>6} {'breaks':>6} {'warm-up s':>9}")
    for bs in sizes:
        setup = ge.EngineDecode(bs, args.new_tokens, args.repeats, compile=setting)
        rows = ge.engine_decode_cell(lm, ivs, prompt, setup, args.device)
        out["cells"] += rows
        for r in rows:
            rng = r.get("step_ratio_range", [1.0, 1.0])
            print(f"{bs:>5} {r['mode']:<10} {r['tok_s']:>8.1f} {r.get('step_ms', 0):>8.2f} "
                  f"{r.get('step_ratio', 1.0):>11.3f} [{rng[0]:.3f}, {rng[1]:.3f}] {r['graphs']:>6} "
                  f"{r['graph_breaks']:>6} {r['warmup_s']:>9}", flush=True)
    print(f"measured in {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
