"""The measurements of ``gpu_check.py``: bandwidth, correctness, decode speed and scoring speed.

Each function takes what it needs and returns a plain dict (JSON-ready); the orchestration, the
time budget and the printed table live in ``gpu_check.py``. Imports are limited to torch,
transformers and xlsteer's hook/engine modules, so this runs on a GPU image that has only
torch, transformers, accelerate, peft and numpy (checked by ``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from xlsteer.hooks import steer


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None


def held_mb(device: str) -> float | None:
    """Memory allocated now (weights of every model built so far, caches kept across calls)."""
    return round(torch.cuda.memory_allocated() / 2**20, 1) if device.startswith("cuda") else None


# ---------------------------------------------------------------------------------------------
# bandwidth and roofline


def copy_bandwidth(device: str, mib: int, repeats: int = 10) -> dict[str, Any]:
    """Device-to-device copy bandwidth (bytes read + written per second), median of ``repeats``."""
    n = mib * 2**20 // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 3):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    del src, dst
    med = statistics.median(times)
    return {"bytes_per_copy": 2 * n * 2, "median_s": med, "gb_per_s": round(2 * n * 2 / med / 1e9, 1),
            "how": f"copy_ of a {mib} MiB bf16 tensor, read + write bytes, median of {repeats} after 3 warm-ups"}


def decode_bytes(model: Any) -> int:
    """Bytes a batch-1 decode step must read: every weight except an untied input embedding."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight.data_ptr() == emb.data_ptr()
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total if tied else total - emb.numel() * emb.element_size()


# ---------------------------------------------------------------------------------------------
# correctness


def _greedy(model: Any, ids: torch.Tensor, mask: torch.Tensor, n: int, **kw: Any) -> torch.Tensor:
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, **kw)


