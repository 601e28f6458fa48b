"""The stages of :func:`xlsteer.analysis.run.analyze`: each reads the shared context and writes its files.

Why a module of its own: ``analyze`` decides what runs (inputs, layers, the setup file); each
stage here is one analysis (similarity, logit lens, projections, regression, neuron map, model
comparison) with its figures, JSON file and notes, run in the order ``analyze`` gives. They share
one :class:`_Context` (model, texts, layers, interventions, writer, result so far).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import XlsteerError
from ..filenames import confined, slug as _slug
from ..io import atomic_write_json
from ..provenance import provenance
from ..results import stamp
from . import plots
from .compare_models import compare_models
from .logit_lens import language_shares, shares_from_hidden
from .neuron_map import neuron_map
from .projection import project
from .regression import delta_similarity, gain_vs_similarity, gains_from_scores
from .similarity import covered_langs, pooled_states, similarity_from_items


def _by_lang(by_layer: Mapping[int, Mapping[str, Any]] | None) -> dict[str, dict[int, Any]]:
    """``{layer: {lang: rows}}`` -> ``{lang: {layer: rows}}`` (the lens's layout)."""
    out: dict[str, dict[int, Any]] = {}
    for layer, by_lang in (by_layer or {}).items():
        for lang, rows in by_lang.items():
            out.setdefault(lang, {})[layer] = rows
    return out


def _match_method(name: str, methods: Sequence[str], n_interventions: int, iv: Any = None,
                  rows: Sequence[Mapping[str, Any]] = ()) -> str | None:
    """The eval method that ran intervention ``name``: same tensors (intervention hash), else same name."""
    if iv is not None:
        try:
            from ..evaluation.engine_cache import intervention_hash

            h = intervention_hash([iv])
        except (ImportError, AttributeError, TypeError):
            h = None
        same = sorted({r["method"] for r in rows if h and r.get("intervention_hash") == h and not r.get("is_baseline")})
        if len(same) == 1:
            return same[0]
    if name in methods:
        return name
    lower = {m.lower(): m for m in methods}
    if name.lower() in lower:
        return lower[name.lower()]
    labelled = [m for m in methods if m.lower().split(" ")[0] == name.lower()]  # "diffmean L4 α1"
    if len(labelled) == 1:
        return labelled[0]
    if len(methods) == 1 and n_interventions == 1:
        return methods[0]
    return None


class _Writer:
    """Writes JSON and figures into the run directory and remembers what it wrote."""

    def __init__(self, run_dir: Path, common: Mapping[str, Any]):
        self.run_dir = run_dir
        self.fig_dir = run_dir / "figures"
        self.common = dict(common)
        self.files: list[Path] = []
        self.figures: list[Path] = []

    def json(self, name: str, analysis: str, body: Mapping[str, Any], kind: str = "analysis") -> Path:
        doc = stamp(f"xlsteer.{kind}", {**({"analysis": analysis} if kind == "analysis" else {}), **self.common,
                                        **body, "provenance": provenance()})
        path = atomic_write_json(confined(self.run_dir, name), doc)
        self.files.append(path)
        return path

    def figure(self, name: str, fig: Any) -> str:
        path = plots.save_png(fig, confined(self.fig_dir, name))
        self.figures.append(path)
        return f"figures/{name}"


@dataclass
class _Context:
    """What every stage of :func:`analyze` reads (model, texts, layers, interventions) and adds to.

    ``runs`` are the conditions analysed against the one unsteered run: each named
    intervention, or only :data:`NO_INTERVENTION` when there is none. ``fwd`` holds the
    forward options (batch size, max length) every stage passes on.
    """

    lm: Any
    w: _Writer
    texts: dict[str, Any]
    langs: list[str]
    anchor: str
    capture: list[int]
    ivs: dict[str, Any]
    runs: list[tuple[str, Any]]
    fwd: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=lambda: {
        "similarity": {}, "logit_lens": {}, "projection": [], "regression": [], "neuron_map": None,
        "compare_models": None})


