"""The complete pipeline on the shipped model, as ``xlsteer demo`` runs it.

language fidelity first (does steering make the model answer LCB's cross-lingual requests in the
requested language? :mod:`xlsteer.demo_fidelity`) -> collect statistics -> fit DiffMean and CLAS
-> choose layer x alpha on XCOPA dev (the unsteered model is a candidate: the choice may be "no
steering") -> evaluate the chosen configurations on XCOPA test against the unsteered model
(paired tests) -> the unscored positive control when asked for (does a DiffMean vector change the
language the model writes in? ``control.json``; off by default, the fidelity stage being its
scored form) -> analysis (similarity to English per layer, logit lens, neuron categories,
projections, gain vs change in similarity) -> one HTML report.

Every stage writes a file into the run directory and is reused when it already exists with the
same inputs, so a re-run is fast and gives the same numbers. Nothing is chosen on test items.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .demo_fidelity import FidelityConfig, format_fidelity, run_fidelity
from .errors import UsageError
from .io import atomic_write_json
from .progress import stage
from .results import SETUP, stamp


@dataclass
class DemoConfig:
    """Sizes of each stage; ``quick()`` is the reduced variant CI runs."""

    model: str = "gemma3-270m"
    langs: tuple[str, ...] = ("zh", "vi", "sw")
    anchor: str = "en"
    task: str = "xcopa"
    # Sizes keep `make demo` (set-up, model conversion and this pipeline) within 5 minutes on a
    # fresh 2-core machine, measured stage by stage (docs/performance.md): scoring one XCOPA item
    # costs ~0.15 s (half of it the 262k-token vocabulary), so the dev grid is 2 layers x 2 alphas
    # (L/4, L/2) on 10 items and the test set 30 items per language. The unscored positive
    # control is off by default: the language-fidelity stage is its scored form (the same
    # DiffMean-toward-a-language question, with CIs, McNemar and the guard); `xlsteer control`
    # or control_langs=("zh",) runs it.
    n_parallel: int = 48  # NTREX fit lines per language for statistics
    diffmean_layers: tuple[int, ...] = (4, 8)
    alphas: tuple[float, ...] = (0.5, 1.0)
    clas_alphas: tuple[float, ...] = (-0.5, 0.5)
    dev_limit: int = 10  # XCOPA val items per language for the sweep
    test_limit: int = 30  # XCOPA test items per language for the reported numbers (--test-limit)
    n_analysis: int = 16  # NTREX validation lines per language for the analysis
    control_langs: tuple[str, ...] = ()  # positive control: output language en <-> each (none: skipped)
    control_prompts: int = 24  # prompts per control direction
    batch_size: int = 8
    seed: int = 0
    fidelity: FidelityConfig | None = field(default_factory=FidelityConfig)  # None: the stage is skipped
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw: Any) -> "DemoConfig":
        base = dict(n_parallel=24, diffmean_layers=(6,), alphas=(1.0,), clas_alphas=(0.5,), dev_limit=8,
                    test_limit=12, n_analysis=12, control_langs=("de",), control_prompts=12,
                    fidelity=FidelityConfig.quick())
        base.update(kw)
        return cls(**base)


def run_demo(run_dir: str | Path, cfg: DemoConfig | None = None, log: Callable[[str], None] = lambda s: None,
             data_dir: str | None = None) -> dict[str, Any]:
    """Run the whole pipeline into ``run_dir``; returns the summary (also written as demo_summary.json)."""
    import torch

    from .data.paths import data_dir as resolve_data_dir
    from .evaluation.control import ControlConfig, run_control
    from .models.loading import load_model
    from .report import build_report

    cfg = cfg or DemoConfig()
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"demo output {run_dir} is a file; give a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = run_dir / "cache"
    root = resolve_data_dir(data_dir)
    torch.manual_seed(cfg.seed)
    langs = [cfg.anchor, *cfg.langs]

    done = stage(log, f"load {cfg.model}")
    lm = load_model(cfg.model)
    done()
    common = dict(anchor=cfg.anchor, data_dir=str(root), seed=cfg.seed, cache_dir=str(cache_dir),
                  batch_size=cfg.batch_size)
    fidelity = run_fidelity(run_dir, lm, cfg.fidelity, common, log) if cfg.fidelity is not None else None
    stats = _statistics(run_dir, lm, cfg, langs, root, log)
    vec, clas = _fit(run_dir, lm, cfg, stats, log)
    sw, sw_clas = _choose_on_dev(run_dir, lm, cfg, langs, vec, clas, common, log)
    best_vec, best_clas = sw["best"], sw_clas["best"]
    runs, comparisons, chosen = _evaluate_on_test(run_dir, lm, cfg, langs, vec, clas, best_vec, best_clas, common, log)

    # 5. positive control: does steering change behaviour at all (output language)?
    control = None
    if cfg.control_langs:
        done = stage(log, f"positive control: output language en <-> {', '.join(cfg.control_langs)}")
        control = _control(run_dir, lm, ControlConfig(target_langs=tuple(cfg.control_langs),
                                                      n_prompts=cfg.control_prompts, batch_size=cfg.batch_size,
                                                      seed=cfg.seed), str(root), run_control)
        done()

    _analysis(run_dir, lm, cfg, langs, root, stats, vec, clas, sw, sw_clas, chosen, list(runs), log)
    done = stage(log, "report")
    report = build_report(run_dir, run_dir / "report.html")
    done()

    wall = time.perf_counter() - t_start
    summary = _summary(cfg, runs, comparisons, best_vec, best_clas, clas, report, wall)
    summary["control"] = control
    summary["fidelity"] = fidelity
    atomic_write_json(run_dir / "demo_summary.json", stamp(SETUP, summary))
    return summary


def _statistics(run_dir: Path, lm: Any, cfg: DemoConfig, langs: list[str], root: Path,
                log: Callable[[str], None]) -> Any:
    """1. Statistics at every ``mlp_act`` and the DiffMean ``resid_post`` sites (reused when the file fits)."""
    from .stats import collect_statistics
    from .models.sites import Site
    from .stats import Statistics

    stats_path = run_dir / "stats.safetensors"
    mlp_sites = [Site(layer, "mlp_act") for layer in range(lm.num_layers)]
    resid_sites = [Site(layer, "resid_post") for layer in cfg.diffmean_layers]
    done = stage(log, f"collect statistics: {len(langs)} languages x {cfg.n_parallel} NTREX lines")
    stats = None
    if stats_path.exists():
        try:
            stats = Statistics.load(stats_path, fingerprint=lm.fingerprint)
            if stats.meta.get("limit") != cfg.n_parallel or set(stats.langs) != set(langs) or \
                    set(stats.sites) != set(mlp_sites + resid_sites):
                stats = None
        except Exception:  # stale or foreign file: collect again
            stats = None
    if stats is None:
        stats = collect_statistics(lm, langs=langs, sites=mlp_sites + resid_sites, corpus="ntrex",
                                   data_dir=str(root), split="fit", limit=cfg.n_parallel,
                                   batch_size=cfg.batch_size, max_length=96)
        stats.save(stats_path)
    done()
    return stats


def _fit(run_dir: Path, lm: Any, cfg: DemoConfig, stats: Any, log: Callable[[str], None]) -> tuple[Any, Any]:
    """2. DiffMean at the configured layers and CLAS at its bridge layers, saved into ``run_dir``."""
    from .interventions.clas import fit_clas
    from .interventions.vector import fit_diffmean

    done = stage(log, "fit DiffMean and CLAS")
    vec = fit_diffmean(stats, layers=list(cfg.diffmean_layers), target_langs=list(cfg.langs), anchor=cfg.anchor,
                       meta={"model_fingerprint": lm.fingerprint, "data_hash": stats.meta.get("data_hash")})
    vec.save(run_dir / "diffmean.safetensors")
    clas = fit_clas(stats, langs=list(cfg.langs), anchor=cfg.anchor, n_layers=lm.num_layers,
                    meta={"model_fingerprint": lm.fingerprint, "data_hash": stats.meta.get("data_hash")})
    clas.save(run_dir / "clas.safetensors")
    done()
    log(f"CLAS bridge layers: {clas.layers} ({clas.params.get('bridge_rule', '')})")
    return vec, clas


def _choose_on_dev(run_dir: Path, lm: Any, cfg: DemoConfig, eval_langs: list[str], vec: Any, clas: Any,
                   common: dict[str, Any], log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """3. The sweeps that choose DiffMean's layer x alpha and CLAS's alpha, on dev only."""
    from .evaluation.sweep import ALL_LAYERS, sweep

    done = stage(log, f"sweep DiffMean layers {list(cfg.diffmean_layers)} x alphas {list(cfg.alphas)} on dev")
    sw = sweep(lm, cfg.task, eval_langs, intervention=vec, layers=list(cfg.diffmean_layers), alphas=list(cfg.alphas),
               split="dev", limit=cfg.dev_limit, **common)
    atomic_write_json(run_dir / "sweep_diffmean.json", sw)
    done()
    done = stage(log, f"choose CLAS alpha among {list(cfg.clas_alphas)} on dev")
    sw_clas = sweep(lm, cfg.task, eval_langs, intervention=clas, layers=[ALL_LAYERS], alphas=list(cfg.clas_alphas),
                    split="dev", limit=cfg.dev_limit,
                    source={"kind": "clas", "layers": clas.layers, "note": "CLAS acts at all its bridge layers"},
                    **common)
    atomic_write_json(run_dir / "sweep_clas.json", sw_clas)
    done()
    return sw, sw_clas


def _evaluate_on_test(run_dir: Path, lm: Any, cfg: DemoConfig, eval_langs: list[str], vec: Any, clas: Any,
                      best_vec: dict[str, Any], best_clas: dict[str, Any], common: dict[str, Any],
                      log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any], tuple[Any, Any]]:
    """4. Unsteered, DiffMean (chosen layer, alpha) and CLAS (chosen alpha) on test, paired against unsteered.

    A method for which the unsteered model won on dev is evaluated unsteered ("no steering").
    Returns the runs, the comparisons and the chosen ``(DiffMean, CLAS)`` interventions (None:
    no steering).
    """
    from .evaluation import runner as R
    from .evaluation.pairing import compare_runs
    from .evaluation.sweep import chosen_intervention, for_layer

    done = stage(log, f"evaluate on {cfg.task} test ({cfg.test_limit} items per language)")
    chosen_vec = chosen_intervention(lambda layer, a: for_layer(vec, layer).with_strength(a), best_vec)
    chosen_clas = chosen_intervention(lambda layer, a: clas.with_strength(a), best_clas)
    runs = {
        "zero-shot": R.run_task(lm, cfg.task, eval_langs, split="test", limit=cfg.test_limit, **common),
        "diffmean": R.run_task(lm, cfg.task, eval_langs, split="test", limit=cfg.test_limit,
                               interventions=chosen_vec, **common),
        "clas": R.run_task(lm, cfg.task, eval_langs, split="test", limit=cfg.test_limit,
                           interventions=chosen_clas, **common),
    }
    comparisons = {}
    for name, res in runs.items():
        res["method"] = name
        R.write_results(run_dir / f"eval_{name}.json", res)
        if name != "zero-shot":
            comparisons[name] = compare_runs(runs["zero-shot"], res)
            comparisons[name]["method"] = name
            atomic_write_json(run_dir / f"compare_{name}.json", comparisons[name])
    done()
    return runs, comparisons, (chosen_vec, chosen_clas)


def _analysis(run_dir: Path, lm: Any, cfg: DemoConfig, langs: list[str], root: Path, stats: Any, vec: Any,
              clas: Any, sw: dict[str, Any], sw_clas: dict[str, Any], chosen: tuple[Any, Any],
              run_names: list[str], log: Callable[[str], None]) -> None:
    """6. Analysis on held-out parallel text (NTREX validation lines).

    A method that chose "no steering" is analysed at its best steered configuration on dev.
    """
    from .analysis.run import analyze
    from .data.corpora import load_ntrex
    from .analysis.run import AnalysisInputs
    from .evaluation.sweep import for_layer

    chosen_vec, chosen_clas = chosen
    done = stage(log, "analysis (similarity, logit lens, neuron map, projections, regression)")
    held = load_ntrex(root, langs, split="validation", limit=cfg.n_analysis)
    vec_seen = sw["best_steered"]
    analysis_layers = sorted(set(range(0, lm.num_layers, 3)) | {vec_seen["layer"]})
    analyze(lm, run_dir, {lang: held.texts[lang] for lang in langs}, analysis_layers,
            {"diffmean": chosen_vec or for_layer(vec, vec_seen["layer"]).with_strength(vec_seen["alpha"]),
             "clas": chosen_clas or clas.with_strength(sw_clas["best_steered"]["alpha"])},
            inputs=AnalysisInputs(stats=stats, eval_results=[run_dir / f"eval_{n}.json" for n in run_names],
                                  meta={"corpus": "ntrex", "split": "validation", "data_hash": held.data_hash}),
            anchor=cfg.anchor, batch_size=cfg.batch_size, projections=("pca", "tsne"))
    done()


def _control(run_dir: Path, lm: Any, cfg: Any, data_dir: str, run: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """``<run>/control.json``, reused when it was written for this model and configuration."""
    from dataclasses import asdict

    from .io import read_json

    path = run_dir / "control.json"
    if path.is_file():
        try:
            old = read_json(path, "control record")
            prov = old.get("provenance", {})
            wanted = {**asdict(cfg), "layer": old.get("layer")}
            if prov.get("model_fingerprint") == lm.fingerprint and \
                    {k: (list(v) if isinstance(v, tuple) else v) for k, v in wanted.items()} == prov.get("config"):
                return old
        except Exception:  # stale or foreign file: run again
            pass
    record = run(lm, cfg, data_dir=data_dir)
    atomic_write_json(path, record)
    return record


def _summary(cfg, runs, comparisons, best_vec, best_clas, clas, report, wall) -> dict[str, Any]:
    def cell(res: dict, lang: str, metric: str = "acc", group: str = "metrics") -> dict[str, Any]:
        m = res["per_lang"][lang][group][metric]
        return {"mean": m["mean"], "ci_low": m["ci_low"], "ci_high": m["ci_high"]}

    table: dict[str, dict[str, Any]] = {}
    for name, res in runs.items():
        row: dict[str, Any] = {}
        for lang in res["langs"]:
            entry: dict[str, Any] = {"acc": cell(res, lang), "margin": cell(res, lang, "margin", "continuous")}
            cons = res["per_lang"][lang].get("consistency")
            if cons:
                entry["agreement_with_en"] = cons.get("agreement")
                entry["js_to_en"] = cons.get("js_divergence") or cons.get("mean_js_divergence")
            if name in comparisons:
                cmp = comparisons[name]["per_lang"][lang]
                entry["acc_diff"] = {k: cmp["metrics"]["acc"][k] for k in ("diff", "p", "mde", "verdict")}
                entry["margin_diff"] = {k: cmp["continuous"]["margin"][k] for k in ("diff", "p", "verdict")}
                entry["prediction_changed"] = cmp["prediction_changed"]
            row[lang] = entry
        table[name] = row
    return {
        "config": {k: (asdict(v) if k == "fidelity" and v is not None else v) for k, v in cfg.__dict__.items()
                   if k != "extra"},
        "selected": {"diffmean": {"layer": best_vec["layer"], "alpha": best_vec["alpha"], "split": "dev",
                                  "steer": best_vec["steer"], "evidence": best_vec.get("evidence")},
                     "clas": {"alpha": best_clas["alpha"], "bridge_layers": clas.layers, "split": "dev",
                              "steer": best_clas["steer"], "evidence": best_clas.get("evidence")}},
        "table": table,
        "report": str(report),
        "wall_seconds": round(wall, 1),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table: accuracy [CI], margin, paired verdicts; and what moved and what did not."""
    from . import formats
    from .evaluation.control import format_control

    lines = []
    if summary.get("fidelity"):
        lines += [format_fidelity(summary["fidelity"]), ""]
    sel = summary["selected"]
    vec = sel["diffmean"]
    cl = sel["clas"]
    from .evaluation.evidence import evidence_text

    no = "no steering (no setting beat the unsteered model on dev beyond noise; its test scores are the unsteered " \
         "model's)"
    lines.append("chosen on dev: DiffMean " + (f"layer {vec['layer']} alpha {vec['alpha']}" if vec["steer"] else no)
                 + "; CLAS " + (f"alpha {cl['alpha']} at bridge layers {cl['bridge_layers']}" if cl["steer"] else
                                f"{no} (bridge layers {cl['bridge_layers']})"))
    for name, chosen in (("DiffMean", vec), ("CLAS", cl)):
        if chosen.get("evidence"):
            lines.append(f"  {name} on dev: {evidence_text(chosen['evidence'])}")
    table = summary["table"]
    langs = list(next(iter(table.values())).keys())
    lines.append("")
    lines.append("accuracy on test [95% CI]  (margin = log-prob of gold minus best wrong choice)")
    rows = []
    for name, row in table.items():
        rows.append([name, *(f"{row[lang]['acc']['mean']:.3f} [{row[lang]['acc']['ci_low']:.2f},"
                             f"{row[lang]['acc']['ci_high']:.2f}]" for lang in langs)])
        rows.append(["", *(f"margin {row[lang]['margin']['mean']:+.3f}" for lang in langs)])
    lines.append(formats.table(["method", *langs], rows, style="text"))
    lines.append("")
    lines.append("paired against zero-shot on the same items:")
    significant = []
    for name, row in table.items():
        for lang in langs:
            d = row[lang].get("acc_diff")
            if not d:
                continue
            m = row[lang]["margin_diff"]
            lines.append(f"  {name:<9} {lang}: acc {d['diff']:+.3f} ({formats.p_inline(d['p'])}, MDE {d['mde']:.3f}) "
                         f"-> {d['verdict']}; margin {m['diff']:+.3f} ({formats.p_inline(m['p'])}) -> {m['verdict']}; "
                         f"{100 * row[lang]['prediction_changed']:.0f}% predictions changed")
            if d["p"] < 0.05:
                significant.append(f"{name}/{lang} accuracy")
            if m["p"] < 0.05:
                significant.append(f"{name}/{lang} margin")
    lines.append("")
    if significant:
        lines.append("significant at p < 0.05 (uncorrected): " + ", ".join(significant))
    else:
        lines.append("no difference is significant at p < 0.05: on this small model steering shows no measurable "
                     "effect on these items (see the MDE: smaller effects cannot be detected with this n)")
    if summary.get("control"):
        lines.append("")
        lines.append(format_control(summary["control"]))
        lines.append("the intervention changes behaviour (control); the task scores above show whether it changes "
                     "the task score")
    lines.append(f"report: {summary['report']}")
    lines.append(f"wall time: {summary['wall_seconds']:.1f} s")
    return "\n".join(lines)
