"""GPU check: everything GPU-bound about xlsteer, measured in one short, self-checking run.

One command (no network, nothing downloaded): random-weight models built on the GPU from the
real configs (Llama-3.1-8B and Qwen2.5-7B shapes, bf16). It writes one JSON file and prints one
Markdown table with

- correctness on the GPU: alpha 0 gives exactly the unhooked tokens; anchor-language rows of a
  mixed batch are bit-identical to unsteered; steered differs from unsteered (bf16, real
  shapes); cached decoding equals recomputation and the static cache equals the dynamic one
  (steered, on a tiny fp32 config);
- the copy bandwidth it measures and the batch-1 decode roofline it implies (weights' bytes);
- compiled decoding through xlsteer's engine (a static KV cache reused across calls, a compiled
  decode step with steering inside the graph, CUDA graphs): tokens/s and median ms per decode
  step, unsteered vs steered (a DiffMean-style vector at one layer; CLAS at a quarter of the
  layers standing in for bridge layers), batch 1, 8 and 32, with steered/unsteered ratios
  (interleaved repeats: median and [min, max]) and the graphs and graph breaks dynamo counted
  for each mode; the unsteered batch-1 step against the roofline;
- eager decoding with ``model.generate`` (section ``eager``, not run by default);
- log-likelihood scoring items/s on XCOPA-shaped synthetic requests, per engine batch size: the
  engine's automatic strategy choice vs each strategy forced vs a plain full forward per
  (context, continuation) pair, as lm-evaluation-harness's ``hf`` model does;
- the targets, each printed as pass / miss (not asserted).

Work runs in priority order inside ``--budget-s``: a cell that would not fit is skipped and
said so, and the JSON is rewritten after every section, so a run cut short keeps what it did.

    python benchmarks/gpu_check.py --json gpu_check.json        # on one H100/H200, <= 8 minutes
    python benchmarks/gpu_check.py --smoke                      # CPU, 2-layer configs, < 1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("XLSTEER_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGETS = {"ratio": 0.98, "roofline_share": 0.50, "scoring_speedup": 1.0, "auto_vs_best": 0.97}
#: --smoke: the same architectures, shrunk so that the whole script runs on a CPU in seconds
SMOKE_SHAPE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                   vocab_size=512, num_hidden_layers=2, bos_token_id=1, eos_token_id=2)


class Run:
    """The results document, the time budget and the per-section error handling."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.t0 = time.perf_counter()
        self.doc: dict[str, Any] = {"format": "xlsteer.gpu-check", "version": 1, "sections": {}, "skipped": [],
                                    "errors": {}}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def fits(self, name: str, need_s: float) -> bool:
        if self.left() >= need_s:
            return True
        self.doc["skipped"].append(f"{name}: needs ~{need_s:.0f} s, {max(self.left(), 0):.0f} s of the budget left")
        print(f"[skip] {name} (budget)", flush=True)
        return False

    @contextmanager
    def section(self, name: str) -> Iterator[dict[str, Any]]:
        """Collects a section's results; an error is recorded (and printed) and the run goes on."""
        out: dict[str, Any] = {}
        t0 = time.perf_counter()
        try:
            yield out
        except Exception as e:  # noqa: BLE001 - one failing measurement must not lose the others
            self.doc["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"[error] {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=4)
        finally:
            out["seconds"] = round(time.perf_counter() - t0, 1)
            self.doc["sections"][name] = out
            print(f"[done] {name} in {out['seconds']} s ({self.left():.0f} s of the budget left)", flush=True)
            self.save()

    def save(self) -> None:
        if self.args.json:
            path = Path(self.args.json)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps(self.doc, indent=1, sort_keys=True, default=str))
            tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# models and interventions


def build(name: str, args: argparse.Namespace) -> Any:
    import torch

    import steer_overhead as so

    dtype = torch.float32 if args.smoke else torch.bfloat16
    return so.build_config_only(name, args.device, dtype, None, overrides=SMOKE_SHAPE if args.smoke else None)


