"""Steering overhead: tokens/s of batched greedy generation and of scoring, steered vs unsteered.

What one run measures, per batch size (interleaved repeats, so drift on a shared machine hits
every mode alike; the mode order rotates from one repeat to the next):

- generation: ``model.generate`` greedy, exactly ``--new-tokens`` new tokens per row (EOS is
  suppressed with ``min_new_tokens``), prompts of ``--prompt-tokens`` tokens; tokens/s counts
  generated tokens. Unsteered = the plain model (no hooks at all).
- scoring: the eval engine's log-likelihood batch (``Engine._ll_any``: on a CPU the context forward
  with a KV cache, then two continuations of ``--cont-tokens`` tokens against it); tokens/s
  counts every token fed. Unsteered = the engine's own unsteered path (its root hook only).
- steered modes: ``vector`` = a DiffMean steering vector at one layer (resid_post, the middle
  layer); ``clas`` = CLAS at its bridge layers (mlp_act). On a shipped model both are fitted on
  20 NTREX lines per language; with ``--config-only`` (random weights) the vector is a random
  direction with 0.25 x the mean residual norm at that layer and CLAS uses random neuron masks
  (30% partial, 5% language-specific) at the two middle layers, standing in for bridge layers.
- ratio = steered tokens/s / unsteered tokens/s of the same repeat; the median over repeats is
  reported (target >= 0.98 for the residual vector).
- peak memory: CUDA ``max_memory_allocated`` per measurement; on CPU the process's peak RSS
  (VmHWM, reset before each measurement through /proc/self/clear_refs where allowed).

``--static-cache-compile``: generation with transformers' static KV cache and torch.compile'd
decoding (``cache_implementation="static"`` + ``compile_config``; forced on CPU too). Warm-up
runs (compilation) are excluded from the timings and reported apart.

``--config-only llama3-8b|qwen2.5-7b`` builds a random-weight model from the real architecture
config (public values hard-coded below) in bf16 on CUDA: this needs a GPU with ~20 GB free.

Examples::

    python benchmarks/steer_overhead.py --batch-sizes 1,8 --new-tokens 32 --repeats 3      # CPU, gemma3-270m
    python benchmarks/steer_overhead.py --config-only llama3-8b --batch-sizes 1,8,32 --new-tokens 128
    python benchmarks/steer_overhead.py --config-only qwen2.5-7b --static-cache-compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("XLSTEER_QUIET", "1")

#: Public architecture values (config.json of meta-llama/Llama-3.1-8B and Qwen/Qwen2.5-7B).
CONFIGS: dict[str, dict[str, Any]] = {
    "llama3-8b": dict(
        arch="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
        max_position_embeddings=131072, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    ),
    "qwen2.5-7b": dict(
        arch="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        intermediate_size=18944, vocab_size=152064, rope_theta=1000000.0, rms_norm_eps=1e-6,
        max_position_embeddings=32768, tie_word_embeddings=False, use_sliding_window=False,
        bos_token_id=151643, eos_token_id=151643,
    ),
}


# ---------------------------------------------------------------------------------------------
# models


def build_config_only(name: str, device: str, dtype: Any, num_layers: int | None,
                      overrides: dict[str, Any] | None = None) -> Any:
    """A random-weight model of the real architecture (weights initialised directly on ``device``).

    ``num_layers`` / ``overrides`` shrink it (same architecture), only to smoke-test a script."""
    import torch
    import transformers as tf

    from xlsteer.models.loading import LoadedModel

    spec = {**CONFIGS[name], **(overrides or {})}
    arch = spec.pop("arch")
    if num_layers is not None:  # a shallower copy, only to smoke-test this script on a small machine
        spec["num_hidden_layers"] = num_layers
    config = (tf.LlamaConfig if arch == "llama" else tf.Qwen2Config)(**spec)
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    eos = int(spec["eos_token_id"])
    model.generation_config.pad_token_id = eos
    model.generation_config.eos_token_id = eos
    # the engine only needs the special ids: token ids are made directly (no tokenizer download)
    tok = SimpleNamespace(pad_token_id=eos, eos_token_id=eos, bos_token_id=int(spec["bos_token_id"]))
    return LoadedModel(model=model, tokenizer=tok, name=f"{name} (config only, random weights)",
                       fingerprint={"config_only": name, "num_layers": spec["num_hidden_layers"]},
                       source={"kind": "config-only"})


def load(args: argparse.Namespace) -> Any:
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.config_only:
        if not args.device.startswith("cuda") and not args.allow_cpu:
            sys.exit(f"--config-only {args.config_only} builds a ~8B-parameter model: it needs a CUDA GPU "
                     "(pass --device cuda), or --allow-cpu with --num-layers N for a shallow smoke test")
        return build_config_only(args.config_only, args.device, dtype, args.num_layers)
    from xlsteer.models.loading import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device)


# ---------------------------------------------------------------------------------------------
# interventions


def _mean_resid_norm(lm: Any, ids: Any, layer: int) -> float:
    import torch

    from xlsteer.hooks import record
    from xlsteer.models.sites import Site

    norms: list[float] = []
    with record(lm.model, [Site(layer, "resid_post")], lambda s, a, c: norms.append(float(a.float().norm(dim=-1).mean()))):
        with torch.inference_mode():
            lm.model(input_ids=ids, logits_to_keep=1)
    return norms[0]


def random_interventions(lm: Any, ids: Any, langs: list[str], seed: int = 0,
                         bridge: list[int] | None = None) -> dict[str, Any]:
    """A random vector (0.25 x the mean residual norm) and random CLAS masks at ``bridge`` layers
    (default: the two middle layers): stand-ins for fitted ones on random-weight models."""
    import torch

    from xlsteer.interventions.clas import CLASIntervention, partial_key, spec_key
    from xlsteer.interventions.vector import SteeringVector, vector_key
    from xlsteer.models.sites import Site, site_width

    model = lm.model
    n = int(model.config.num_hidden_layers)
    layer = n // 2
    g = torch.Generator().manual_seed(seed)
    norm = 0.25 * _mean_resid_norm(lm, ids[:1], layer)
    d = torch.randn(len(langs), int(model.config.hidden_size), generator=g)
    vec = SteeringVector(sites=[Site(layer, "resid_post")], tensors={vector_key(layer): d / d.norm(dim=-1, keepdim=True) * norm},
                         params={"normalize": "none"}, languages=langs, anchor="en")
    d_ff = site_width(model, "mlp_act")
    bridge = sorted(bridge) if bridge else sorted({max(0, n // 2 - 1), n // 2})
    tensors: dict[str, Any] = {}
    for b in bridge:
        tensors[partial_key(b)] = torch.rand(d_ff, generator=g) < 0.30
        tensors[spec_key(b)] = torch.rand(len(langs), d_ff, generator=g) < 0.05
    clas = CLASIntervention(sites=[Site(b, "mlp_act") for b in bridge], tensors=tensors,
                            params={"beta": 0.4, "gamma": 0.2, "bridge_layers": bridge}, languages=langs, anchor="en")
    return {"vector": vec, "clas": clas, "_how": f"random (vector at layer {layer}, |v| = {norm:.2f}; CLAS at {bridge})"}


def fitted_interventions(lm: Any, langs: list[str], n_lines: int = 20) -> dict[str, Any]:
    from xlsteer.data.corpora import load_ntrex
    from xlsteer.interventions.fit import fit
    from xlsteer.models.sites import Site
    from xlsteer.stats import collect

    corpus = load_ntrex(None, ["en", *langs], split="fit", limit=n_lines)
    n = int(lm.model.config.num_hidden_layers)
    # one pass over the lines for both methods: item means at the middle layer (DiffMean) and
    # token-level mlp_act means at every layer (CLAS chooses its bridge layers from them)
    sites = [Site(n // 2, "resid_post")] + [Site(layer, "mlp_act") for layer in range(n)]
    stats = collect(lm, {k: corpus.texts[k] for k in ["en", *langs]}, sites, batch_size=n_lines, max_length=96,
                    meta={"model_fingerprint": lm.fingerprint})
    vec = fit("diffmean", lm, corpus, ["en", *langs], anchor="en", layers=[n // 2], stats=stats)
    clas = fit("clas", lm, corpus, ["en", *langs], anchor="en", stats=stats)
    return {"vector": vec, "clas": clas,
            "_how": f"fitted on {n_lines} NTREX lines per language (DiffMean at layer {vec.layers}, CLAS at {clas.layers})"}


# ---------------------------------------------------------------------------------------------
# timing


class Memory:
    """Peak memory of one measurement: CUDA allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.resettable = False
        if not self.cuda:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.resettable = True
            except OSError:
                pass

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif self.resettable:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak_mb(self) -> float:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @property
    def what(self) -> str:
        if self.cuda:
            return "CUDA max_memory_allocated"
        return "peak RSS (VmHWM" + (", reset per measurement)" if self.resettable else ", whole process)")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], int], device: str, mem: Memory) -> tuple[float, float]:
    """(tokens per second, peak MB) of one call of ``fn`` (which returns its token count)."""
    _sync(device)
    mem.reset()
    t0 = time.perf_counter()
    tokens = fn()
    _sync(device)
    dt = time.perf_counter() - t0
    return tokens / dt, mem.peak_mb()


