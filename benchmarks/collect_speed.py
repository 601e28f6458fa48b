"""Statistics collection throughput vs. a plain forward pass, and peak memory vs. item count.

Prints, measured in this run on the shipped Gemma-3-270M:
- texts/s of a plain forward over the same batches (logits at the last position only, as collect does)
- texts/s of `collect` (all layers, resid_post + mlp_act, token and item statistics)
- their ratio (target >= 0.9)
- peak RSS of collect for 200 vs ~2000 texts in fresh subprocesses (must not scale with items)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("XLSTEER_QUIET", "1")


def _texts(n: int) -> list[str]:
    from xlsteer.data.corpora import load_ntrex
    from xlsteer.data.paths import data_dir

    corpus = load_ntrex(data_dir(), ["en"], split="all")
    lines = corpus.texts["en"]
    return [lines[i % len(lines)] for i in range(n)]


def _memory_child(n: int) -> None:
    import torch

    from xlsteer.models.loading import load_model
    from xlsteer.models.sites import Site
    from xlsteer.stats import collect

    torch.set_num_threads(2)
    lm = load_model("gemma3-270m")
    texts = _texts(n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sites = [Site(layer, "resid_post") for layer in range(lm.num_layers)]
    collect(lm, {"en": texts}, sites, batch_size=16, max_length=24)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "peak_rss_mb": peak / 1024, "after_load_rss_mb": base / 1024}))


def main() -> None:
    import torch

    from xlsteer.models.loading import load_model
    from xlsteer.models.sites import Site
    from xlsteer.stats import collect, positions_from_mask

    torch.set_num_threads(2)
    lm = load_model("gemma3-270m")
    texts = _texts(160)
    batch, max_len = 8, 64
    sites = [Site(layer, name) for layer in range(lm.num_layers) for name in ("resid_post", "mlp_act")]

    def plain() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(texts), batch):
                enc = lm.tokenizer(texts[i : i + batch], return_tensors="pt", padding=True, truncation=True,
                                   max_length=max_len)
                lm.model(**enc, position_ids=positions_from_mask(enc["attention_mask"]), logits_to_keep=1)
        return len(texts) / (time.perf_counter() - t0)

    def collected() -> float:
        t0 = time.perf_counter()
        collect(lm, {"en": texts}, sites, batch_size=batch, max_length=max_len)
        return len(texts) / (time.perf_counter() - t0)

    plain()  # warm-up
    rates_plain, rates_collect = [], []
    for _ in range(3):  # interleaved, so drift on a shared machine hits both alike
        rates_plain.append(plain())
        rates_collect.append(collected())
    p, c = max(rates_plain), max(rates_collect)
    print(f"plain forward : {p:7.2f} texts/s (best of 3; batch {batch}, <= {max_len} tokens)")
    print(f"collect       : {c:7.2f} texts/s ({len(sites)} sites: resid_post + mlp_act at all {lm.num_layers} layers)")
    print(f"ratio collect/plain = {c / p:.3f} (target >= 0.9)")

    for n in (200, 2000):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], capture_output=True, text=True,
                             check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"peak RSS collecting {n:5d} texts: {row['peak_rss_mb']:8.1f} MB "
              f"(after model load {row['after_load_rss_mb']:.1f} MB)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        _memory_child(int(sys.argv[2]))
    else:
        main()