def interventions(lm: Any, prompt: Any) -> tuple[dict[str, Any], str]:
    import steer_overhead as so

    n = int(lm.model.config.num_hidden_layers)
    bridge = sorted(set(range(n // 4, max(n // 4 + 1, 3 * n // 4), 2)))
    ivs = so.random_interventions(lm, prompt[:1], ["de"], bridge=bridge)
    return {"vector": ivs["vector"], "clas": ivs["clas"]}, ivs["_how"]


def env(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    cuda = args.device.startswith("cuda")
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "device": args.device, "gpu": torch.cuda.get_device_name() if cuda else None,
            "gpus": torch.cuda.device_count() if cuda else 0, "cuda": torch.version.cuda,
            "cpu_threads": torch.get_num_threads(), "smoke": args.smoke,
            "date": time.strftime("%Y-%m-%d", time.gmtime())}


# ---------------------------------------------------------------------------------------------
# the sections


def multi_device(run: Run, models: dict[str, tuple[Any, dict[str, Any], Any]]) -> None:
    """The first model spread over every GPU (device_map="auto"); run last, as it moves the model.

    With one GPU it is skipped and said so; ``--smoke`` runs the same code with the CPU as the
    only device, so that the path is exercised everywhere.
    """
    import torch

    import gpu_parts as gp

    devices: list[Any] = ["cpu"] if run.args.smoke else list(range(torch.cuda.device_count()))
    if len(devices) < 2 and not run.args.smoke:
        run.doc["skipped"].append("device_map='auto' across GPUs: one GPU visible, nothing to spread")
        return
    if not models or not run.fits("device_map=auto", 60):
        return
    name, (lm, ivs, prompt) = next(iter(models.items()))
    with run.section(f"{name}/device_map_auto/correctness") as out:
        out["device_map"] = gp.dispatch_auto(lm.model, devices)
        out["devices"] = sorted(set(out["device_map"].values()))
        out.update(gp.big_correctness(lm, ivs["vector"], prompt))
    with run.section(f"{name}/device_map_auto/eager/batch8") as out:
        out["rows"] = gp.decode_cell(lm, ivs, prompt, gp.DecodeSetup(8, run.args.new_tokens, run.args.repeats),
                                     run.args.device)


def tiny_check(run: Run) -> None:
    """Steered decoding on a tiny fp32 model: cached = recomputed, static cache = dynamic cache."""
    import torch

    import gpu_parts as gp
    from xlsteer.interventions.vector import SteeringVector, vector_key
    from xlsteer.models.sites import Site
    from xlsteer.testing import tiny_model

    with run.section("tiny-fp32/correctness") as out:
        tiny = tiny_model("llama")
        tiny.model.to(run.args.device)
        g = torch.Generator().manual_seed(1)
        vec = SteeringVector(sites=[Site(1, "resid_post")], tensors={vector_key(1): 3.0 * torch.randn(1, 64, generator=g)},
                             params={"normalize": "none"}, languages=["de"], anchor="en")
        out.update(gp.tiny_correctness(tiny, vec, run.args.device))


def build_model(run: Run, name: str) -> tuple[Any, dict[str, Any], Any] | None:
    """(model, interventions, prompt ids) of one config-only model, or None if it did not build."""
    import torch

    import gpu_parts as gp

    args = run.args
    if not run.fits(f"{name}/build", 15):
        return None
    built = None
    with run.section(f"{name}/build") as out:
        lm = build(name, args)
        vocab = int(lm.model.config.vocab_size)
        prompt = torch.randint(10, min(vocab, 32000), (max(args.batch_sizes + [4]), args.prompt_tokens),
                               generator=torch.Generator().manual_seed(0)).to(args.device)
        ivs, how = interventions(lm, prompt)
        info = {"params": sum(p.numel() for p in lm.model.parameters()), "decode_bytes": gp.decode_bytes(lm.model),
                "interventions": how, "layers": int(lm.model.config.num_hidden_layers)}
        run.doc["models"][name] = info
        out.update(info)
        built = (lm, ivs, prompt)
    return built


def check_model(run: Run, name: str, lm: Any, ivs: dict[str, Any], prompt: Any) -> None:
    import gpu_parts as gp

    if "correctness" in run.args.sections:
        with run.section(f"{name}/correctness") as out:
            out.update(gp.big_correctness(lm, ivs["vector"], prompt))


def eager_cells(run: Run, name: str, lm: Any, ivs: dict[str, Any], prompt: Any) -> None:
    """model.generate() decoding, unsteered vs steered (section ``eager``)."""
    import gpu_parts as gp

    a = run.args
    for bs in a.eager_batch_sizes if "eager" in a.sections else []:
        if run.fits(f"{name}/eager/batch{bs}", a.eager_cell_s):
            with run.section(f"{name}/eager/batch{bs}") as out:
                cfg = gp.DecodeSetup(bs, a.new_tokens, a.repeats)
                out["rows"] = gp.decode_cell(lm, ivs, prompt, cfg, a.device)


def scoring_cells(run: Run, name: str, lm: Any) -> None:
    for bs in run.args.score_batches if "scoring" in run.args.sections else []:
        if run.fits(f"{name}/scoring/batch{bs}", 20):
            with run.section(f"{name}/scoring/batch{bs}") as out:
                out.update(scoring(lm, run.args, bs))


def scoring(lm: Any, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """The automatic strategy vs each forced strategy vs one full forward per pair (see gpu_engine)."""
    import gpu_engine as ge
    import gpu_parts as gp

    reqs = gp.xcopa_like_requests(int(lm.model.config.vocab_size), args.score_items)
    return ge.scoring_strategy_cell(lm, reqs, batch, args.repeats, args.device)


def compile_counters() -> dict[str, Any]:
    """Dynamo/inductor counters so far: graph breaks, unique graphs, skipped CUDA graphs."""
    from torch._dynamo.utils import counters

    keep = ("graph_break", "stats", "inductor")
    return {k: {str(kk): vv for kk, vv in counters[k].items() if k != "inductor" or "cudagraph" in str(kk)}
            for k in keep if k in counters}


def fast_path(run: Run, cell: tuple[str, int], lm: Any, ivs: dict[str, Any], prompt: Any) -> None:
    """One compiled-decoding cell (model, batch size) through the engine; a model's first cell
    pays for compiling each mode's graph (unsteered, vector, CLAS: three hook sets)."""
    import gpu_engine as ge

    a = run.args
    name, bs = cell
    key = f"{name}/fast/batch{bs}"
    first = not any(k.startswith(f"{name}/fast/") for k in run.doc["sections"])
    if run.fits(key, a.fast_first_s if first else a.fast_cell_s):
        with run.section(key) as out:
            setup = ge.EngineDecode(bs, a.new_tokens, a.repeats, compile="eager" if a.smoke else True)
            out["rows"] = ge.engine_decode_cell(lm, ivs, prompt, setup, a.device)
            out["compile_counters"] = compile_counters()


# ---------------------------------------------------------------------------------------------
# summary: roofline, targets, the Markdown table


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    """Roofline shares and the pass / miss of each target, from the sections that ran."""
    bw = doc["sections"].get("bandwidth", {}).get("gb_per_s")
    out: dict[str, Any] = {"roofline": {}, "targets": {}}
    for name, info in doc.get("models", {}).items():
        if bw:
            step_ms = 1000 * info["decode_bytes"] / (bw * 1e9)  # a batch-1 step bound by reading the weights
            rows = {f"{path}/{r['mode']}": r for path in ("fast", "eager")
                    for r in doc["sections"].get(f"{name}/{path}/batch1", {}).get("rows", []) if r.get("step_ms")}
            share = {k: round(step_ms / r["step_ms"], 3) for k, r in rows.items()}
            out["roofline"][name] = {"step_ms": round(step_ms, 3), "tok_s": round(1000 / step_ms, 1), "share": share}
            if "fast/unsteered" in share:
                out["targets"][f"{name}: compiled unsteered batch 1 >= {TARGETS['roofline_share']:.0%} of roofline"] = \
                    _verdict(share["fast/unsteered"] >= TARGETS["roofline_share"], f"{share['fast/unsteered']:.0%}")
        out["targets"].update(_scoring_targets(doc, name))
    fast = [(k, r) for k, sec in doc["sections"].items() if "/fast/" in k for r in sec.get("rows", [])]
    steered = [(k, r) for k, r in fast if r["mode"] != "unsteered"]
    got = [(k, r["mode"], r["step_ratio"]) for k, r in steered if "step_ratio" in r]
    if got:
        worst = min(got, key=lambda t: t[2])
        out["targets"][f"compiled steered/unsteered per step >= {TARGETS['ratio']} in every cell ({len(got)} cells)"] = \
            _verdict(worst[2] >= TARGETS["ratio"], f"lowest {worst[2]:.3f}: {worst[0]} {worst[1]}")
    if fast:
        breaks = sum(r.get("graph_breaks", 0) for _, r in fast)
        graphs = {f"{k.split('/')[0]} b{r['batch']} {r['mode']}": r.get("graphs") for k, r in fast}
        out["graphs"] = graphs
        out["targets"]["compiled decoding: 0 graph breaks in every cell"] = _verdict(breaks == 0, f"{breaks} breaks")
    out["correctness"] = {f"{name}: {c}": v for name, sec in doc["sections"].items() if name.endswith("correctness")
                          for c, v in sec.items() if isinstance(v, bool)}
    out["not_measured"] = doc.get("skipped", []) + [f"{k}: {v}" for k, v in doc.get("errors", {}).items()]
    return out


def _scoring_targets(doc: dict[str, Any], name: str) -> dict[str, str]:
    out = {}
    for key, sec in doc["sections"].items():
        if key.startswith(f"{name}/scoring/") and "auto_vs_best" in sec:
            bs = sec["engine_batch"]
            out[f"{name}: scoring (auto) >= {TARGETS['scoring_speedup']}x full forward, {bs} items/batch"] = \
                _verdict(sec["auto_vs_baseline"] >= TARGETS["scoring_speedup"], f"{sec['auto_vs_baseline']}x")
            out[f"{name}: auto within noise of the better strategy, {bs} items/batch"] = \
                _verdict(sec["auto_vs_best"] >= TARGETS["auto_vs_best"], f"{sec['auto_vs_best']}x; chose {sec['choice']}")
    return out


def _label(section: str) -> str:
    """The model a section is about, and how it was placed when not on one device."""
    model = section.split("/")[0]
    return f"{model}, device_map=auto" if "/device_map_auto/" in section else model


def _verdict(ok: bool, detail: str) -> str:
    return f"{'pass' if ok else 'miss'} ({detail})"


def _decode_line(model: str, r: dict[str, Any]) -> str:
    path = ("engine, compiled" if r.get("path") == "engine" else "static+compile") if r["fast_path"] else "eager"
    step = f"{r['step_ms']:.2f}" if r.get("step_ms") else ""
    if r["mode"] == "unsteered":
        ratio = step_ratio = "1"
    else:
        ratio = f"{r['ratio']:.3f} [{r['ratio_range'][0]:.3f}, {r['ratio_range'][1]:.3f}]"
        step_ratio = (f"{r['step_ratio']:.3f} [{r['step_ratio_range'][0]:.3f}, {r['step_ratio_range'][1]:.3f}]"
                      if "step_ratio" in r else "")
    peak = f"{r['peak_extra_mb']:.0f}" if r.get("peak_extra_mb") is not None else ""
    graphs = f"; {r['graphs']} graphs, {r['graph_breaks']} breaks" if "graphs" in r else ""
    return (f"| decode | {model} | {r['batch']} | {path} | {r['mode']} | {r['tok_s']:.1f} | {step} | {ratio} | "
            f"{step_ratio} | {peak} | warm-up {r['warmup_s']} s{graphs} |")


def markdown(doc: dict[str, Any]) -> str:
    """One Markdown document: environment, correctness, decode cells, scoring, roofline, targets."""
    e, s = doc["env"], doc["summary"]
    lines = [f"GPU check: {e['gpu'] or e['device']} ({e['gpus']} GPU), torch {e['torch']}, transformers "
             f"{e['transformers']}, Python {e['python']}, {e['date']}" + (" — SMOKE (CPU, tiny shapes)" if e["smoke"] else ""),
             "", "| what | model | batch | path | mode | tok/s (or items/s) | ms/step | steered/unsteered tok/s [min, max] "
             "| steered/unsteered per step [min, max] | peak MB over weights | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, ok in s["correctness"].items():
        where, check = name.split(": ")
        lines.append(f"| correctness | {_label(where)} | | | | | | | | | {check}: {'pass' if ok else 'FAIL'} |")
    bw = doc["sections"].get("bandwidth", {})
    if "gb_per_s" in bw:
        lines.append(f"| copy bandwidth | | | | | {bw['gb_per_s']} GB/s | | | | | read + write bytes |")
    for key, sec in doc["sections"].items():
        lines += [_decode_line(_label(key), r) for r in sec.get("rows", [])]
        if "auto_vs_best" in sec:
            rates = sec["items_s"]
            lines.append(f"| scoring, {sec['items']} XCOPA-shaped items | {key.split('/')[0]} | {sec['engine_batch']} | "
                         f"engine auto / shared prefix / full forward / baseline | unsteered | "
                         f"{rates['auto']} / {rates['shared_prefix']} / {rates['full_forward']} / "
                         f"{rates['full_forward_baseline']} | | | | | auto chose {sec['choice']}: {sec['auto_vs_best']}x "
                         f"the better strategy, {sec['auto_vs_baseline']}x the baseline |")
    for name, roof in s["roofline"].items():
        shares = ", ".join(f"{k} {v:.0%}" for k, v in roof["share"].items())
        lines.append(f"| batch-1 roofline | {name} | 1 | | | {roof['tok_s']} | {roof['step_ms']} | | | | share: {shares} |")
    lines += ["", "Targets:"] + [f"- {k}: **{v}**" for k, v in s["targets"].items()]
    if s["not_measured"]:
        lines += ["", "Not measured in this run:"] + [f"- {m}" for m in s["not_measured"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, 2-layer tiny-width configs, fast compile backend")
    p.add_argument("--json", default="gpu_check.json", help="results file (rewritten after every section)")
    p.add_argument("--markdown", default=None, help="also write the table here")
    p.add_argument("--models", default="llama3-8b,qwen2.5-7b")
    p.add_argument("--fast-path-models", default="llama3-8b", help="models measured compiled, in order")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sections", default="correctness,scoring,fast,multi",
                   help="which parts to run: correctness, scoring, fast (compiled engine decoding), eager "
                        "(model.generate), multi (device_map='auto' over several GPUs, last)")
    p.add_argument("--eager-batch-sizes", default=None, help="default: --batch-sizes")
    p.add_argument("--score-items", type=int, default=256)
    p.add_argument("--score-batches", default="8,32,128", help="items per engine batch (baseline: 2x pairs)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new cells after this many seconds")
    p.add_argument("--bandwidth-mib", type=int, default=2048)
    args = p.parse_args(argv)
    ints = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
    args.batch_sizes = ints(args.batch_sizes)
    args.eager_batch_sizes = ints(args.eager_batch_sizes) if args.eager_batch_sizes else args.batch_sizes
    args.score_batches = ints(args.score_batches)
    args.sections = {x.strip() for x in args.sections.split(",") if x.strip()}
    args.models = [m for m in args.models.split(",") if m]
    args.fast_path_models = [m for m in args.fast_path_models.split(",") if m in args.models]
    args.device = "cpu" if args.smoke else "cuda"
    # rough cell costs for the budget (seconds; the first fast-path cell of a model compiles it)
    args.eager_cell_s, args.fast_first_s, args.fast_cell_s = (1, 1, 1) if args.smoke else (25, 150, 90)
    if args.smoke:  # every code path, tiny sizes
        args.bandwidth_mib, args.score_items, args.new_tokens = 16, 16, 8
        args.repeats = min(args.repeats, 2)
        args.sections |= {"eager"}
        args.fast_path_models = list(args.models)
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible; run with --smoke for the CPU check of this script", file=sys.stderr)
        return 2
    import torch._dynamo.config as dynamo_config

    import gpu_parts as gp
    from xlsteer.hooks import guard_hooks_for_compile

    guard_hooks_for_compile()  # compiled forwards follow steering hooks as they come and go
    dynamo_config.recompile_limit = max(getattr(dynamo_config, "recompile_limit", 8), 64)
    run = Run(args)
    run.doc["env"], run.doc["args"], run.doc["targets"], run.doc["models"] = env(args), vars(args), TARGETS, {}
    print(json.dumps(run.doc["env"]), flush=True)
    with run.section("bandwidth") as out:
        out.update(gp.copy_bandwidth(args.device, args.bandwidth_mib))
    if "correctness" in args.sections:
        tiny_check(run)
    models = {name: m for name in args.models if (m := build_model(run, name)) is not None}
    for name, m in models.items():
        check_model(run, name, *m)
    # priority: compiled batch 1 (the roofline and the steering cost), scoring, larger batches
    fast = [(name, bs) for bs in args.batch_sizes for name in args.fast_path_models
            if name in models and "fast" in args.sections]
    for cell in [c for c in fast if c[1] == min(args.batch_sizes)]:
        fast_path(run, cell, *models[cell[0]])
    for name, m in models.items():
        scoring_cells(run, name, m[0])
    for cell in [c for c in fast if c[1] != min(args.batch_sizes)]:
        fast_path(run, cell, *models[cell[0]])
    for name, m in models.items():
        eager_cells(run, name, *m)
    if "multi" in args.sections:
        multi_device(run, models)
    run.doc["summary"] = summarise(run.doc)
    run.doc["wall_s"] = round(time.perf_counter() - run.t0, 1)
    run.save()
    table = markdown(run.doc)
    print("\n" + table + f"\n\nwall {run.doc['wall_s']} s", flush=True)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 1 if any(v is False for v in run.doc["summary"]["correctness"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
