"""The demo's first stage: does steering make the model answer in the language the user asked for?

Why it leads: on the shipped model every task score is null, but steering demonstrably changes
the language the model writes in; LCB's cross-lingual prompts (English requests such as "Reply
in German. ...", :mod:`xlsteer.evaluation.tasks.lcb`) are where that is the goal and is scored —
unsteered, Gemma-3-270M answers them in English. The stage:

1. statistics of ``resid_post`` at ``layer`` for English and the stage's languages (NTREX fit lines);
2. DiffMean toward each row's wanted language (``direction=to_target``) at that layer;
3. its strength chosen on LCB's dev rows among ``alphas`` with "no steering" a candidate
   (:func:`xlsteer.evaluation.sweep.sweep`; nothing is chosen on test items);
4. the unsteered and the chosen steered model on the first ``test_limit`` test prompts per language,
   with upstream's decoding (nucleus sampling seeded per item, so both runs are paired) cut at
   ``max_new_tokens``; the line-level pass rate with its CI, the paired test (McNemar) and the
   quality guard (fluency under the unsteered model, repetition) per language
   (``eval_lcb_*.json``, ``compare_lcb_steered.json``: the report reads them);
5. three example outputs per language, unsteered and steered side by side.

Every file is reused by a re-run with the same inputs (the per-item cache), like the other stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .io import atomic_write_json
from .progress import stage


@dataclass(frozen=True)
class FidelityConfig:
    """Sizes of the stage (small: it must fit the demo's time on 2 CPU cores)."""

    task: str = "lcb-cross-okapi"
    # a Latin-script and a CJK target: decoding costs ~0.2 s per step on 2 CPU cores whatever the
    # batch (the 262k-token head dominates), and batches never mix languages, so every language and
    # every dev candidate adds max_new_tokens steps
    langs: tuple[str, ...] = ("de", "zh")
    layer: int = 4  # L/4 of Gemma-3-270M, where the positive control's vector acts
    alphas: tuple[float, ...] = (1.0,)  # dev chooses between this and no steering
    n_parallel: int = 48  # NTREX fit lines per language for the vectors
    # LCB dev prompts per language for the choice of alpha: with 8 dev prompts the exact paired test
    # can reach p < 0.05 even if two of them do not change (4 would give p >= 0.125 at best)
    dev_limit: int = 4
    test_limit: int = 8  # LCB test prompts per language for the reported pass rates
    max_new_tokens: int = 32  # upstream: 100
    n_examples: int = 3

    @classmethod
    def quick(cls) -> "FidelityConfig":
        return cls(langs=("de", "zh"), alphas=(1.0,), n_parallel=16, dev_limit=3, test_limit=4, max_new_tokens=24)


def run_fidelity(run_dir: Path, lm: Any, cfg: FidelityConfig, common: dict[str, Any],
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Run the stage into ``run_dir``; returns its summary (``fidelity`` of demo_summary.json)."""
    from .evaluation.pairing import compare_runs
    from .evaluation.runner import run_task, write_results
    from .evaluation.sweep import chosen_intervention, for_layer, sweep

    langs = list(cfg.langs)
    vec = _vectors(run_dir, lm, cfg, common, log)
    opts = {"max_new_tokens": cfg.max_new_tokens}
    t = stage(log, f"language fidelity: choose DiffMean alpha among {list(cfg.alphas)} on {cfg.task} dev")
    sw = sweep(lm, cfg.task, langs, intervention=vec, layers=[cfg.layer], alphas=list(cfg.alphas), split="dev",
               limit=cfg.dev_limit, template_options=opts, **common)
    atomic_write_json(run_dir / "sweep_lcb.json", sw)
    t()
    t = stage(log, f"language fidelity: {cfg.task} test, {cfg.test_limit} prompts per language, unsteered and steered")
    chosen = chosen_intervention(lambda layer, a: for_layer(vec, layer).with_strength(a), sw["best"])
    base = run_task(lm, cfg.task, langs, None, split="test", limit=cfg.test_limit, template_options=opts, **common)
    steered = run_task(lm, cfg.task, langs, chosen, split="test", limit=cfg.test_limit, template_options=opts,
                       **common)
    base["method"], steered["method"] = "unsteered", "diffmean-to-target"
    write_results(run_dir / "eval_lcb_unsteered.json", base)
    write_results(run_dir / "eval_lcb_steered.json", steered)
    cmp = compare_runs(base, steered)
    cmp["method"] = "diffmean-to-target"
    atomic_write_json(run_dir / "compare_lcb_steered.json", cmp)
    t()
    return summarize(cfg, sw["best"], base, steered, cmp)


def _vectors(run_dir: Path, lm: Any, cfg: FidelityConfig, common: dict[str, Any], log: Callable[[str], None]) -> Any:
    """DiffMean toward each wanted language at ``cfg.layer`` (``lcb_diffmean.safetensors``)."""
    from .data.corpora import load_ntrex
    from .interventions.vector import fit_diffmean
    from .models.sites import Site
    from .stats import collect

    t = stage(log, f"language fidelity: DiffMean toward {', '.join(cfg.langs)} at layer {cfg.layer}")
    langs = [common.get("anchor", "en"), *cfg.langs]
    corpus = load_ntrex(common.get("data_dir"), langs, split="fit", limit=cfg.n_parallel)
    stats = collect(lm, corpus.texts, [Site(cfg.layer, "resid_post")], batch_size=common.get("batch_size", 8),
                    max_length=96, meta={"model_fingerprint": lm.fingerprint, "data_hash": corpus.data_hash})
    vec = fit_diffmean(stats, [cfg.layer], list(cfg.langs), anchor=langs[0], direction="to_target",
                       meta={"model_fingerprint": lm.fingerprint, "data_hash": corpus.data_hash})
    vec.save(run_dir / "lcb_diffmean.safetensors")
    t()
    return vec


def _cell(res: dict[str, Any], lang: str, metric: str) -> dict[str, float]:
    m = res["per_lang"][lang]["metrics"][metric]
    return {"mean": m["mean"], "ci_low": m["ci_low"], "ci_high": m["ci_high"]}


def summarize(cfg: FidelityConfig, best: dict[str, Any], base: dict[str, Any], steered: dict[str, Any],
              cmp: dict[str, Any]) -> dict[str, Any]:
    """Per language: pass rate unsteered -> steered [CI], the paired test, the guard; three examples."""
    main = base["metrics"]["main"] if base["metrics"].get("main") == "line_pass" else "line_pass"
    rows = {}
    for lang in cfg.langs:
        test = cmp["per_lang"][lang]["metrics"][main]
        rows[lang] = {"n": base["per_lang"][lang]["n"], "unsteered": _cell(base, lang, main),
                      "steered": _cell(steered, lang, main), "diff": test["diff"], "p": test["p"],
                      "verdict": test["verdict"],
                      "guard": {g: {"unsteered": base["per_lang"][lang]["continuous"][g]["mean"],
                                    "steered": steered["per_lang"][lang]["continuous"][g]["mean"],
                                    "p": cmp["per_lang"][lang]["continuous"].get(g, {}).get("p")}
                                for g in ("fluency", "degeneration") if g in base["per_lang"][lang]["continuous"]}}
    return {"task": cfg.task, "split": "test", "metric": main, "method": "DiffMean toward the wanted language",
            "layer": cfg.layer, "selected": {"steer": bool(best.get("steer")), "alpha": best.get("alpha"),
                                             "split": "dev", "dev_limit": cfg.dev_limit, "alphas": list(cfg.alphas),
                                             "evidence": best.get("evidence")},
            "max_new_tokens": cfg.max_new_tokens, "rows": rows, "examples": examples(base, steered, cfg)}


def examples(base: dict[str, Any], steered: dict[str, Any], cfg: FidelityConfig) -> dict[str, list[dict[str, Any]]]:
    """The first ``n_examples`` items per language: the unsteered and the steered output, with verdicts."""
    from .report.outputs_view import paired_items

    out: dict[str, list[dict[str, Any]]] = {}
    for lang, it, other in paired_items(base["items"], steered["items"], cfg.n_examples):
        out.setdefault(lang, []).append({"id": it["id"], "unsteered": it["generated"], "steered": other["generated"],
                                         "unsteered_pass": it["scores"].get("line_pass"),
                                         "steered_pass": other["scores"].get("line_pass")})
    return out


def _p(p: float | None) -> str:
    return "n/a" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _short(text: str, width: int = 70) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_fidelity(fid: dict[str, Any]) -> str:
    """The stage in plain text: the choice, pass rates unsteered -> steered with CI, p and the guard, examples."""
    from .evaluation.evidence import evidence_text

    sel = fid["selected"]
    why = f" ({evidence_text(sel['evidence'])})" if sel.get("evidence") else ""
    choice = (f"alpha {sel['alpha']} chosen on {sel['dev_limit']} dev prompts per language{why}" if sel["steer"] else
              f"no steering (no steered setting was better on dev with evidence{why}; the steered column repeats "
              "the unsteered model)")
    lines = [f"Language fidelity — {fid['task']} (English requests asking for another language), "
             f"{fid['method']} at layer {fid['layer']}: {choice}; at most {fid['max_new_tokens']} new tokens",
             f"{'lang':<5} {'n':>3}  {'line pass unsteered':>22} -> {'steered [95% CI]':<22} {'diff':>6} {'p':>8}"
             f"  {'fluency':>15}  {'repetition':>13}"]
    for lang, r in fid["rows"].items():
        u, s = r["unsteered"], r["steered"]
        g = r["guard"]
        flu = g.get("fluency", {})
        rep = g.get("degeneration", {})
        lines.append(f"{lang:<5} {r['n']:>3}  {u['mean']:.2f} [{u['ci_low']:.2f}, {u['ci_high']:.2f}]{'':>6} -> "
                     f"{s['mean']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]{'':>6} {r['diff']:+.2f} {_p(r['p']):>8}"
                     f"  {flu.get('unsteered', float('nan')):+.2f} -> {flu.get('steered', float('nan')):+.2f}"
                     f"  {rep.get('unsteered', float('nan')):.2f} -> {rep.get('steered', float('nan')):.2f}")
    lines.append("line pass: every line of the answer in the requested language (LCB's line-level check, fastText "
                 "lid.176); p: exact McNemar test on the paired items; fluency: mean log-likelihood per token under "
                 "the unsteered model (higher = more fluent); repetition: share of repeated 4-grams")
    for lang, exs in fid["examples"].items():
        for ex in exs:
            lines.append(f"  {lang} {ex['id'].rsplit('/', 1)[-1]:>3}  unsteered: {_short(ex['unsteered'])}")
            lines.append(f"  {'':<6}     steered: {_short(ex['steered'])}")
    return "\n".join(lines)
