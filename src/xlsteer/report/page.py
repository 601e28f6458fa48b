"""The data of every report section, prepared for the templates (no HTML here).

Order of the page: summary (the answer), scores and their figures, the full table of a methods
comparison, sweeps, analysis, other figures, and provenance last, collapsed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..filenames import slug
from ..formats import MISSING, number, p_value
from ..results import ANALYSIS, SETUP
from . import analysis_view as A
from .load import Run

# figure file-name prefix -> section it belongs to
_FIGURE_SECTIONS = (("similarity", "similarity"), ("separation", "similarity"), ("logit_lens", "logit_lens"),
                    ("neuron", "neuron_map"), ("lape", "neuron_map"), ("projection", "projection"),
                    ("regression", "regression"), ("compare_models", "compare_models"), ("scores", "scores"),
                    ("sweep", "sweeps"))


@dataclass
class Figure:
    name: str
    png: bytes
    caption: str
    section: str = "other"

    @property
    def b64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")

    @property
    def anchor(self) -> str:
        return "fig-" + slug(self.name)


def section_of(name: str) -> str:
    return next((s for prefix, s in _FIGURE_SECTIONS if name.startswith(prefix)), "other")


#: what a figure of the analysis shows, by file-name prefix (its alt text and caption start with it)
_DESCRIPTIONS = (
    ("similarity_", "Cosine similarity of each language to the anchor per layer, before and after steering"),
    ("separation_", "Separation of the languages (silhouette) per layer"),
    ("logit_lens_", "Share of anchor-language tokens among the logit lens's top tokens per layer"),
    ("neuron_categories", "Share of MLP neurons per category (dead, language-specific, partly and all shared) per layer"),
    ("lape_neurons", "Language-specific neurons (LAPE) per language and layer"),
    ("projection_", "Pooled representations projected to two dimensions, before and after steering"),
    ("regression_", "Per-language gain against the change in similarity to the anchor, with the fitted line"),
    ("compare_models", "Similarity to the anchor per layer, base model against instruction-tuned"),
)


def caption_of(name: str) -> str:
    """Alt text and caption: what the figure shows, then its file's own words."""
    stem = Path(name).stem
    what = next((text for prefix, text in _DESCRIPTIONS if stem.startswith(prefix)), None)
    detail = stem.replace("_", " ")
    return f"{what} ({detail})" if what else detail


#: What drawing a figure from an untyped part of a file can raise (a value of another type or shape).
CONTENT_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)


def drawn(make: Any, *args: Any) -> Figure | None:
    """``make(*args)``, or None when the file's content cannot be drawn (the page shows the rest)."""
    try:
        return make(*args)
    except CONTENT_ERRORS:
        return None


def figure_of(name: str, fig: Any, caption: str | None = None, section: str | None = None) -> Figure:
    from ..analysis.plots import png_bytes

    return Figure(name, png_bytes(fig), caption or caption_of(name), section or section_of(name))


def score_figure(t: Any) -> Figure:
    """Grouped bars: the table's methods per language with CIs (* where significant after Holm)."""
    from ..analysis.plots import plot_scores

    rows = [{"method": ln.name, "lang": lang, "mean": c.mean, "ci_low": c.ci_low, "ci_high": c.ci_high,
             "p": c.p_holm} for ln in t.lines for lang, c in ln.cells.items() if c.mean is not None]
    title = f"{t.task} {t.split}: {t.metric} per language"
    fig = plot_scores(rows, title=title + " (95% CI; * significant after Holm)", metric=t.metric)
    return figure_of(f"scores_{slug(t.task + '-' + t.split + '-' + t.metric)}.png", fig,
                     f"{title}, every method with its 95% bootstrap CI", "scores")


@dataclass
class SweepView:
    title: str
    source: str
    selected: str
    rule: str
    headers: list[str]
    rows: list[list[str]]
    n_points: int
    figure: Figure | None
    choices: list[str] = field(default_factory=list)


def _gain_cells(e: Any) -> list[str]:
    g = getattr(e, "dev_gain", None) or {}
    if not g:
        return [MISSING, MISSING]
    return [f"{g['gain']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]", f"{p_value(g['p'])} ({g['test']})"]


def _choice_lines(doc: Any, main: str) -> tuple[str, list[str]]:
    """The global choice in words (with its evidence), and one line per language (and left-out one)."""
    from ..evaluation.evidence import evidence_text
    from ..evaluation.tables import choice_text

    b = doc.best
    ev = getattr(b, "evidence", None)
    gain = "" if b.gain_over_baseline is None or not b.steer else f", {b.gain_over_baseline:+.3f} against unsteered"
    selected = f"{choice_text(b)} ({main} {number(b.main)} on {doc.split}{gain})" + (f"; {evidence_text(ev)}" if ev else "")
    lines = [f"{lang}: {choice_text(c)} ({main} {number(c.main)})"
             + (f"; {evidence_text(getattr(c, 'evidence', None))}" if getattr(c, "evidence", None) else "")
             for lang, c in doc.best_per_lang.items()]
    lines += [f"{lang}: {why}; left out of the selection, takes the global choice"
              for lang, why in (getattr(doc, "left_out", None) or {}).items()]
    return selected, lines