def _similarity_stage(ctx: _Context, pooling: str, lens_in_pass: bool) -> tuple[Any, dict, tuple[dict, dict]]:
    """1. Similarity to the anchor per layer, unsteered and per intervention.

    Returns the unsteered pooled items, each run's steered ones (reused by the projections),
    and the last-token rows ``(unsteered, per run)`` the lens decodes when ``lens_in_pass``.
    """
    anchor, langs = ctx.anchor, ctx.langs
    poolings = (pooling, "last") if lens_in_pass else (pooling,)
    kw = dict(anchor=anchor, **ctx.fwd)
    states = pooled_states(ctx.lm, ctx.texts, ctx.capture, poolings=poolings, **kw)
    before = states[pooling]
    lens_rows_before = _by_lang(states.get("last"))
    lens_rows_after: dict[str, Any] = {}  # intervention name -> {lang: {layer: rows}}
    after_items: dict[str, dict[int, dict[str, Any]] | None] = {}
    for name, iv in ctx.runs:
        doc_notes: list[str] = []
        after = None
        steered: list[str] = []
        if iv is not None:
            covered = covered_langs(iv, langs, anchor)
            steered = [lang for lang in covered if lang != anchor]
            uncovered = [lang for lang in langs if lang not in covered]
            if uncovered:
                doc_notes.append(f"{name} cannot steer {', '.join(uncovered)} (not among its languages); "
                                 "those keep their unsteered vectors")
            if steered:
                got_all = pooled_states(ctx.lm, {lang: ctx.texts[lang] for lang in steered}, ctx.capture,
                                        poolings=poolings, interventions=iv, **kw)
                got = got_all[pooling]
                after = {layer: {lang: got[layer].get(lang, before[layer][lang]) for lang in langs}
                         for layer in ctx.capture}
                lens_rows_after[name] = _by_lang(got_all.get("last"))
            else:
                doc_notes.append(f"{name} steers none of the languages; nothing to compare")
                lens_rows_after[name] = {}
        after_items[name] = after
        sim = similarity_from_items(before, after, anchor, {"pooling": pooling, "site": "resid_post"},
                                    steered_langs=steered if after else None)
        slug = _slug(name)
        figs = [ctx.w.figure(f"similarity_{slug}.png", plots.plot_similarity(
                    sim, title=f"Similarity to {anchor} per layer" + (f" — {name}" if iv is not None else ""))),
                ctx.w.figure(f"separation_{slug}.png", plots.plot_separation(
                    sim, title="Language separation per layer" + (f" — {name}" if iv is not None else "")))]
        ctx.w.json(f"analysis_similarity_{slug}.json", "similarity",
                   {"intervention": None if iv is None else name, **sim, "figures": figs, "notes": doc_notes})
        ctx.result["similarity"][name] = sim
        ctx.notes.extend(doc_notes)
    return before, after_items, (lens_rows_before, lens_rows_after)


def _logit_lens_stage(ctx: _Context, k: int, lens_positions: str, lens_rows: tuple[dict, dict] | None) -> None:
    """2. Logit lens: the language shares of the top-k decoded tokens per layer, before and after.

    ``lens_rows``: the last-token rows read in the similarity pass (``lens_positions == "last"``);
    None for every token, which needs forwards of its own (rows of all tokens are not pooled).
    """
    lens_kw = dict(anchor=ctx.anchor, k=k, positions=lens_positions)
    lens_before = None if lens_rows is not None else language_shares(ctx.lm, ctx.texts, ctx.capture, **ctx.fwd,
                                                                      **lens_kw)
    for name, iv in ctx.runs:
        if lens_rows is not None:
            lens = shares_from_hidden(ctx.lm, lens_rows[0], lens_rows[1].get(name), ctx.capture, **lens_kw)
        elif iv is None:
            lens = lens_before
        else:
            covered = covered_langs(iv, ctx.langs, ctx.anchor)
            lens_after = language_shares(ctx.lm, {lang: ctx.texts[lang] for lang in covered}, ctx.capture,
                                         interventions=iv, **ctx.fwd, **lens_kw)
            lens = {**lens_before, "after": lens_after["after"],
                    "examples": {"before": lens_before["examples"]["before"], "after": lens_after["examples"]["after"]}}
        slug = _slug(name)
        fig = ctx.w.figure(f"logit_lens_{slug}.png", plots.plot_logit_lens(
            lens, title=None if iv is None else f"Logit lens (top-{k}) — {name}: before (solid) / after (dashed)"))
        doc_notes = [f"lens skipped {lang}: {why}" for lang, why in lens.get("skipped", {}).items()]
        ctx.w.json(f"analysis_logit_lens_{slug}.json", "logit_lens",
                   {"intervention": None if iv is None else name, **lens, "figures": [fig], "notes": doc_notes})
        ctx.result["logit_lens"][name] = lens


