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

from pathlib import Path
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import LanguageError, UsageError
from ..io import read_json
from ..results.read import typed
from ..settings import Settings
from .similarity import check_parallel
from .stages import (
    _compare_stage,
    _Context,
    _logit_lens_stage,
    _neuron_map_stage,
    _projection_stage,
    _regression_stage,
    _similarity_stage,
    _Writer,
)

NO_INTERVENTION = "none"


def _short(value: Any, max_items: int = 50) -> Any:
    """Parameters for the setup file without huge lists (neuron indices)."""
    if isinstance(value, Mapping):
        return {k: _short(v, max_items) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and len(value) > max_items:
        return f"<{len(value)} items>"
    if isinstance(value, (list, tuple)):
        return [_short(v, max_items) for v in value]
    return value


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


@dataclass(frozen=True)
class AnalysisConfig(Settings):
    """How to analyse (recorded in ``setup_analysis.json``).

    ``layers`` analysed are an argument; ``projection_layer`` (default: the penultimate layer, as
    in the CLAS paper) is added to them, and ``regression_layer`` (default ``projection_layer``)
    is where the change in similarity is read. ``k``: the logit lens's top-k; ``lens_positions``:
    ``last`` or ``all``; ``projections``: ``pca`` and/or ``tsne``; ``random_state`` seeds them.
    """

    anchor: str = "en"
    pooling: str = "mean"
    k: int = 10
    lens_positions: str = "last"
    projection_layer: int | None = None
    regression_layer: int | None = None
    projections: Sequence[str] = ("pca", "tsne")
    random_state: int = 0
    batch_size: int = 8
    max_length: int = 128

    _what = "analysis setting"


@dataclass(frozen=True)
class AnalysisInputs:
    """What an analysis reads besides the texts and the interventions.

    ``stats``: a :class:`~xlsteer.stats.Statistics` with ``mlp_act`` sites, used for CLAS
    categories and LAPE counts when ``categories``/``lape`` are not given. ``eval_results``:
    eval/compare result dicts or paths; the gain regression matches eval methods to intervention
    names. ``compare_with``: a second model (base vs instruct similarity) and its
    ``compare_labels``. ``meta`` (e.g. corpus, split, data_hash) goes into every file.
    """

    stats: Any = None
    categories: Any = None
    eval_results: Any = None
    lape: Any = None
    bridge_layers: Sequence[int] | None = None
    compare_with: Any = None
    compare_labels: tuple[str, str] | None = None
    meta: Mapping[str, Any] | None = None


def analyze(lm: Any, run_dir: str | Path, texts_by_lang: Mapping[str, Sequence[str]], layers: Sequence[int] | None,
            interventions: Mapping[str, Any] | None = None, cfg: AnalysisConfig | None = None,
            inputs: AnalysisInputs | None = None, **settings: Any) -> dict[str, Any]:
    """Similarity, logit lens, projections, regression, neuron map (and model comparison) into ``run_dir``.

    ``texts_by_lang``: parallel texts including the anchor. ``layers``: layers to analyse
    (None = all). ``interventions``: name -> Intervention; each is analysed separately against
    the same unsteered run. ``cfg`` (:class:`AnalysisConfig`; keyword ``settings`` override its
    fields) says how, ``inputs`` (:class:`AnalysisInputs`) what else to read. Returns every
    result, plus ``files``, ``figures`` and ``notes``.
    """
    cfg = AnalysisConfig.of(cfg, **settings)
    src = inputs or AnalysisInputs()
    anchor, pooling, k, lens_positions = cfg.anchor, cfg.pooling, cfg.k, cfg.lens_positions
    projections, random_state, batch_size, max_length = cfg.projections, cfg.random_state, cfg.batch_size, cfg.max_length
    eval_results, meta = src.eval_results, src.meta
    run_dir, ivs, texts, docs = _checked_inputs(run_dir, interventions, texts_by_lang, anchor, eval_results)
    n_layers = lm.num_layers
    layers, capture, projection_layer, regression_layer = _analysed_layers(n_layers, layers, cfg.projection_layer,
                                                                           cfg.regression_layer)
    common = {
        "model": getattr(lm, "name", None),
        "model_fingerprint": getattr(lm, "fingerprint", None),
        "anchor": anchor,
        **dict(meta or {}),
    }
    w = _Writer(run_dir, common)
    ctx = _Context(lm=lm, w=w, texts=texts, langs=list(texts), anchor=anchor, capture=capture, ivs=ivs,
                   runs=list(ivs.items()) if ivs else [(NO_INTERVENTION, None)],
                   fwd={"batch_size": batch_size, "max_length": max_length})
    w.json("setup_analysis.json", "setup", {
        "langs": ctx.langs,
        "layers": layers,
        "analysed_layers": capture,
        "projection_layer": projection_layer,
        "regression_layer": regression_layer,
        "n_items": len(texts[anchor]),
        "parameters": {"pooling": pooling, "k": k, "lens_positions": lens_positions, "projections": list(projections),
                       "random_state": random_state, "batch_size": batch_size, "max_length": max_length},
        "interventions": {name: _short(iv.metadata() if hasattr(iv, "metadata") else {"type": type(iv).__name__})
                          for name, iv in ivs.items()},
    }, kind="setup")

    # With the lens at the last token, one forward per text and condition reads both the pooled
    # states (similarity, projections) and the last-token states the lens decodes.
    lens_in_pass = lens_positions == "last"
    before, after_items, lens_rows = _similarity_stage(ctx, pooling, lens_in_pass)
    _logit_lens_stage(ctx, k, lens_positions, lens_rows if lens_in_pass else None)
    _projection_stage(ctx, before, after_items, projection_layer, projections, random_state)
    _regression_stage(ctx, docs, regression_layer)
    _neuron_map_stage(ctx, src.stats, src.categories, src.lape, src.bridge_layers, n_layers)
    if src.compare_with is not None:
        _compare_stage(ctx, src.compare_with, src.compare_labels, pooling)

    ctx.result.update(files=w.files, figures=w.figures, notes=ctx.notes, run_dir=run_dir)
    return ctx.result


def _checked_inputs(run_dir: str | Path, interventions: Mapping[str, Any] | None,
                    texts_by_lang: Mapping[str, Sequence[str]], anchor: str,
                    eval_results: Any) -> tuple[Path, dict[str, Any], Any, list[dict]]:
    """The run directory (created), the interventions, the parallel texts and the eval documents.

    Everything is checked (and the eval files read) before anything is written.
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
    return run_dir, ivs, texts, docs


def _analysed_layers(n_layers: int, layers: Sequence[int] | None, projection_layer: int | None,
                     regression_layer: int | None) -> tuple[list[int], list[int], int, int]:
    """``(layers, layers captured, projection layer, regression layer)``; the last two are captured too."""
    layers = list(range(n_layers)) if layers is None else sorted({int(x) for x in layers})
    if projection_layer is None:
        projection_layer = max(0, n_layers - 2)
    capture = sorted(set(layers) | {int(projection_layer)})
    regression_layer = projection_layer if regression_layer is None else int(regression_layer)
    if regression_layer not in capture:
        capture = sorted(set(capture) | {regression_layer})
    return layers, capture, projection_layer, regression_layer