def _recompute(model: Any, ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding without a cache: each step runs the whole sequence again."""
    for _ in range(n):
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


def tiny_correctness(lm: Any, iv: Any, device: str) -> dict[str, Any]:
    """fp32 tiny model: cached decoding = recomputation, static cache = dynamic cache (steered)."""
    enc = lm.tokenizer(["hallo welt, wie geht es dir heute", "ein hund", "die katze"],
                       return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    eos = lm.model.generation_config.eos_token_id
    lm.model.generation_config.eos_token_id = None  # exactly n tokens per row, as the recomputation
    try:
        with torch.inference_mode(), steer(lm.model, iv, langs="de"):
            cached = _greedy(lm.model, ids, mask, 12)
            static = _greedy(lm.model, ids, mask, 12, cache_implementation="static")
            recomputed = _recompute(lm.model, ids, mask, 12)
        with torch.inference_mode():
            plain = _greedy(lm.model, ids, mask, 12)
    finally:
        lm.model.generation_config.eos_token_id = eos
    return {"cached_equals_recompute": bool(torch.equal(cached, recomputed)),
            "static_equals_dynamic": bool(torch.equal(static, cached)),
            "tiny_steered_differs": not bool(torch.equal(plain, cached))}


def big_correctness(lm: Any, iv: Any, prompt: torch.Tensor, n: int = 16) -> dict[str, Any]:
    """bf16 on the real shapes: alpha 0 = unhooked, anchor rows untouched, steering changes output."""
    model = lm.model
    ids = prompt[:4]
    mask = torch.ones_like(ids)
    langs = ["de", "en", "de", "en"]
    with torch.inference_mode():
        plain = _greedy(model, ids, mask, n)
        plain_logits = model(input_ids=ids, attention_mask=mask).logits
        with steer(model, iv.with_strength(0.0), langs=langs):
            zero = _greedy(model, ids, mask, n)
        with steer(model, iv, langs=langs):
            mixed = _greedy(model, ids, mask, n)
            mixed_logits = model(input_ids=ids, attention_mask=mask).logits
    anchor, target = [1, 3], [0, 2]
    return {
        "alpha0_equals_unhooked": bool(torch.equal(zero, plain)),
        "anchor_rows_bit_identical_tokens": bool(torch.equal(mixed[anchor], plain[anchor])),
        "anchor_rows_bit_identical_logits": bool(torch.equal(mixed_logits[anchor], plain_logits[anchor])),
        "steered_rows_differ": not bool(torch.equal(mixed_logits[target], plain_logits[target])),
        "steered_rows_tokens_differ": not bool(torch.equal(mixed[target], plain[target])),
    }


# ---------------------------------------------------------------------------------------------
# decode speed


@dataclass(frozen=True)
class DecodeSetup:
    """An eager ``model.generate`` cell (compiled decoding is measured through the engine: gpu_engine.py)."""

    batch: int
    new_tokens: int
    repeats: int


class StepTimer:
    """A logits processor that time-stamps every decode step (after a device synchronisation).

    Why: tokens/s of a whole generate() call includes the prefill and per-call set-up; the
    per-step time between the first and the last step is the decode rate the roofline bounds.
    The synchronisation costs little: eager decoding is host-bound.
    """

    def __init__(self, device: str):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores

    def step_ms(self) -> float | None:
        """Median time between consecutive steps: a one-off cost inside the call (a CUDA-graph
        recording, a recompilation) does not move it; the whole-call tokens/s still shows it."""
        s = self.stamps
        return 1000 * statistics.median(b - a for a, b in zip(s, s[1:])) if len(s) > 1 else None


def _timed(fn: Callable[[], tuple[int, float | None]], device: str) -> tuple[float, float | None, float | None]:
    """(tokens/s of the whole call, ms per decode step, peak MB above what was held before)."""
    sync(device)
    reset_peak(device)
    held = held_mb(device)
    t0 = time.perf_counter()
    tokens, step_ms = fn()
    sync(device)
    peak = peak_mb(device)
    return tokens / (time.perf_counter() - t0), step_ms, None if peak is None else round(peak - held, 1)


def decode_cell(lm: Any, ivs: dict[str, Any], prompt: torch.Tensor, cfg: DecodeSetup, device: str,
                lang: str = "de") -> list[dict[str, Any]]:
    """Tokens/s of greedy generation per mode, interleaved repeats with a rotating mode order."""
    model = lm.model
    ids = prompt[: cfg.batch]
    mask = torch.ones_like(ids)
    kw: dict[str, Any] = dict(max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens, do_sample=False)

    def run(iv: Any) -> Callable[[], tuple[int, float | None]]:
        def go() -> tuple[int, float | None]:
            from transformers import LogitsProcessorList

            timer = StepTimer(device)
            with torch.inference_mode():
                if iv is None:
                    out = model.generate(input_ids=ids, attention_mask=mask, logits_processor=LogitsProcessorList([timer]), **kw)
                else:
                    with steer(model, iv, langs=lang):
                        out = model.generate(input_ids=ids, attention_mask=mask,
                                             logits_processor=LogitsProcessorList([timer]), **kw)
            return cfg.batch * (out.shape[1] - ids.shape[1]), timer.step_ms()
        return go

    runs = {"unsteered": run(None), **{m: run(iv) for m, iv in ivs.items()}}
    warm: dict[str, float] = {}
    for mode, fn in runs.items():  # warm-up
        t0 = time.perf_counter()
        fn()
        sync(device)
        warm[mode] = round(time.perf_counter() - t0, 2)
    tps: dict[str, list[float]] = {m: [] for m in runs}
    steps: dict[str, list[float]] = {m: [] for m in runs}
    mem: dict[str, list[float]] = {m: [] for m in runs}
    modes = list(runs)
    for r in range(cfg.repeats):
        for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
            t, ms, p = _timed(runs[mode], device)
            tps[mode].append(t)
            if ms is not None:
                steps[mode].append(ms)
            if p is not None:
                mem[mode].append(p)
    return [_row(cfg, mode, tps, steps, mem, warm) for mode in modes]


def _row(cfg: DecodeSetup, mode: str, tps: dict[str, list[float]], steps: dict[str, list[float]],
         mem: dict[str, list[float]], warm: dict[str, float]) -> dict[str, Any]:
    """One mode's cell: medians, paired ratios to unsteered (whole call and per decode step)."""
    ratios = [a / b for a, b in zip(tps[mode], tps["unsteered"])]
    step_ratios = [b / a for a, b in zip(steps[mode], steps["unsteered"])]  # as a speed ratio
    row = {"batch": cfg.batch, "fast_path": False, "mode": mode, "tok_s": round(statistics.median(tps[mode]), 2),
           "tok_s_all": [round(x, 2) for x in tps[mode]], "ratio": round(statistics.median(ratios), 4),
           "ratio_range": [round(min(ratios), 4), round(max(ratios), 4)], "warmup_s": warm[mode],
           "peak_extra_mb": max(mem[mode]) if mem[mode] else None}
    if steps[mode] and len(step_ratios) == len(steps[mode]):
        row.update(step_ms=round(statistics.median(steps[mode]), 3), step_ms_all=[round(x, 3) for x in steps[mode]],
                   step_ratio=round(statistics.median(step_ratios), 4),
                   step_ratio_range=[round(min(step_ratios), 4), round(max(step_ratios), 4)])
    return row


# ---------------------------------------------------------------------------------------------
# scoring speed: the engine vs a plain full forward (lm-evaluation-harness ``hf`` style)


def xcopa_like_requests(vocab: int, n: int, seed: int = 0) -> list[tuple[list[int], list[list[int]]]]:
    """Synthetic XCOPA-shaped requests: a 10-20 token context and two 6-14 token continuations."""
    g = torch.Generator().manual_seed(seed)
    hi = min(vocab, 32000)

    def seq(lo: int, up: int) -> list[int]:
        k = int(torch.randint(lo, up + 1, (1,), generator=g))
        return torch.randint(10, hi, (k,), generator=g).tolist()

    return [(seq(10, 20), [seq(6, 14), seq(6, 14)]) for _ in range(n)]


def engine_scores(engine: Any, reqs: list[tuple[list[int], list[list[int]]]], batch: int) -> list[float]:
    """Log-probabilities of every continuation through the engine's batch path (longest first), each
    batch scored by the strategy the engine chooses (counted in ``engine.scored_by``)."""
    order = sorted(range(len(reqs)), key=lambda i: -(len(reqs[i][0]) + max(map(len, reqs[i][1]))))
    out: dict[int, list[float]] = {}
    with steer(engine.model, [], anchor="en") as session, torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s: s + batch]
            how, res = engine._ll_any(session, [reqs[i] for i in idx], [["a", "b"]] * len(idx), ["de"] * len(idx))
            engine.scored_by[how] += len(idx)
            for i, r in zip(idx, res):
                out[i] = [c[0] for c in r]
    return [lp for i in range(len(reqs)) for lp in out[i]]