def make_runs(lm: Any, ivs: dict[str, Any], bs: int, args: argparse.Namespace, prompt: Any, conts: list[list[int]]):
    """Per mode: (generate, score) closures returning the number of tokens they processed."""
    import torch

    from xlsteer.evaluation.engine import Engine
    from xlsteer.hooks import steer

    model = lm.model
    ids = prompt[:bs]
    mask = torch.ones_like(ids)
    gen_kw: dict[str, Any] = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    if args.static_cache_compile:
        from transformers import CompileConfig

        cc = CompileConfig(fullgraph=False, mode="reduce-overhead" if args.device.startswith("cuda") else "default")
        if not args.device.startswith("cuda"):
            cc._compile_all_devices = True  # transformers auto-compiles on accelerators only
        gen_kw.update(cache_implementation="static", compile_config=cc)
    engine = Engine(lm, batch_size=bs, max_length=4096)
    ctx = ids.tolist()
    enc = [(row, conts) for row in ctx]
    texts = [["a", "b"]] * bs
    row_langs = [args.lang] * bs
    n_score = bs * ids.shape[1] + bs * sum(len(c) - 1 for c in conts)

    def generate(iv: Any) -> Callable[[], int]:
        def run() -> int:
            with torch.inference_mode():
                if iv is None:
                    out = model.generate(input_ids=ids, attention_mask=mask, **gen_kw)
                else:
                    with steer(model, iv, langs=args.lang):
                        out = model.generate(input_ids=ids, attention_mask=mask, **gen_kw)
            return bs * (out.shape[1] - ids.shape[1])

        return run

    def score(iv: Any) -> Callable[[], int]:
        def run() -> int:
            with steer(model, [] if iv is None else iv, anchor="en") as session, torch.inference_mode():
                engine._ll_any(session, enc, texts, row_langs)
            return n_score

        return run

    return {mode: (generate(iv), score(iv)) for mode, iv in [("unsteered", None), *[(m, ivs[m]) for m in args.methods]]}