def _projection_stage(ctx: _Context, before: Any, after_items: Mapping[str, Any], projection_layer: int,
                      projections: Sequence[str], random_state: int) -> None:
    """4. Projections (PCA, t-SNE) of the pooled items at ``projection_layer``, before and after."""
    proj_docs = []
    for name, iv in ctx.runs:
        after = after_items.get(name)
        for method in projections:
            try:
                p = project(before[projection_layer], after[projection_layer] if after else None, method=method,
                            random_state=random_state, layer=projection_layer)
            except XlsteerError as e:
                ctx.notes.append(f"projection {method} for {name} skipped: {e}")
                continue
            p["intervention"] = None if iv is None else name
            fig = plots.plot_projection(p, title=f"{'t-SNE' if method == 'tsne' else 'PCA'} at layer "
                                                 f"{projection_layer}" + (f" — {name}" if iv is not None else ""))
            p["figure"] = ctx.w.figure(f"projection_{_slug(name)}_{method}.png", fig)
            proj_docs.append(p)
    if proj_docs:
        ctx.w.json("analysis_projection.json", "projection", {"layer": projection_layer, "projections": proj_docs})
    ctx.result["projection"] = proj_docs


def _regression_stage(ctx: _Context, docs: list[dict], regression_layer: int) -> None:
    """5. Regression of each language's gain (eval scores) on its change in similarity at ``regression_layer``."""
    from ..results.rows import score_rows

    ivs, result = ctx.ivs, ctx.result
    reg_notes: list[str] = []
    if docs and ivs:
        rows = score_rows(docs)
        # runner files name their main metric (acc, em, f1): regress on that one only
        mains = {d["metrics"]["main"] for d in docs if isinstance(d.get("metrics"), Mapping) and d["metrics"].get("main")}
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            if not mains or r.get("metric") in mains:
                groups.setdefault((r.get("task"), r.get("metric")), []).append(r)
        for name, iv in ivs.items():
            delta, used = delta_similarity(result["similarity"][name], regression_layer)
            for (task, metric), grp in groups.items():
                methods = sorted({r["method"] for r in grp if not r.get("is_baseline")})
                match = _match_method(name, methods, len(ivs), iv, grp)
                if match is None:
                    reg_notes.append(f"no eval scores for '{name}' in {task or '?'} (methods there: "
                                     f"{', '.join(methods) or 'none'}); name the eval method like the intervention")
                    continue
                gains = gains_from_scores(grp, match)
                reg = gain_vs_similarity(gains, delta, method=name, anchor=ctx.anchor, layer=used)
                reg.update(task=task, metric=metric, eval_method=match)
                suffix = f"_{_slug(task)}_{_slug(metric)}" if task and len(groups) > 1 else ""
                reg["figure"] = ctx.w.figure(f"regression_{_slug(name)}{suffix}.png", plots.plot_regression(
                    reg, title=f"Gain vs. change in similarity — {name}" + (f" ({task})" if task else "")))
                result["regression"].append(reg)
    elif ivs:
        reg_notes.append("no evaluation results given: the gain-vs-similarity regression needs per-language scores "
                         "of the same methods")
    if result["regression"] or reg_notes:
        ctx.w.json("analysis_regression.json", "regression", {"regressions": result["regression"], "notes": reg_notes})
    ctx.notes.extend(reg_notes)


