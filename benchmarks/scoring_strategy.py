"""The scoring strategy per batch size: the engine's automatic choice vs each strategy forced.

Items/s on XCOPA-shaped synthetic requests (a 10-20 token context, two 6-14 token
continuations) for each engine batch size: ``auto`` (what the engine chooses on this device),
``shared_prefix`` and ``full_forward`` forced, and one right-padded full forward per (context,
continuation) pair as lm-evaluation-harness's ``hf`` model does. Best of ``--repeats``
interleaved timings (rotating order). The same cells as ``gpu_check.py``'s scoring section.

    python benchmarks/scoring_strategy.py --batch-sizes 8,32 --items 64 --repeats 3 --threads 1
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
    import gpu_parts as gp
    from xlsteer.models.loading import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", default="8,32")
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    reqs = gp.xcopa_like_requests(int(lm.model.config.vocab_size), args.items)
    out = {"model": lm.name, "device": args.device, "threads": torch.get_num_threads(), "cells": []}
    print(f"{lm.name}, {args.device}, {torch.get_num_threads()} thread(s), {len(reqs)} XCOPA-shaped items")
    print(f"{'batch':>5} {'auto':>8} {'shared':>8} {'full':>8} {'baseline':>9}  items/s; auto chose; auto/best; max |diff|")
    for bs in (int(x) for x in args.batch_sizes.split(",")):
        cell = ge.scoring_strategy_cell(lm, reqs, bs, args.repeats, args.device)
        out["cells"].append(cell)
        r = cell["items_s"]
        print(f"{bs:>5} {r['auto']:>8} {r['shared_prefix']:>8} {r['full_forward']:>8} {r['full_forward_baseline']:>9}  "
              f"{cell['choice']}; {cell['auto_vs_best']}x; {cell['strategies_max_abs_logprob_diff']}", flush=True)
    print(f"measured in {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