def sweep_view(f: Any) -> SweepView:
    from ..analysis.plots import plot_sweep

    doc = f.doc
    main = doc.metrics.main
    pts = [{"layer": e.layer, "alpha": e.alpha, "score": e.average.metrics.get(main), "entry": e} for e in doc.results]
    method = doc.source.get("method") or doc.source.get("kind") or "intervention"
    selected, choices = _choice_lines(doc, main)
    top = sorted([x for x in pts if x["score"] is not None], key=lambda x: -x["score"])[:10]
    caption = (f"{main} of {method} on {doc.task} {doc.split} over layer × alpha (average over the non-anchor "
               "languages); the best cell is boxed")
    figure = drawn(lambda: figure_of(f"sweep_{slug(f.path.stem)}.png", plot_sweep(
        [{k: x[k] for k in ("layer", "alpha", "score")} for x in pts], metric=main,
        title=f"Sweep ({doc.split} split): best cell boxed"), caption, "sweeps"))
    rule = doc.selection_rule + (f" ({doc.source['note']})" if doc.source.get("note") else "")
    rows = []
    if doc.baseline is not None:
        unsteered = (doc.baseline.get("average") or {}).get("metrics", {}).get(main)
        rows.append(["unsteered", "0", number(unsteered), MISSING, MISSING])
    rows += [[str(x["layer"]), f"{x['alpha']:g}", number(x["score"]), *_gain_cells(x["entry"])] for x in top]
    return SweepView(f"{method} · {doc.task} · {main} · {doc.split}", f.path.name, selected, rule,
                     ["layer", "alpha", f"{main} (avg non-{doc.anchor})", "dev gain over unsteered [95% CI]",
                      "p (test)"], rows, len(pts), figure, choices)


@dataclass
class AnalysisPart:
    heading: str | None
    source: str
    blocks: list[A.Block]
    figures: list[Figure] = field(default_factory=list)


@dataclass
class AnalysisSection:
    key: str
    title: str
    parts: list[AnalysisPart]
    loose: list[Figure]  # figures of this section no file lists


def analysis_sections(run: Run, by_section: dict[str, list[Figure]]) -> list[AnalysisSection]:
    out = []
    docs = [(f.path.name, f.doc.model_dump()) for f in run.of(ANALYSIS)]
    for key in A.ORDER:
        available = {fig.name: fig for fig in by_section.get(key, [])}
        parts, shown = [], set()
        for name, doc in [(n, d) for n, d in docs if d.get("analysis") == key]:
            try:
                blocks = A.BLOCKS[key](doc)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                blocks = [A.note(f"Could not render {name}: unexpected content ({type(e).__name__}: {e}).")]
            listed = A.listed_figures(doc)
            if (listed and not all(n in available for n in listed)) or (not listed and not available):
                try:
                    for fig_name, fig in A.redraw(key, doc).items():  # figures missing: draw them from the JSON
                        available[fig_name] = figure_of(fig_name, fig)
                        listed.append(fig_name)
                except CONTENT_ERRORS as e:
                    blocks.append(A.note(f"Could not redraw the figures of {name}: unexpected content "
                                         f"({type(e).__name__})."))
            blocks += [A.note(n) for n in doc.get("notes") or []]
            figs = [available[n] for n in dict.fromkeys(listed) if n in available and n not in shown]
            shown.update(fig.name for fig in figs)
            parts.append(AnalysisPart(doc.get("intervention"), name, blocks, figs))
        out.append(AnalysisSection(key, A.TITLES[key], parts, [x for n, x in available.items() if n not in shown]))
    return out


@dataclass
class FileRecord:
    name: str
    format: str
    status: str
    model: str = MISSING
    config: str = ""
    data_hash: str = ""
    created: str = ""
    xlsteer: str = ""


def _record(f: Any) -> FileRecord:
    d = f.doc.model_dump()
    model = d.get("model")
    fp = d.get("model_fingerprint") or {}
    if isinstance(model, Mapping):
        fp, model = model.get("fingerprint") or {}, model.get("name")
    prov = d.get("provenance") if isinstance(d.get("provenance"), Mapping) else {}
    versions = prov.get("versions") or d.get("versions") or {}
    data = d.get("data") if isinstance(d.get("data"), Mapping) else {}
    status = "read" + (f" (converted from {f.converted_from})" if f.converted_from else "")
    return FileRecord(f.path.name, f.format, status, str(model or MISSING), str(fp.get("config_hash", ""))[:12],
                      str(d.get("data_hash") or data.get("data_hash") or "")[:16], str(prov.get("created") or ""),
                      str(versions.get("xlsteer", "")))


def flatten(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Nested dict -> [(dotted key, short text)] for the setup tables."""
    if isinstance(obj, Mapping) and depth < 3:
        return [kv for k, v in obj.items() for kv in flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)]
    if isinstance(obj, list):
        text = ", ".join(str(x) for x in obj[:12]) + (f", … ({len(obj)} in all)" if len(obj) > 12 else "")
    else:
        text = json.dumps(obj, sort_keys=True, default=str) if isinstance(obj, Mapping) else str(obj)
    return [(prefix, text if len(text) <= 240 else text[:237] + "…")]


@dataclass
class Provenance:
    records: list[FileRecord]
    setups: list[tuple[str, list[tuple[str, str]]]]
    problems: list[tuple[str, str]]
    mixed_models: list[str]
    notes: list[str]


def provenance(run: Run) -> Provenance:
    records = [_record(f) for f in run.files]
    setups = [(f.path.name, flatten({k: v for k, v in f.doc.model_dump().items() if k not in ("format", "version")}))
              for f in run.of(SETUP)]
    configs = sorted({r.config for r in records if r.config})
    notes = [f"{f.path.name}: {n}" for f in run.files for n in f.notes]
    return Provenance(records, setups, run.problems, configs if len(configs) > 1 else [], notes)