def full_forward_scores(model: Any, reqs: list[tuple[list[int], list[list[int]]]], batch: int,
                        device: str) -> list[float]:
    """lm-eval ``hf`` style: one right-padded forward per (context, continuation) pair, no cache,
    log-softmax over every position, gather the continuation's tokens."""
    pairs = [(ctx, cont) for ctx, conts in reqs for cont in conts]
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out: dict[int, float] = {}
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s: s + batch]
            seqs = [(pairs[i][0] + pairs[i][1])[:-1] for i in idx]
            width = max(map(len, seqs))
            inp = torch.zeros(len(seqs), width, dtype=torch.long)
            for r, q in enumerate(seqs):
                inp[r, : len(q)] = torch.tensor(q)
            logp = torch.log_softmax(model(input_ids=inp.to(device)).logits, dim=-1)
            for r, i in enumerate(idx):
                ctx, cont = pairs[i]
                start = len(ctx) - 1
                tgt = torch.tensor(cont, device=logp.device)
                out[i] = float(logp[r, start: start + len(cont)].gather(-1, tgt[:, None]).sum())
            del logp
    return [out[i] for i in range(len(pairs))]


# ---------------------------------------------------------------------------------------------
# several GPUs


def dispatch_auto(model: Any, devices: list[Any]) -> dict[str, Any]:
    """Spread ``model`` over ``devices`` as ``from_pretrained(device_map="auto")`` would.

    accelerate balances the memory over the devices without splitting a decoder layer, then
    dispatches (moves each module and adds the hooks that carry activations across devices).
    Returns the device map.
    """
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    free = {d: torch.cuda.mem_get_info(d)[0] if isinstance(d, int) else 64 * 2**30 for d in devices}
    budget = get_balanced_memory(model, max_memory=free, no_split_module_classes=no_split)
    device_map = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split)
    dispatch_model(model, device_map=device_map)
    return {k: str(v) for k, v in device_map.items()}