def _neuron_map_stage(ctx: _Context, stats: Any, categories: Any, lape: Any, bridge_layers: Sequence[int] | None,
                      n_layers: int) -> None:
    """3. Neuron map: CLAS categories and LAPE neurons per layer, with the bridge layers marked."""
    nm_notes: list[str] = []
    if bridge_layers is None:
        clas = [iv for iv in ctx.ivs.values() if getattr(iv, "method", "") == "clas"]
        if clas:
            bridge_layers = sorted({layer for iv in clas for layer in iv.layers})
    if stats is not None and (categories is None or lape is None):
        categories, lape, bridge_layers = _from_stats(stats, categories, lape, bridge_layers, n_layers, nm_notes)
    if categories is not None or lape is not None:
        summary = neuron_map(categories, lape, bridge_layers)
        figs = [ctx.w.figure(f"{name}.png", fig) for name, fig in plots.neuron_figures(summary).items()]
        ctx.w.json("analysis_neuron_map.json", "neuron_map", {**summary, "figures": figs, "notes": nm_notes})
        ctx.result["neuron_map"] = summary
    ctx.notes.extend(nm_notes)


def _compare_stage(ctx: _Context, compare_with: Any, compare_labels: tuple[str, str] | None, pooling: str) -> None:
    """6. Base vs instruct: the same similarity measures on a second model, side by side."""
    lm = ctx.lm
    labels = compare_labels or (str(getattr(lm, "name", "first")), str(getattr(compare_with, "name", "second")))
    if labels[0] == labels[1]:
        labels = (f"{labels[0]} (1)", f"{labels[1]} (2)")
    cmp = compare_models(lm, compare_with, ctx.texts, ctx.capture, anchor=ctx.anchor, pooling=pooling, labels=labels,
                         **ctx.fwd)
    fig = ctx.w.figure("compare_models.png", plots.plot_compare_models(cmp))
    ctx.w.json("analysis_compare_models.json", "compare_models", {**cmp, "figures": [fig]})
    ctx.result["compare_models"] = cmp


def _from_stats(stats: Any, categories: Any, lape: Any, bridge_layers: Any, n_layers: int,
                notes: list[str]) -> tuple[Any, Any, Any]:
    """CLAS categories, bridge layers and LAPE neurons from ``mlp_act`` statistics (what is missing)."""
    mlp_layers = sorted({s.layer for s in getattr(stats, "sites", []) if s.name == "mlp_act"})
    if not mlp_layers:
        notes.append("the statistics have no mlp_act sites; collect with --site mlp_act for the neuron map")
        return categories, lape, bridge_layers
    langs = list(stats.langs)
    if categories is None:
        try:
            from ..interventions.clas import neuron_categories, select_bridge_layers

            categories = neuron_categories(stats, mlp_layers, langs)
            if bridge_layers is None:
                try:
                    bridge_layers = select_bridge_layers(categories, n_layers)["layers"]
                except XlsteerError as e:
                    notes.append(f"no bridge layers marked: {e}")
        except ImportError:
            notes.append("CLAS categories unavailable (xlsteer.interventions.clas not installed)")
        except XlsteerError as e:
            notes.append(f"CLAS categories not computed: {e}")
    if lape is None:
        try:
            from ..interventions.neurons import lape_neurons

            gate_layers = sorted({s.layer for s in stats.sites if s.name == "mlp_gate"})
            # LAPE counts P(act(gate) > 0) (mlp_gate) when collected, else the product at mlp_act
            lape = (lape_neurons(stats, gate_layers, langs, site="mlp_gate") if gate_layers
                    else lape_neurons(stats, mlp_layers, langs, site="mlp_act"))
        except ImportError:
            notes.append("LAPE neurons unavailable (xlsteer.interventions.neurons not installed)")
        except XlsteerError as e:
            notes.append(f"LAPE neurons not computed: {e}")
    return categories, lape, bridge_layers