def measure(lm: Any, ivs: dict[str, Any], args: argparse.Namespace, mem: Memory,
            on_row: Callable[[dict[str, Any]], None] = lambda row: None) -> list[dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(0)
    vocab = int(lm.model.config.vocab_size)
    device = args.device
    big = max(args.batch_sizes)
    prompt = torch.randint(10, min(vocab, 32000), (big, args.prompt_tokens), generator=g).to(device)
    conts = [torch.randint(10, min(vocab, 32000), (args.cont_tokens,), generator=g).tolist() for _ in range(2)]
    rows: list[dict[str, Any]] = []
    for bs in args.batch_sizes:
        runs = make_runs(lm, ivs, bs, args, prompt, conts)
        modes = list(runs)
        warm = {}
        for mode in modes:  # warm-up (compilation with --static-cache-compile): not timed
            t0 = time.perf_counter()
            for _ in range(2 if args.static_cache_compile else 1):
                runs[mode][0]()
            runs[mode][1]()
            warm[mode] = time.perf_counter() - t0
        res: dict[str, dict[str, list[float]]] = {m: {"gen": [], "score": [], "gen_mem": [], "score_mem": []} for m in modes}
        for kind, k in (("gen", 0), ("score", 1)):
            for r in range(args.repeats):
                order = modes[r % len(modes):] + modes[: r % len(modes)]
                for mode in order:
                    tps, peak = timed(runs[mode][k], device, mem)
                    res[mode][kind].append(tps)
                    res[mode][kind + "_mem"].append(peak)
        base = res["unsteered"]
        for mode in modes:
            row: dict[str, Any] = {"batch": bs, "mode": mode, "warmup_s": round(warm[mode], 2)}
            for kind in ("gen", "score"):
                v = res[mode][kind]
                row[f"{kind}_tok_s"] = statistics.median(v)
                row[f"{kind}_tok_s_all"] = [round(x, 2) for x in v]
                ratios = [a / b for a, b in zip(v, base[kind])]
                row[f"{kind}_ratio"] = statistics.median(ratios)
                row[f"{kind}_ratio_range"] = [round(min(ratios), 4), round(max(ratios), 4)]
                row[f"{kind}_peak_mb"] = max(res[mode][kind + "_mem"])
            rows.append(row)
            on_row(row)
    return rows


# ---------------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m", help="shipped model name or local folder (default gemma3-270m)")
    p.add_argument("--config-only", choices=sorted(CONFIGS), default=None,
                   help="random weights from the real architecture config, bf16 on CUDA")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--cont-tokens", type=int, default=8, help="tokens per scored continuation (2 per request)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", default="vector,clas", help="steered modes: vector, clas")
    p.add_argument("--lang", default="de", help="language of every row (steered; the anchor is en)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--random-interventions", action="store_true", help="do not fit: random vector / CLAS masks")
    p.add_argument("--static-cache-compile", action="store_true",
                   help="generation with a static KV cache and torch.compile'd decoding")
    p.add_argument("--num-layers", type=int, default=None, help="--config-only: fewer layers (smoke tests only)")
    p.add_argument("--allow-cpu", action="store_true", help="--config-only on CPU (with --num-layers, smoke tests)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in ("vector", "clas")]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from vector, clas")
    return args


def main(argv: list[str] | None = None) -> None:
    import torch
    import transformers

    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.static_cache_compile:
        import torch._dynamo.config as dynamo_config

        from xlsteer.hooks import guard_hooks_for_compile

        guard_hooks_for_compile()  # compiled forwards follow the hooks as steer() adds and removes them
        dynamo_config.recompile_limit = max(getattr(dynamo_config, "recompile_limit", 8), 64)
    t0 = time.perf_counter()
    lm = load(args)
    load_s = time.perf_counter() - t0
    mem = Memory(args.device)
    g = torch.Generator().manual_seed(1)
    probe = torch.randint(10, min(int(lm.model.config.vocab_size), 32000), (1, args.prompt_tokens), generator=g)
    t0 = time.perf_counter()
    if args.config_only or args.random_interventions:
        ivs = random_interventions(lm, probe.to(args.device), [args.lang])
    else:
        try:
            ivs = fitted_interventions(lm, [args.lang])
        except Exception as e:  # noqa: BLE001 - e.g. no bridge layer on a very shallow model
            print(f"fitting failed ({e}); using random interventions", file=sys.stderr)
            ivs = random_interventions(lm, probe.to(args.device), [args.lang])
    fit_s = time.perf_counter() - t0
    header = {
        "model": lm.name, "device": args.device, "dtype": args.dtype, "torch": torch.__version__,
        "transformers": transformers.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "batch_sizes": args.batch_sizes, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "cont_tokens": args.cont_tokens, "repeats": args.repeats, "static_cache_compile": args.static_cache_compile,
        "interventions": ivs["_how"], "memory": mem.what, "load_s": round(load_s, 1), "fit_s": round(fit_s, 1),
    }
    print(json.dumps(header), flush=True)
    print(f"\n{'batch':>5} {'mode':<10} {'gen tok/s':>10} {'ratio':>7} {'[min, max]':>16} {'score tok/s':>12} "
          f"{'ratio':>7} {'[min, max]':>16} {'gen peak MB':>12} {'score peak MB':>13}", flush=True)

    def show(r: dict[str, Any]) -> None:  # as soon as a batch size is done
        print(f"{r['batch']:>5} {r['mode']:<10} {r['gen_tok_s']:>10.1f} {r['gen_ratio']:>7.3f} "
              f"{str(r['gen_ratio_range']):>16} {r['score_tok_s']:>12.1f} {r['score_ratio']:>7.3f} "
              f"{str(r['score_ratio_range']):>16} {r['gen_peak_mb']:>12.0f} {r['score_peak_mb']:>13.0f}", flush=True)

    t0 = time.perf_counter()
    rows = measure(lm, ivs, args, mem, show)
    total = time.perf_counter() - t0
    print(f"\nmeasured in {total:.1f} s (plus {load_s:.1f} s loading, {fit_s:.1f} s fitting)")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
