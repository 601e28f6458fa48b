"""``analyze``: every analysis of a model and its interventions, written into a run directory.

What it writes (see :mod:`xlsteer.report` for the run-directory layout):

=====================================  ==========================================================
``setup_analysis.json`` (setup)        model, fingerprint, languages, layers, parameters, the
                                       interventions' metadata, data hash (from ``meta``), versions
``analysis_similarity_<name>.json``    :func:`~xlsteer.analysis.similarity.similarity_from_items`
                                       per intervention (before / after / delta, separation)
``analysis_logit_lens_<name>.json``    :func:`~xlsteer.analysis.logit_lens.language_shares`
``analysis_projection.json``           PCA and t-SNE coordinates at ``projection_layer``
``analysis_regression.json``           gain vs change in similarity (needs ``eval_results``)
``analysis_neuron_map.json``           CLAS categories / LAPE counts (given, or from ``stats``)
``analysis_compare_models.json``       with ``compare_with``: base vs instruct similarity
``figures/*.png``                      one or more figures per analysis
=====================================  ==========================================================

Every JSON has ``"format": "xlsteer.analysis"`` (the setup file ``"xlsteer.setup"``), ``"analysis"``
naming which, the model and its fingerprint, and provenance. What could not be computed is
said in the file's ``notes`` (and in the returned ``notes``), never silently left out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import LanguageError, UsageError, XlsteerError
from ..io import atomic_write_json, read_json
from ..provenance import provenance
from ..results import stamp
from ..results.read import typed
from . import plots
from .compare_models import compare_models
from .logit_lens import language_shares, shares_from_hidden
from .neuron_map import figures as neuron_figures
from .neuron_map import neuron_map
from .projection import project
from .regression import delta_similarity, gain_vs_similarity, gains_from_scores
from .similarity import check_parallel, covered_langs, pooled_states, similarity_from_items

NO_INTERVENTION = "none"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower() or "x"


def _short(value: Any, max_items: int = 50) -> Any:
    """Parameters for the setup file without huge lists (neuron indices)."""
    if isinstance(value, Mapping):
        return {k: _short(v, max_items) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and len(value) > max_items:
        return f"<{len(value)} items>"
    if isinstance(value, (list, tuple)):
        return [_short(v, max_items) for v in value]
    return value


def _by_lang(by_layer: Mapping[int, Mapping[str, Any]] | None) -> dict[str, dict[int, Any]]:
    """``{layer: {lang: rows}}`` -> ``{lang: {layer: rows}}`` (the lens's layout)."""
    out: dict[str, dict[int, Any]] = {}
    for layer, by_lang in (by_layer or {}).items():
        for lang, rows in by_lang.items():
            out.setdefault(lang, {})[layer] = rows
    return out


def _eval_docs(eval_results: Any) -> list[dict]:
    """Eval/compare documents from a path, a dict, or a list of either."""
    if eval_results is None:
        return []
    items = eval_results if isinstance(eval_results, (list, tuple)) else [eval_results]
    docs = []
    for item in items:
        doc = read_json(item, "evaluation results") if isinstance(item, (str, Path)) else item
        if not isinstance(doc, Mapping):
            raise UsageError(f"evaluation results must be JSON objects or paths to them, got {type(doc).__name__}")
        typed(dict(doc), Path(item).name if isinstance(item, (str, Path)) else "evaluation results")  # fail early
        docs.append(dict(doc))
    return docs


def _match_method(name: str, methods: Sequence[str], n_interventions: int, iv: Any = None,
                  rows: Sequence[Mapping[str, Any]] = ()) -> str | None:
    """The eval method that ran intervention ``name``: same tensors (intervention hash), else same name."""
    if iv is not None:
        try:
            from ..evaluation.engine import intervention_hash

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
        path = atomic_write_json(self.run_dir / name, doc)
        self.files.append(path)
        return path

    def figure(self, name: str, fig: Any) -> str:
        path = plots.save_png(fig, self.fig_dir / name)
        self.figures.append(path)
        return f"figures/{name}"


def analyze(
    lm: Any,
    run_dir: str | Path,
    texts_by_lang: Mapping[str, Sequence[str]],
    layers: Sequence[int] | None,
    interventions: Mapping[str, Any] | None = None,
    stats: Any = None,
    categories: Any = None,
    eval_results: Any = None,
    *,
    anchor: str = "en",
    pooling: str = "mean",
    k: int = 10,
    lens_positions: str = "last",
    projection_layer: int | None = None,
    regression_layer: int | None = None,
    projections: Sequence[str] = ("pca", "tsne"),
    lape: Any = None,
    bridge_layers: Sequence[int] | None = None,
    compare_with: Any = None,
    compare_labels: tuple[str, str] | None = None,
    random_state: int = 0,
    batch_size: int = 8,
    max_length: int = 128,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Similarity, logit lens, projections, regression, neuron map (and model comparison) into ``run_dir``.

    ``texts_by_lang``: parallel texts including the anchor. ``layers``: layers to analyse
    (None = all); ``projection_layer`` (default: the penultimate layer, as in the CLAS paper)
    is added to them. ``interventions``: name -> Intervention; each is analysed separately
    against the same unsteered run. ``stats``: a :class:`~xlsteer.stats.Statistics` with
    ``mlp_act`` sites, used for CLAS categories and LAPE counts when ``categories``/``lape``
    are not given. ``eval_results``: eval/compare result dicts or paths; the gain regression
    matches eval methods to intervention names. ``regression_layer`` (default
    ``projection_layer``) is where the change in similarity is read. ``meta`` (e.g. corpus,
    split, data_hash) goes into every file. Returns every result, plus ``files``,
    ``figures`` and ``notes``.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} is a file; give a folder (it is created if missing)")
    ivs = dict(interventions or {})
    texts = check_parallel(texts_by_lang)
    if anchor not in texts:
        raise LanguageError(f"no texts for the anchor language '{anchor}'; include it in the languages")
    if len(texts) < 2:
        raise UsageError("give the anchor and at least one other language")
    docs = _eval_docs(eval_results)  # read (and fail on a bad file) before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    n_layers = lm.num_layers
    layers = list(range(n_layers)) if layers is None else sorted({int(x) for x in layers})
    if projection_layer is None:
        projection_layer = max(0, n_layers - 2)
    capture = sorted(set(layers) | {int(projection_layer)})
    regression_layer = projection_layer if regression_layer is None else int(regression_layer)
    if regression_layer not in capture:
        capture = sorted(set(capture) | {regression_layer})
    langs = list(texts)
    n_items = len(texts[anchor])

    common = {
        "model": getattr(lm, "name", None),
        "model_fingerprint": getattr(lm, "fingerprint", None),
        "anchor": anchor,
        **dict(meta or {}),
    }
    w = _Writer(run_dir, common)
    notes: list[str] = []
    result: dict[str, Any] = {"similarity": {}, "logit_lens": {}, "projection": [], "regression": [],
                              "neuron_map": None, "compare_models": None}

    w.json("setup_analysis.json", "setup", {
        "langs": langs,
        "layers": layers,
        "analysed_layers": capture,
        "projection_layer": projection_layer,
        "regression_layer": regression_layer,
        "n_items": n_items,
        "parameters": {"pooling": pooling, "k": k, "lens_positions": lens_positions, "projections": list(projections),
                       "random_state": random_state, "batch_size": batch_size, "max_length": max_length},
        "interventions": {name: _short(iv.metadata() if hasattr(iv, "metadata") else {"type": type(iv).__name__})
                          for name, iv in ivs.items()},
    }, kind="setup")

    # ---- 1. similarity (pooled items are reused by the projections) ----------------------
    # With the lens at the last token, one forward per text and condition reads both the pooled
    # states (similarity, projections) and the last-token states the lens decodes.
    lens_in_pass = lens_positions == "last"
    poolings = (pooling, "last") if lens_in_pass else (pooling,)
    kw = dict(anchor=anchor, batch_size=batch_size, max_length=max_length)
    states = pooled_states(lm, texts, capture, poolings=poolings, **kw)
    before = states[pooling]
    lens_rows_before = _by_lang(states.get("last"))
    lens_rows_after: dict[str, Any] = {}  # intervention name -> {lang: {layer: rows}}
    after_items: dict[str, dict[int, dict[str, Any]] | None] = {}
    runs = ivs.items() if ivs else [(NO_INTERVENTION, None)]
    for name, iv in runs:
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
                got_all = pooled_states(lm, {lang: texts[lang] for lang in steered}, capture, poolings=poolings,
                                        interventions=iv, **kw)
                got = got_all[pooling]
                after = {layer: {lang: got[layer].get(lang, before[layer][lang]) for lang in langs} for layer in capture}
                lens_rows_after[name] = _by_lang(got_all.get("last"))
            else:
                doc_notes.append(f"{name} steers none of the languages; nothing to compare")
                lens_rows_after[name] = {}
        after_items[name] = after
        sim = similarity_from_items(before, after, anchor, {"pooling": pooling, "site": "resid_post"},
                                    steered_langs=steered if after else None)
        slug = _slug(name)
        figs = [w.figure(f"similarity_{slug}.png", plots.plot_similarity(
                    sim, title=f"Similarity to {anchor} per layer" + (f" — {name}" if iv is not None else ""))),
                w.figure(f"separation_{slug}.png", plots.plot_separation(
                    sim, title="Language separation per layer" + (f" — {name}" if iv is not None else "")))]
        w.json(f"analysis_similarity_{slug}.json", "similarity",
               {"intervention": None if iv is None else name, **sim, "figures": figs, "notes": doc_notes})
        result["similarity"][name] = sim
        notes.extend(doc_notes)

    # ---- 2. logit lens -------------------------------------------------------------------
    lens_kw = dict(anchor=anchor, k=k, positions=lens_positions)
    fwd_kw = dict(batch_size=batch_size, max_length=max_length)
    # every token: own forwards (rows of all tokens are not pooled)
    lens_before = None if lens_in_pass else language_shares(lm, texts, capture, **fwd_kw, **lens_kw)
    for name, iv in runs:
        if lens_in_pass:
            lens = shares_from_hidden(lm, lens_rows_before, lens_rows_after.get(name), capture, **lens_kw)
        elif iv is None:
            lens = lens_before
        else:
            covered = covered_langs(iv, langs, anchor)
            lens_after = language_shares(lm, {lang: texts[lang] for lang in covered}, capture, interventions=iv,
                                         **fwd_kw, **lens_kw)
            lens = {**lens_before, "after": lens_after["after"],
                    "examples": {"before": lens_before["examples"]["before"], "after": lens_after["examples"]["after"]}}
        slug = _slug(name)
        fig = w.figure(f"logit_lens_{slug}.png", plots.plot_logit_lens(
            lens, title=None if iv is None else f"Logit lens (top-{k}) — {name}: before (solid) / after (dashed)"))
        doc_notes = [f"lens skipped {lang}: {why}" for lang, why in lens.get("skipped", {}).items()]
        w.json(f"analysis_logit_lens_{slug}.json", "logit_lens",
               {"intervention": None if iv is None else name, **lens, "figures": [fig], "notes": doc_notes})
        result["logit_lens"][name] = lens

    # ---- 4. projections ------------------------------------------------------------------
    proj_docs = []
    for name, iv in runs:
        after = after_items.get(name)
        for method in projections:
            try:
                p = project(before[projection_layer], after[projection_layer] if after else None, method=method,
                            random_state=random_state, layer=projection_layer)
            except XlsteerError as e:
                notes.append(f"projection {method} for {name} skipped: {e}")
                continue
            p["intervention"] = None if iv is None else name
            fig = plots.plot_projection(p, title=f"{'t-SNE' if method == 'tsne' else 'PCA'} at layer "
                                                 f"{projection_layer}" + (f" — {name}" if iv is not None else ""))
            p["figure"] = w.figure(f"projection_{_slug(name)}_{method}.png", fig)
            proj_docs.append(p)
    if proj_docs:
        w.json("analysis_projection.json", "projection", {"layer": projection_layer, "projections": proj_docs})
    result["projection"] = proj_docs

    # ---- 5. regression of gain on change in similarity ----------------------------------
    from ..results.rows import score_rows

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
                reg = gain_vs_similarity(gains, delta, method=name, anchor=anchor, layer=used)
                reg.update(task=task, metric=metric, eval_method=match)
                suffix = f"_{_slug(task)}_{_slug(metric)}" if task and len(groups) > 1 else ""
                reg["figure"] = w.figure(f"regression_{_slug(name)}{suffix}.png", plots.plot_regression(
                    reg, title=f"Gain vs. change in similarity — {name}" + (f" ({task})" if task else "")))
                result["regression"].append(reg)
    elif ivs:
        reg_notes.append("no evaluation results given: the gain-vs-similarity regression needs per-language scores "
                         "of the same methods")
    if result["regression"] or reg_notes:
        w.json("analysis_regression.json", "regression", {"regressions": result["regression"], "notes": reg_notes})
    notes.extend(reg_notes)

    # ---- 3. neuron map -------------------------------------------------------------------
    nm_notes: list[str] = []
    if bridge_layers is None:
        clas = [iv for iv in ivs.values() if getattr(iv, "method", "") == "clas"]
        if clas:
            bridge_layers = sorted({layer for iv in clas for layer in iv.layers})
    if stats is not None and (categories is None or lape is None):
        categories, lape, bridge_layers = _from_stats(stats, categories, lape, bridge_layers, n_layers, nm_notes)
    if categories is not None or lape is not None:
        summary = neuron_map(categories, lape, bridge_layers)
        figs = [w.figure(f"{name}.png", fig) for name, fig in neuron_figures(summary).items()]
        w.json("analysis_neuron_map.json", "neuron_map", {**summary, "figures": figs, "notes": nm_notes})
        result["neuron_map"] = summary
    notes.extend(nm_notes)

    # ---- 6. base vs instruct -------------------------------------------------------------
    if compare_with is not None:
        labels = compare_labels or (str(getattr(lm, "name", "first")), str(getattr(compare_with, "name", "second")))
        if labels[0] == labels[1]:
            labels = (f"{labels[0]} (1)", f"{labels[1]} (2)")
        cmp = compare_models(lm, compare_with, texts, capture, anchor=anchor, pooling=pooling, labels=labels,
                             batch_size=batch_size, max_length=max_length)
        fig = w.figure("compare_models.png", plots.plot_compare_models(cmp))
        w.json("analysis_compare_models.json", "compare_models", {**cmp, "figures": [fig]})
        result["compare_models"] = cmp

    result.update(files=w.files, figures=w.figures, notes=notes, run_dir=run_dir)
    return result


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
