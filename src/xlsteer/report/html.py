"""One self-contained HTML page from whatever a run directory holds.

Run directory layout
--------------------
::

    RUN_DIR/
      *.json            result files; each has a top-level "kind":
                          "setup"     model, fingerprint, data hash, parameters, versions
                          "eval"      per-language scores of one or more methods (CIs, paired tests)
                          "compare"   paired comparisons of methods against the unsteered model
                          "sweep"     dev-split grid (layer x alpha -> score) used for selection
                          "analysis"  written by xlsteer.analysis.run.analyze (field "analysis"
                                      names which: similarity, logit_lens, neuron_map, projection,
                                      regression, compare_models)
      figures/*.png     figures (analyze writes them; any other PNG placed here is shown too)

Files of other kinds, without a kind, or that are not valid JSON are listed with the reason in
the "Files" section; nothing in the directory makes the report fail. Sections with no input
say so in one line.

What the page contains: Setup (model, data hash, parameters, versions; and which model/data
each result file records, with a warning if they disagree), Scores (method x language tables
with 95% CIs, the paired difference and its p-value, verdicts, degenerate predictors flagged,
and one plain sentence when no effect is significant), Sweeps, Analysis (one subsection per
analysis with its figures), Other figures, Files. Every PNG is embedded as a base64 data URI;
CSS is inline; the page loads nothing from anywhere. The PNGs are also written beside the page
in ``<stem>_figures/``.

Score files the report reads (``kind`` "eval" or "compare"); it normalises several shapes
(see :func:`score_rows`). The canonical one::

    {"kind": "eval", "task": "xnli", "metric": "accuracy", "split": "test", "anchor": "en",
     "baseline": "none",
     "methods": {"none":     {"de": {"mean": .61, "ci_low": .57, "ci_high": .65, "n": 500}, ...},
                 "diffmean": {"de": {"mean": .63, "ci_low": ..., "ci_high": ..., "n": 500,
                                     "comparison": {<xlsteer.evaluation.significance.compare()>},
                                     "degenerate": {<xlsteer.evaluation.metrics.degenerate()>}}}},
     "model": ..., "model_fingerprint": {...}, "data_hash": ..., "provenance": {...}}

``compare`` files: ``{"kind": "compare", "baseline": "none", "comparisons": {method: {lang:
<compare() dict>}}}``. Sweep files: ``{"kind": "sweep", "split": "dev", "metric": ...,
"points": [{"layer": 6, "alpha": 4.0, "score": .55}, ...], "best": {...}}``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import UsageError

KINDS = ("setup", "eval", "compare", "sweep", "analysis")
#: files of xlsteer.evaluation.runner / sweep that carry a "format" instead of a "kind"
FORMAT_KINDS = {"xlsteer.results": "eval", "xlsteer.comparison": "compare", "xlsteer.sweep": "sweep"}
BASELINE_NAMES = ("none", "baseline", "unsteered", "base", "zero-shot", "zeroshot", "zero_shot")
_POINT_KEYS = ("mean", "score", "value", "accuracy", "acc", "f1", "exact_match", "em", "method_mean")
_NESTED_TEST_KEYS = ("comparison", "compare", "vs_baseline", "paired", "significance", "test_result")
_ANALYSIS_ORDER = ("similarity", "logit_lens", "neuron_map", "projection", "regression", "compare_models")
_ANALYSIS_TITLES = {
    "similarity": "Similarity to the anchor",
    "logit_lens": "Logit lens",
    "neuron_map": "Neuron categories (CLAS) and language neurons (LAPE)",
    "projection": "Projections (PCA, t-SNE)",
    "regression": "Gain vs. change in similarity",
    "compare_models": "Base vs. instruction-tuned",
}
# figure file-name prefix -> section it belongs to
_FIGURE_SECTIONS = (
    ("similarity", "similarity"),
    ("separation", "similarity"),
    ("logit_lens", "logit_lens"),
    ("neuron", "neuron_map"),
    ("lape", "neuron_map"),
    ("projection", "projection"),
    ("regression", "regression"),
    ("compare_models", "compare_models"),
    ("scores", "scores"),
    ("sweep", "sweeps"),
)


# --------------------------------------------------------------------------------------------
# Reading the run directory
# --------------------------------------------------------------------------------------------


@dataclass
class RunContents:
    docs: list[tuple[Path, dict]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[tuple[Path, dict]]:
        return [(p, d) for p, d in self.docs if d.get("kind") == kind]


def load_run(run_dir: str | Path) -> RunContents:
    """Every readable result file and figure of a run directory (problems are collected, not raised)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UsageError(f"run directory {root} does not exist or is not a directory; give the folder analyze/eval wrote")
    out = RunContents()
    for path in sorted(root.glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            out.problems.append((path, f"not valid JSON ({type(e).__name__})"))
            continue
        except OSError as e:
            out.problems.append((path, f"unreadable ({e.strerror or e})"))
            continue
        if not isinstance(doc, dict):
            out.problems.append((path, "not a JSON object"))
        elif "kind" not in doc and doc.get("format") in FORMAT_KINDS:
            out.docs.append((path, {**doc, "kind": FORMAT_KINDS[doc["format"]]}))
        elif "kind" not in doc:
            out.problems.append((path, 'no top-level "kind"'))
        elif doc["kind"] not in KINDS:
            out.problems.append((path, f'unknown kind {doc["kind"]!r} (known: {", ".join(KINDS)})'))
        else:
            out.docs.append((path, doc))
    fig_dir = root / "figures"
    if fig_dir.is_dir():
        out.figures = sorted(p for p in fig_dir.glob("*.png") if p.is_file())
    return out


# --------------------------------------------------------------------------------------------
# Score rows from eval / compare files
# --------------------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(float(v)) else None
    return None


def _is_stats(d: Any) -> bool:
    return isinstance(d, Mapping) and any(_num(d.get(k)) is not None for k in _POINT_KEYS + ("diff", "base_mean"))


def _stats_row(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Fields of one (method, language) cell from a stats dict, flat or with a nested test."""
    row: dict[str, Any] = {}
    for k in _POINT_KEYS:
        if _num(stats.get(k)) is not None:
            row["mean"] = _num(stats[k])
            break
    ci = stats.get("ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        row["ci_low"], row["ci_high"] = _num(ci[0]), _num(ci[1])
    for lo, hi in (("ci_low", "ci_high"), ("lo", "hi"), ("ci_lo", "ci_hi")):
        if _num(stats.get(lo)) is not None:
            row["ci_low"], row["ci_high"] = _num(stats.get(lo)), _num(stats.get(hi))
            break
    if stats.get("n") is not None:
        row["n"] = stats.get("n")
    tests = [stats] + [stats[k] for k in _NESTED_TEST_KEYS if isinstance(stats.get(k), Mapping)]
    for t in tests:
        for key in ("diff", "diff_ci_low", "diff_ci_high", "p", "mde", "base_mean"):
            if _num(t.get(key)) is not None and row.get(key) is None:
                row[key] = _num(t[key])
        if row.get("p") is None:
            for key in ("p_value", "pvalue", "p_mcnemar", "p_bootstrap"):
                if _num(t.get(key)) is not None:
                    row["p"] = _num(t[key])
                    break
        if isinstance(t.get("test"), str) and "test" not in row:
            row["test"] = t["test"]
        if isinstance(t.get("verdict"), str) and "verdict" not in row:
            row["verdict"] = t["verdict"]
    if row.get("mean") is None and _num(stats.get("method_mean")) is not None:
        row["mean"] = _num(stats["method_mean"])
    deg = stats.get("degenerate")
    if isinstance(deg, Mapping):
        row["degenerate"] = bool(deg.get("degenerate"))
        row["majority_share"] = _num(deg.get("majority_share"))
        row["majority_label"] = deg.get("majority_label")
    elif isinstance(deg, bool):
        row["degenerate"] = deg
        row["majority_share"] = _num(stats.get("majority_share"))
    return row


def _per_lang_block(per: Any) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
    """A method's ``{lang: stats}`` and, if separate, its ``{lang: comparison}``."""
    if not isinstance(per, Mapping):
        return {}, None
    comp = next((per[k] for k in ("comparisons", "comparison", "vs_baseline") if isinstance(per.get(k), Mapping)), None)
    for key in ("scores", "langs", "per_lang", "languages", "results"):
        if isinstance(per.get(key), Mapping):
            return per[key], comp
    return per, comp


def _layers_text(layers: Sequence[int]) -> str:
    xs = sorted({int(x) for x in layers})
    if len(xs) > 2 and xs == list(range(xs[0], xs[-1] + 1)):
        return f"{xs[0]}-{xs[-1]}"
    return ",".join(map(str, xs))


def method_label(info: Any) -> str:
    """A short name for what a run applied: ``none``, or e.g. ``vector L6 ×4`` (method, layers, strength)."""
    if not info:
        return "none"
    if isinstance(info, str):
        return info
    if not isinstance(info, Mapping):
        return str(info)
    if info.get("label") or info.get("name"):
        return str(info.get("label") or info.get("name"))
    parts_ = info.get("interventions") or []
    method = info.get("method") or "+".join(str(i.get("method", "?")) for i in parts_ if isinstance(i, Mapping))
    layers = info.get("layers") or sorted({int(x) for i in parts_ if isinstance(i, Mapping) for x in i.get("layers") or []})
    label = str(method or "intervention")
    if layers:
        label += f" L{_layers_text(layers)}"
    strength = _num(info.get("strength"))
    if strength is not None and strength != 1.0:
        label += f" ×{strength:g}"
    return label


def score_rows(doc: Mapping[str, Any], source: str = "") -> list[dict[str, Any]]:
    """Normalised (method, language) rows of an eval or compare file.

    Each row: task, metric, split, method, lang, mean, ci_low, ci_high, n, diff, diff_ci_low,
    diff_ci_high, p, test, verdict, mde, degenerate, majority_share, is_baseline, source
    (missing values absent or None). Accepted shapes: a ``rows`` list of such dicts; blocks
    ``methods`` / ``results`` / ``scores`` / ``comparisons`` mapping method -> language ->
    stats (stats may nest the paired test under ``comparison``), or language -> stats for a
    single-method file (method name from ``method``); a language's stats may also map metric
    names to stats dicts. Files of :mod:`xlsteer.evaluation.runner` (``per_lang`` ->
    ``metrics`` -> {mean, ci_low, ci_high} for one run, or -> a paired comparison for
    ``compare_runs``) are read too; their method is named by :func:`method_label`.
    """
    ctx = {"task": doc.get("task"), "metric": doc.get("metric"), "split": doc.get("split"), "source": source}
    baseline = doc.get("baseline") or doc.get("base")
    baseline = baseline if isinstance(baseline, str) else None
    rows: dict[tuple, dict[str, Any]] = {}

    def add(method: str, lang: str, stats: Mapping[str, Any], metric: Any = None) -> None:
        if not _is_stats(stats):
            # {metric: stats} under the language
            nested = {k: v for k, v in stats.items() if _is_stats(v)} if isinstance(stats, Mapping) else {}
            for m, s in nested.items():
                add(method, lang, s, metric=m)
            return
        cell = _stats_row(stats)
        key = (ctx["task"], metric or ctx["metric"], str(method), str(lang))
        row = rows.setdefault(key, {**ctx, "metric": metric or ctx["metric"], "method": str(method), "lang": str(lang)})
        for k, v in cell.items():
            if row.get(k) is None:
                row[k] = v
        base_mean = cell.get("base_mean")
        if base_mean is not None:  # a paired comparison carries the baseline's score too
            bname = baseline or "baseline"
            bkey = (ctx["task"], metric or ctx["metric"], bname, str(lang))
            rows.setdefault(bkey, {**ctx, "metric": metric or ctx["metric"], "method": bname, "lang": str(lang),
                                   "mean": base_mean, "is_baseline": True, "_synth": True})

    per_lang = doc.get("per_lang")
    if isinstance(per_lang, Mapping) and any(isinstance(v, Mapping) and isinstance(v.get("metrics"), Mapping)
                                             for v in per_lang.values()):
        # xlsteer.evaluation.runner: one run per file ("results"), or a paired comparison of two runs
        is_comparison = doc.get("format") == "xlsteer.comparison" or doc.get("kind") == "compare"
        if is_comparison:
            base_info, other_info = (doc.get("base") or {}), (doc.get("other") or {})
            baseline = method_label(base_info.get("intervention"))
            method = method_label(other_info.get("intervention"))
            ihash = (other_info.get("intervention") or {}).get("hash")
        else:
            method = method_label(doc.get("intervention"))
            ihash = (doc.get("intervention") or {}).get("hash")
        for lang, entry in per_lang.items():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("metrics"), Mapping):
                continue
            for metric, stats in entry["metrics"].items():
                if not isinstance(stats, Mapping):
                    continue
                cell = dict(stats) if is_comparison else {**stats, "degenerate": entry.get("degenerate")}
                if is_comparison and stats.get("method_mean") is not None:
                    cell["mean"] = stats["method_mean"]
                add(method, lang, cell, metric)
                if (ctx["task"], metric, method, str(lang)) in rows:
                    rows[(ctx["task"], metric, method, str(lang))]["intervention_hash"] = ihash
    if isinstance(doc.get("rows"), list):
        for r in doc["rows"]:
            if isinstance(r, Mapping) and r.get("method") is not None and r.get("lang") is not None:
                add(r["method"], r["lang"], r, r.get("metric"))
    for block_key in ("methods", "results", "scores", "comparisons"):
        block = doc.get(block_key)
        if not isinstance(block, Mapping):
            continue
        values = list(block.values())
        if values and all(_is_stats(v) for v in values):  # single method: {lang: stats}
            for lang, stats in block.items():
                add(str(doc.get("method") or "method"), lang, stats)
            continue
        for method, per in block.items():
            langs, comp = _per_lang_block(per)
            for lang, stats in langs.items():
                if isinstance(stats, Mapping):
                    merged = dict(stats)
                    if comp and isinstance(comp.get(lang), Mapping):
                        merged.setdefault("comparison", comp[lang])
                    add(method, lang, merged)
                elif _num(stats) is not None:
                    add(method, lang, {"mean": stats})
    # ``xlsteer eval --intervention`` embeds the unsteered run and the paired comparison
    for key, kind in (("baseline", "eval"), ("comparison", "compare")):
        inner = doc.get(key)
        if isinstance(inner, Mapping) and isinstance(inner.get("per_lang"), Mapping):
            inner_doc = {"task": doc.get("task"), "split": doc.get("split"), **inner, "kind": kind}
            if kind == "compare" and "other" not in inner_doc:
                inner_doc["other"] = {"intervention": doc.get("intervention")}
            for r in score_rows(inner_doc, source):
                row = rows.setdefault((r["task"], r["metric"], r["method"], r["lang"]), r)
                for k, v in r.items():
                    if row.get(k) is None:
                        row[k] = v
    out = list(rows.values())
    for r in out:
        if "is_baseline" not in r:
            name = r["method"].lower()
            r["is_baseline"] = (baseline is not None and r["method"] == baseline) or (
                baseline is None and name in BASELINE_NAMES and r.get("p") is None)
    # a baseline row made from base_mean is dropped when the file has its own baseline row
    real = {(r["task"], r["metric"], r["lang"]) for r in out if r["is_baseline"] and not r.get("_synth")}
    out = [r for r in out if not (r.get("_synth") and (r["task"], r["metric"], r["lang"]) in real)]
    for r in out:
        r.pop("_synth", None)
    return out


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm-Bonferroni: which of the p-values stay significant over the whole family."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    keep = [False] * len(pvalues)
    m = len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] <= alpha / (m - rank):
            keep[i] = True
        else:
            break
    return keep


# --------------------------------------------------------------------------------------------
# HTML helpers
# --------------------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _f(x: Any, digits: int = 3) -> str:
    v = _num(x)
    if v is None:
        return "—" if x is None else _e(x)
    if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def _p(p: Any) -> str:
    v = _num(p)
    if v is None:
        return "—"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Headers are escaped; cells are trusted HTML (build them with _e / _f)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _flatten(obj: Any, prefix: str = "", depth: int = 0, max_depth: int = 3) -> list[tuple[str, str]]:
    """Nested dict -> [(dotted key, short text)]."""
    out: list[tuple[str, str]] = []
    if isinstance(obj, Mapping) and depth < max_depth:
        for k, v in obj.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1, max_depth))
        return out
    if isinstance(obj, list):
        text = ", ".join(str(x) for x in obj[:12]) + (f", … ({len(obj)} in all)" if len(obj) > 12 else "")
    elif isinstance(obj, Mapping):
        text = json.dumps(obj, sort_keys=True, default=str)
    else:
        text = str(obj)
    if len(text) > 240:
        text = text[:237] + "…"
    out.append((prefix, text))
    return out


def _kv_table(obj: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    skipped = set(skip)
    rows = [(f"<code>{_e(k)}</code>", _e(v)) for k, v in _flatten({k: v for k, v in obj.items() if k not in skipped})]
    return _table(["field", "value"], rows, "kv") if rows else ""


_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _unreadable(path: Path, e: BaseException) -> str:
    """A note for a result file whose content has an unexpected shape (the report goes on)."""
    return _note(f"Could not render {_e(path.name)}: unexpected content ({_e(type(e).__name__)}: {_e(e)}).")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


@dataclass
class _Figure:
    name: str  # file name, e.g. similarity.png
    png: bytes
    caption: str
    section: str


def _figure_section(name: str) -> str:
    for prefix, section in _FIGURE_SECTIONS:
        if name.startswith(prefix):
            return section
    return "other"


def _caption(name: str) -> str:
    return Path(name).stem.replace("_", " ")


def _img(fig: _Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure id="fig-{_slug(fig.name)}"><img src="data:image/png;base64,{data}" alt="{_e(fig.caption)}">'
            f"<figcaption>{_e(fig.caption)} <span class=\"file\">({_e(fig.name)})</span></figcaption></figure>")


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _record_of(doc: Mapping[str, Any]) -> dict[str, str]:
    def mapping(x: Any) -> Mapping[str, Any]:
        return x if isinstance(x, Mapping) else {}

    model = doc.get("model")
    if isinstance(model, Mapping):  # runner files: {"name", "fingerprint", ...}
        doc = {**doc, "model": model.get("name"), "model_fingerprint": model.get("fingerprint")}
    fp = mapping(doc.get("model_fingerprint") or doc.get("fingerprint"))
    prov = mapping(doc.get("provenance"))
    versions = mapping(prov.get("versions") or doc.get("versions"))
    data = doc.get("data")
    data_hash = doc.get("data_hash") or (data.get("hash") or data.get("data_hash") if isinstance(data, Mapping) else None)
    return {
        "model": str(doc.get("model") or doc.get("model_name") or "—"),
        "config": str(fp.get("config_hash", ""))[:12],
        "data_hash": str(data_hash or "")[:16],
        "created": str(prov.get("created") or doc.get("created") or ""),
        "xlsteer": str(versions.get("xlsteer", "")),
    }


def _setup_section(run: RunContents) -> str:
    parts = ['<h2 id="setup">Setup</h2>']
    setups = run.of_kind("setup")
    if not setups:
        parts.append(_note('No setup file (kind "setup") in this run directory; what the result files record is below.'))
    for path, doc in setups:
        parts.append(f"<h3>{_e(path.name)}</h3>")
        main = {k: doc[k] for k in ("model", "model_fingerprint", "data_hash", "corpus", "split", "langs", "anchor",
                                     "layers", "n_items", "parameters", "params", "interventions", "seed")
                if k in doc}
        rest = {k: v for k, v in doc.items() if k not in main and k not in ("kind", "provenance")}
        if main:
            parts.append(_kv_table(main))
        if rest:
            parts.append(_kv_table(rest))
        prov = doc.get("provenance")
        versions = (prov.get("versions") if isinstance(prov, Mapping) else None) or doc.get("versions")
        if isinstance(versions, Mapping) and versions:
            parts.append("<h4>Versions</h4>" + _kv_table(versions))
    records = [(p, d, _record_of(d)) for p, d in run.docs if d.get("kind") != "setup"]
    if records:
        parts.append("<h3>What each result file records</h3>")
        def code(x: str) -> str:
            return f"<code>{_e(x)}</code>" if x else "—"

        parts.append(_table(["file", "kind", "model", "config hash", "data hash", "created", "xlsteer"],
                            [(_e(p.name), _e(d.get("kind")), _e(r["model"]), code(r["config"]), code(r["data_hash"]),
                              _e(r["created"] or "—"), _e(r["xlsteer"] or "—"))
                             for p, d, r in records]))
        configs = {r["config"] for _, _, r in records if r["config"]}
        if len(configs) > 1:
            parts.append('<p class="warn">Warning: the result files were made with different models '
                         f'(config hashes {", ".join(sorted(configs))}); do not compare their numbers directly.</p>')
    return "\n".join(parts)


def _cell(r: Mapping[str, Any], alpha: float) -> str:
    mean = r.get("mean")
    text = f"<b>{_f(mean)}</b>" if mean is not None else "—"
    if r.get("ci_low") is not None and r.get("ci_high") is not None:
        text += f' <span class="ci">[{_f(r["ci_low"])}, {_f(r["ci_high"])}]</span>'
    if not r.get("is_baseline") and (r.get("diff") is not None or r.get("p") is not None):
        p = _num(r.get("p"))
        cls = "sig" if p is not None and p < alpha and (r.get("diff") or 0) > 0 else \
            "loss" if p is not None and p < alpha and (r.get("diff") or 0) < 0 else "ns"
        diff = _num(r.get("diff"))
        dtext = f"Δ {diff:+.3f}" if diff is not None else "Δ —"
        ptext = "p " + (_p(p) if p is not None and p < 0.001 else "= " + _p(p))
        text += f'<br><span class="{cls}">{dtext}, {_e(ptext)}</span>'
    if r.get("degenerate"):
        share = r.get("majority_share")
        text += (f'<br><span class="badge">degenerate: {_e(r.get("majority_label", "one label"))} for '
                 f'{_f(100 * share, 0) if share is not None else "most"}% of items</span>')
    return text


def _verdict(r: Mapping[str, Any], alpha: float) -> str:
    if r.get("verdict"):
        return str(r["verdict"])
    p, d = _num(r.get("p")), _num(r.get("diff"))
    if p is None:
        return "no paired test"
    if p < alpha and d is not None:
        return "significant gain" if d > 0 else "significant loss"
    return "no significant effect"


def _paired_from_items(run: RunContents) -> tuple[list[tuple[Path, dict]], list[str]]:
    """Comparisons the report computes itself: runner result files with per-item records, each
    steered run against the unsteered run of the same task and split, when no compare file has it."""
    evals = [(p, d) for p, d in run.of_kind("eval") if isinstance(d.get("items"), list) and isinstance(
        d.get("per_lang"), Mapping)]
    have = set()
    for _, d in run.of_kind("compare"):
        other = d.get("other") if isinstance(d.get("other"), Mapping) else {}
        have.add((d.get("task"), d.get("split"), method_label(other.get("intervention"))))
    bases = {(d.get("task"), d.get("split")): (p, d) for p, d in evals if not d.get("intervention")}
    out, notes = [], []
    for path, doc in evals:
        key = (doc.get("task"), doc.get("split"))
        label = method_label(doc.get("intervention"))
        embedded = isinstance(doc.get("comparison"), Mapping)  # xlsteer eval --intervention has it inside
        if not doc.get("intervention") or embedded or key not in bases or (*key, label) in have:
            continue
        try:
            from ..errors import XlsteerError
            from ..evaluation.runner import compare_runs

            cmp = compare_runs(bases[key][1], doc, alpha=0.05)
        except (ImportError, XlsteerError, *_MALFORMED) as e:
            notes.append(f"no paired test for {label} ({path.name}): {e}")
            continue
        cmp = {**cmp, "kind": "compare"}
        out.append((path.with_name(f"{path.stem} (paired, computed)"), cmp))
        notes.append(f"paired tests for {label} computed from the per-item results in {path.name} and "
                     f"{bases[key][0].name} (xlsteer.evaluation.runner.compare_runs)")
    return out, notes


def _merged_rows(docs: Sequence[tuple[Path, dict]]) -> dict[tuple, dict[tuple[str, str], dict[str, Any]]]:
    """All score rows, grouped by (task, metric, split), one cell per (method, language) across files."""
    groups: dict[tuple, dict[tuple[str, str], dict[str, Any]]] = {}
    for path, doc in docs:
        for r in score_rows(doc, path.name):
            cells = groups.setdefault((r.get("task"), r.get("metric"), r.get("split")), {})
            cell = cells.setdefault((r["method"], r["lang"]), {"sources": []})
            for k, v in r.items():
                if cell.get(k) is None or (k == "is_baseline" and v):
                    cell[k] = v
            cell["sources"].append(path.name)
    return groups


def _group_order(groups: Mapping[tuple, Any], mains: set[str]) -> list[tuple]:
    return sorted(groups, key=lambda g: (str(g[0]), str(g[2]), g[1] not in mains, str(g[1])))


def _scores_section(run: RunContents, figs: list[_Figure], alpha: float) -> str:
    from ..analysis.plots import plot_scores, png_bytes

    parts = ['<h2 id="scores">Scores</h2>']
    docs = run.of_kind("eval") + run.of_kind("compare")
    if not docs:
        parts.append(_note('No evaluation results (kind "eval" or "compare") in this run directory; '
                           "run the evaluation with its output in this folder to get score tables."))
        return "\n".join(parts)
    computed, notes = _paired_from_items(run)
    readable = []
    for path, doc in docs + computed:
        try:
            score_rows(doc, path.name)
            readable.append((path, doc))
        except _MALFORMED as e:
            parts.append(_unreadable(path, e))
    groups = _merged_rows(readable)
    if not groups:
        parts.append(_note("The evaluation files hold no per-language scores."))
    mains = {str((d.get("metrics") or {}).get("main")) for _, d in readable if isinstance(d.get("metrics"), Mapping)}
    anchors = {str(d.get("anchor")) for _, d in readable if d.get("anchor")}
    anchor = anchors.pop() if len(anchors) == 1 else "en"
    all_tests: list[tuple[str, float]] = []
    degenerate: list[str] = []
    for key in _group_order(groups, mains):
        task, metric, split = key
        by = groups[key]
        title = " · ".join(str(x) for x in (task, metric, split) if x) or "scores"
        files = sorted({f for c in by.values() for f in c["sources"]})
        parts.append(f'<h3>{_e(title)} <span class="file">({_e(", ".join(files))})</span></h3>')
        if split and str(split).lower() in ("dev", "validation", "val"):
            parts.append('<p class="warn">These scores are on the dev split, which is used for selection; '
                         "report test-split numbers.</p>")
        methods = list(dict.fromkeys(m for m, _ in by))
        baselines = {m for (m, _), c in by.items() if c.get("is_baseline")}
        methods.sort(key=lambda m: m not in baselines)  # stable: baseline first
        langs = list(dict.fromkeys(lang for _, lang in by))
        table_rows = []
        for m in methods:
            cells = [f"<b>{_e(m)}</b>" + (' <span class="file">(baseline)</span>' if m in baselines else "")]
            means = []
            for lang in langs:
                r = by.get((m, lang))
                cells.append(_cell(r, alpha) if r else "—")
                if r and r.get("mean") is not None and lang != anchor and lang not in ("avg", "average"):
                    means.append(float(r["mean"]))
            cells.append(_f(sum(means) / len(means)) if means else "—")
            table_rows.append(cells)
        parts.append(_table(["method"] + langs + [f"avg (non-{anchor})"], table_rows, "scores"))
        parts.append('<p class="small">Cells: score [95% bootstrap CI]; for methods, the paired difference '
                     "to the baseline on the same items and its p-value "
                     f"(green: significant gain, red: significant loss at α = {alpha:g}). "
                     "The average is the plain mean of the per-language scores (no CI).</p>")
        verdicts = []
        for m in methods:
            tested = [by[(m, lang)] for lang in langs if (m, lang) in by and not by[(m, lang)].get("is_baseline")
                      and _num(by[(m, lang)].get("p")) is not None]
            for r in tested:  # the anchor is not steered: its comparison is a check, not a finding
                if r["lang"] != anchor:
                    all_tests.append((f"{title}: {m} / {r['lang']}", float(r["p"])))
            if tested:
                verdicts.append(f"<li><b>{_e(m)}</b>: " + "; ".join(
                    f"{_e(r['lang'])}{' (anchor)' if r['lang'] == anchor else ''}: {_e(_verdict(r, alpha))}"
                    for r in tested) + "</li>")
            elif m not in baselines:
                verdicts.append(f"<li><b>{_e(m)}</b>: no paired test against the baseline in these files</li>")
            for lang in langs:
                r = by.get((m, lang))
                if r and r.get("degenerate"):
                    share = r.get("majority_share")
                    entry = (f"{_e(m)} on {_e(lang)} ({_e(task or title)}): predicts "
                             f"{_e(r.get('majority_label', 'one label'))} for "
                             f"{_f(100 * share, 0) if share is not None else 'most'}% of items")
                    if entry not in degenerate:
                        degenerate.append(entry)
        if verdicts:
            parts.append("<h4>Verdicts</h4><ul class=\"verdicts\">" + "".join(verdicts) + "</ul>")
        fig = plot_scores(list(by.values()), title=f"{title}: scores per language", metric=str(metric or "score"))
        figs.append(_Figure(f"scores_{_slug(title)}.png", png_bytes(fig), f"{title}: scores per language (95% CI)",
                            "scores"))
        parts.append(_img(figs[-1]))
    for note in notes:
        parts.append(_note(_e(note)))
    if degenerate:
        parts.append('<div class="warn"><b>Degenerate predictors</b> (one label for most items; their accuracy '
                     "says little about understanding):<ul>" + "".join(f"<li>{d}</li>" for d in degenerate)
                     + "</ul></div>")
    parts.append(_summary_sentence(all_tests, alpha))
    return "\n".join(parts)


def _summary_sentence(tests: list[tuple[str, float]], alpha: float) -> str:
    if not tests:
        return _note("No paired tests against the baseline were found, so no effect can be called significant.")
    sig = [name for name, p in tests if p < alpha]
    n = len(tests)
    if not sig:
        return (f'<p class="verdict-line"><b>No effect is significant at α = {alpha:g}:</b> none of the {n} '
                "method × language comparisons (non-anchor languages) has p &lt; " + f"{alpha:g}.</p>")
    kept = holm([p for _, p in tests], alpha)
    n_holm = sum(kept)
    return (f'<p class="verdict-line"><b>{len(sig)} of {n} method × language comparisons have p &lt; {alpha:g}</b> '
            f"(unadjusted); after Holm correction over all {n}, {n_holm} remain significant"
            + (": " + ", ".join(_e(name) for (name, _), k in zip(tests, kept) if k) if n_holm else "")
            + ".</p>")


def _sweep_points(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Grid points with a ``score``: given directly, or the average main metric of a runner sweep."""
    main = (doc.get("metrics") or {}).get("main") if isinstance(doc.get("metrics"), Mapping) else None
    for key in ("points", "grid", "results", "rows"):
        if isinstance(doc.get(key), list):
            pts = []
            for p in doc[key]:
                if not isinstance(p, Mapping):
                    continue
                score = next((_num(p.get(k)) for k in ("score", "mean", "dev_score", "value", "accuracy")
                              if _num(p.get(k)) is not None), None)
                avg = p.get("average")
                if score is None and isinstance(avg, Mapping) and isinstance(avg.get("metrics"), Mapping):
                    score = _num(avg["metrics"].get(main)) if main else None
                pts.append({k: v for k, v in p.items() if k not in ("per_lang", "intervention")} | {"score": score})
            return pts
    return []


def _sweeps_section(run: RunContents, figs: list[_Figure]) -> str:
    from ..analysis.plots import plot_sweep, png_bytes

    parts = ['<h2 id="sweeps">Sweeps</h2>']
    docs = run.of_kind("sweep")
    if not docs:
        parts.append(_note('No sweep results (kind "sweep") in this run directory.'))
        return "\n".join(parts)
    for path, doc in docs:
        try:
            pts = _sweep_points(doc)
        except _MALFORMED as e:
            parts.append(_unreadable(path, e))
            continue
        source = doc.get("source") if isinstance(doc.get("source"), Mapping) else {}
        title = " · ".join(str(x) for x in (doc.get("method") or source.get("method"), doc.get("task"),
                                            doc.get("metric"), doc.get("split")) if x)
        parts.append(f"<h3>{_e(title or path.stem)} <span class=\"file\">({_e(path.name)})</span></h3>")
        split = str(doc.get("split") or "")
        if split.lower() == "test":
            parts.append('<p class="warn">This sweep ran on the test split: choosing layers or strengths on test '
                         "makes the test scores optimistic. Sweep on dev.</p>")
        best = doc.get("best")
        if isinstance(best, Mapping):
            scalars = [(k, v) for k, v in best.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
            parts.append("<p>Selected: " + ", ".join(
                f"{_e(k)} = {_e(v) if isinstance(v, int) or _num(v) is None else _f(v)}" for k, v in scalars) + "</p>")
        if doc.get("selection_rule"):
            parts.append(f'<p class="small">Rule: {_e(doc["selection_rule"])}</p>')
        if not pts:
            parts.append(_note("No sweep points found in this file."))
            continue
        keys = [k for k in ("layer", "alpha", "strength", "lang") if any(k in p for p in pts)]
        top = sorted([p for p in pts if p["score"] is not None], key=lambda p: -p["score"])[:10]
        parts.append(_table(keys + ["score"], [[_e(p.get(k, "")) for k in keys] + [_f(p["score"])] for p in top]))
        parts.append(f'<p class="small">Top {len(top)} of {len(pts)} settings by score.</p>')
        if any(p.get("layer") is not None and p.get("alpha") is not None for p in pts):
            fig = plot_sweep(pts, metric=str(doc.get("metric") or "score"),
                             title=f"Sweep{' (' + split + ' split)' if split else ''}: best cell boxed")
            figs.append(_Figure(f"sweep_{_slug(path.stem)}.png", png_bytes(fig), f"sweep {title}", "sweeps"))
            parts.append(_img(figs[-1]))
    return "\n".join(parts)


def _similarity_html(doc: Mapping[str, Any]) -> str:
    before = (doc.get("before") or {}).get("similarity") or {}
    after = (doc.get("after") or {}).get("similarity") or {}
    delta = doc.get("delta") or {}
    if not before:
        return ""
    langs = list(before)
    layers = sorted({int(k) for per in before.values() for k in per})
    anchor = doc.get("anchor", "en")

    def cell(lang: str, layer: int) -> str:
        b = {int(k): v for k, v in before[lang].items()}.get(layer)
        if b is None:
            return "—"
        text = _f(b["paired"])
        a = {int(k): v for k, v in (after.get(lang) or {}).items()}.get(layer)
        d = {int(k): v for k, v in (delta.get(lang) or {}).items()}.get(layer)
        if a is not None and d is not None:
            cls = "ns" if abs(d["paired"]) < 5e-4 else "up" if d["paired"] > 0 else "down"
            text += f' → {_f(a["paired"])} <span class="{cls}">({d["paired"]:+.3f})</span>'
        return text

    sep_b = (doc.get("before") or {}).get("separation") or {}
    sep_a = (doc.get("after") or {}).get("separation") or {}
    rows = []
    for layer in layers:
        sb = {int(k): v for k, v in sep_b.items()}.get(layer, {})
        sa = {int(k): v for k, v in sep_a.items()}.get(layer)
        sil = _f(sb.get("silhouette"))
        if sa:
            sil += f" → {_f(sa.get('silhouette'))}"
        rows.append([str(layer)] + [cell(lang, layer) for lang in langs] + [sil])
    head = (f"<p>Cosine similarity of each language's pooled representation to {_e(anchor)} on the same items "
            f"(mean over {_e(doc.get('n_items', '?'))} parallel pairs, {_e(doc.get('pooling', 'mean'))} pooling)"
            + (", before → after steering (change)" if after else "") + ".</p>")
    summary = ""
    if delta:
        last = layers[-1]
        changes = {lang: {int(k): v for k, v in per.items()}.get(last, {}).get("paired") for lang, per in delta.items()}
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes:
            down = [lang for lang, v in changes.items() if v < 0]
            up = [lang for lang, v in changes.items() if v > 0]
            summary = (f"<p>At layer {last}, steering lowered the similarity to {_e(anchor)} for "
                       f"{_e(', '.join(down) or 'no language')} and raised it for {_e(', '.join(up) or 'no language')}.</p>")
    return head + _table(["layer"] + langs + ["silhouette"], rows) + summary


def _logit_lens_html(doc: Mapping[str, Any]) -> str:
    before = doc.get("before") or {}
    after = doc.get("after") or {}
    if not before:
        return _note("No language had a usable lens share.") if doc.get("skipped") else ""
    langs = list(before)
    layers = sorted({int(k) for per in before.values() for k in per})
    rows = []
    for layer in layers:
        cells = [str(layer)]
        for lang in langs:
            b = {int(k): v for k, v in before[lang].items()}.get(layer)
            a = {int(k): v for k, v in (after.get(lang) or {}).items()}.get(layer)
            text = "—" if b is None else _f(b["anchor"], 2)
            if a is not None:
                text += f" → {_f(a['anchor'], 2)}"
            cells.append(text)
        rows.append(cells)
    rules = ", ".join(f"{_e(k)}: {_e(v)}" for k, v in (doc.get("rule") or {}).items())
    out = (f"<p>Share of the top-{_e(doc.get('k', '?'))} lens tokens (at the {_e(doc.get('positions', 'last'))} token) "
           f"that are in {_e(doc.get('anchor', 'en'))}" + (", before → after steering" if after else "")
           + f". Token language rule per language: {rules or '—'} (see xlsteer.analysis.logit_lens).</p>")
    out += _table(["layer"] + langs, rows)
    if doc.get("skipped"):
        out += _note("Skipped: " + "; ".join(f"{_e(k)} ({_e(v)})" for k, v in doc["skipped"].items()))
    return out


def _neuron_map_html(doc: Mapping[str, Any]) -> str:
    out = ""
    cats = doc.get("categories")
    if cats:
        bridges = cats.get("bridge_layers") or []
        out += f"<p>Bridge layers: <b>{_e(', '.join(map(str, bridges)) or 'none given')}</b>."
        if cats.get("rule"):
            out += f" Activity rule: {_e(cats['rule'])}."
        out += "</p>"
        pct = cats.get("percentages") or {}
        rows = [[str(layer) + (" ◆" if int(layer) in bridges else "")] + [_f(v.get(c), 1) for c in
                ("dead", "language_specific", "partial_shared", "all_shared")]
                for layer, v in sorted(pct.items(), key=lambda kv: int(kv[0]))]
        out += _table(["layer", "dead %", "language-specific %", "partial-shared %", "all-shared %"], rows)
    lape = doc.get("lape")
    if lape:
        per = lape.get("per_lang") or {}
        out += "<p>LAPE language-specific neurons per language: " + ", ".join(
            f"{_e(k)}: {_e(v)}" for k, v in per.items()) + ".</p>"
    return out or _note("No neuron categories or LAPE neurons in this file.")


def _projection_html(doc: Mapping[str, Any]) -> str:
    items = doc.get("projections") or ([doc] if doc.get("method") else [])
    rows = []
    for p in items:
        extra = ""
        if p.get("explained_variance"):
            extra = "explained variance " + ", ".join(_f(v, 2) for v in p["explained_variance"])
        elif p.get("perplexity") is not None:
            extra = f"perplexity {_f(p['perplexity'], 1)}, random_state {_e(p.get('random_state'))}"
        rows.append([_e(p.get("intervention", "—")), _e(str(p.get("method", "")).upper()), _e(p.get("layer")), extra])
    note = ("<p>PCA axes are fitted on the unsteered vectors and both panels use them; t-SNE embeds before and "
            "after jointly. X marks each language's centroid.</p>")
    return note + (_table(["intervention", "method", "layer", "fit"], rows) if rows else "")


def _regression_html(doc: Mapping[str, Any]) -> str:
    items = doc.get("regressions") or ([doc] if "points" in doc else [])
    out = ""
    for r in items:
        fit = r.get("fit")
        out += f"<h4>{_e(r.get('method') or 'method')}</h4><p>{_e(r.get('interpretation', ''))}</p>"
        if fit:
            out += _table(["slope", "intercept", "r", "p", "n"],
                          [[_f(fit["slope"]), _f(fit["intercept"]), _f(fit["r"], 2), _p(fit["p"]), _e(fit["n"])]])
    return out or _note("No regression in this file.")


def _compare_models_html(doc: Mapping[str, Any]) -> str:
    labels = doc.get("labels") or []
    summary = doc.get("summary") or {}
    if len(labels) != 2 or not summary:
        return _note("No model comparison in this file.")
    a, b = labels
    models = doc.get("models") or {}
    out = (f"<p>{_e(a)} = {_e(models.get(a, a))}, {_e(b)} = {_e(models.get(b, b))}. Difference = {_e(b)} − {_e(a)} "
           f"of the cosine similarity to {_e(doc.get('anchor', 'en'))} ({_e(doc.get('key', 'paired'))}).</p>")
    rows = [[_e(lang), f"{s['mean_difference']:+.3f}", _e(s["max_abs_layer"]), f"{s['max_abs_difference']:+.3f}"]
            for lang, s in summary.items()]
    return out + _table(["language", "mean difference over layers", "layer of largest |difference|", "difference there"],
                        rows)


_ANALYSIS_HTML = {
    "similarity": _similarity_html,
    "logit_lens": _logit_lens_html,
    "neuron_map": _neuron_map_html,
    "projection": _projection_html,
    "regression": _regression_html,
    "compare_models": _compare_models_html,
}


def _doc_figures(section: str, doc: Mapping[str, Any]) -> list[str]:
    """File names of the figures an analysis file says it wrote."""
    listed = list(doc.get("figures") or [])
    for key in ("projections", "regressions"):
        listed += [x["figure"] for x in doc.get(key) or [] if isinstance(x, Mapping) and x.get("figure")]
    return [Path(str(x)).name for x in listed]


def _replot(section: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """Figures for an analysis file whose PNGs are missing (re-drawn from its JSON)."""
    from ..analysis import plots
    from ..analysis.neuron_map import figures as neuron_figures

    tag = _slug(str(doc.get("intervention") or "none"))
    if section == "similarity":
        return {f"similarity_{tag}.png": plots.plot_similarity(doc), f"separation_{tag}.png": plots.plot_separation(doc)}
    if section == "logit_lens":
        return {f"logit_lens_{tag}.png": plots.plot_logit_lens(doc)}
    if section == "neuron_map":
        return {f"{k}.png": v for k, v in neuron_figures(doc).items()}
    if section == "projection":
        return {f"projection_{_slug(str(p.get('intervention') or 'none'))}_{p.get('method')}.png": plots.plot_projection(p)
                for p in doc.get("projections") or []}
    if section == "regression":
        return {f"regression_{_slug(str(r.get('method') or 'x'))}.png": plots.plot_regression(r)
                for r in doc.get("regressions") or [] if r.get("points")}
    if section == "compare_models":
        return {"compare_models.png": plots.plot_compare_models(doc)}
    return {}


def _analysis_section(run: RunContents, figs: list[_Figure], by_section: dict[str, list[_Figure]]) -> str:
    from ..analysis.plots import png_bytes

    parts = ['<h2 id="analysis">Analysis</h2>']
    docs = run.of_kind("analysis")
    if not docs and not any(by_section.get(s) for s in _ANALYSIS_ORDER):
        parts.append(_note('No analysis results (kind "analysis") in this run directory; run <code>xlsteer analyze'
                           "</code> with <code>-o</code> pointing here."))
        return "\n".join(parts)
    for section in _ANALYSIS_ORDER:
        title = _ANALYSIS_TITLES[section]
        parts.append(f'<h3 id="analysis-{section}">{_e(title)}</h3>')
        sec_docs = [(p, d) for p, d in docs if d.get("analysis") == section]
        available = {f.name: f for f in by_section.get(section, [])}
        if not sec_docs and not available:
            parts.append(_note(f"Not in this run ({_e(title.lower())} was not computed)."))
            continue
        shown: set[str] = set()
        for path, doc in sec_docs:
            if doc.get("intervention"):
                parts.append(f"<h4>{_e(doc['intervention'])} <span class=\"file\">({_e(path.name)})</span></h4>")
            try:
                parts.append(_ANALYSIS_HTML[section](doc))
                listed = _doc_figures(section, doc)
                if (listed and not all(n in available for n in listed)) or (not listed and not available):
                    for name, fig in _replot(section, doc).items():  # figures missing: draw them from the JSON
                        f = _Figure(name, png_bytes(fig), _caption(name), section)
                        figs.append(f)
                        available[name] = f
                        listed.append(name)
            except _MALFORMED as e:
                parts.append(_unreadable(path, e))
                listed = []
            for note in doc.get("notes") or []:
                parts.append(_note(_e(note)))
            for name in listed:
                if name in available and name not in shown:
                    parts.append(_img(available[name]))
                    shown.add(name)
        parts.extend(_img(f) for name, f in available.items() if name not in shown)
    for path, doc in docs:
        if doc.get("analysis") not in _ANALYSIS_ORDER:
            parts.append(f"<h3>{_e(doc.get('analysis'))}</h3>" + _kv_table(doc, skip=("kind",)))
    return "\n".join(parts)


_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#ffffff;--alt:#f6f8fa;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);
 background:var(--bg);margin:0;line-height:1.45;font-size:15px}
header{background:#0b3d66;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:24px} header p{margin:4px 0 0;color:#cfe3f5}
header code{background:#164f80;color:#fff}
nav{position:sticky;top:0;background:#eef3f8;border-bottom:1px solid var(--line);padding:8px 32px;z-index:2}
nav a{margin-right:18px;color:#0b3d66;text-decoration:none;font-weight:600}
main{padding:8px 32px 40px;max-width:1400px}
h2{border-bottom:2px solid #0b3d66;padding-bottom:4px;margin-top:34px}
h3{margin-top:26px} h4{margin:16px 0 6px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13px}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:#e8eef4} tbody tr:nth-child(even){background:var(--alt)}
table.kv td:first-child{white-space:nowrap}
.ci{color:var(--muted)} .sig{color:var(--ok);font-weight:600} .loss{color:var(--bad);font-weight:600}
.ns{color:var(--muted)} .up{color:var(--ok)} .down{color:var(--bad)}
.badge{display:inline-block;background:#fff1c2;color:var(--warn);border:1px solid #e5c35c;border-radius:3px;
 padding:0 4px;font-size:12px}
.note{color:var(--muted);background:var(--alt);border-left:4px solid var(--line);padding:6px 10px}
.warn{color:#6b4700;background:#fff8e1;border-left:4px solid #e5a50a;padding:6px 10px}
.verdict-line{font-size:16px;background:#eef6ff;border-left:4px solid #0b66c2;padding:8px 12px}
.small{font-size:12px;color:var(--muted)} .file{font-size:12px;color:var(--muted);font-weight:normal}
figure{margin:12px 0 22px} figure img{max-width:100%;height:auto;border:1px solid var(--line)}
figcaption{font-size:13px;color:var(--muted)}
code{background:var(--alt);padding:0 3px;border-radius:3px}
footer{color:var(--muted);font-size:12px;padding:16px 32px;border-top:1px solid var(--line)}
"""


def build_report(run_dir: str | Path, output_html: str | Path | None = None, *, alpha: float = 0.05,
                 title: str | None = None) -> Path:
    """Write one self-contained HTML page for ``run_dir`` (default ``run_dir/report.html``).

    Also writes every embedded PNG to ``<output stem>_figures/`` beside the page. Returns the
    page's path.
    """
    from .. import __version__
    from ..io import atomic_write_bytes, atomic_write_text, check_writable
    from ..provenance import now_utc

    if not 0.0 < alpha < 1.0:
        raise UsageError(f"alpha={alpha} must lie in (0, 1); e.g. 0.05")
    root = Path(run_dir)
    run = load_run(root)
    out = check_writable(Path(output_html) if output_html is not None else root / "report.html")

    figs: list[_Figure] = []
    by_section: dict[str, list[_Figure]] = {}
    for path in run.figures:
        try:
            data = path.read_bytes()
        except OSError as e:
            run.problems.append((path, f"unreadable figure ({e.strerror or e})"))
            continue
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            run.problems.append((path, "not a PNG file"))
            continue
        f = _Figure(path.name, data, _caption(path.name), _figure_section(path.name))
        figs.append(f)
        by_section.setdefault(f.section, []).append(f)

    body = [_setup_section(run), _scores_section(run, figs, alpha)]
    if by_section.get("scores"):
        body.append("<h3>Score figures from the run directory</h3>" + "".join(_img(f) for f in by_section["scores"]))
    body.append(_sweeps_section(run, figs))
    if by_section.get("sweeps"):
        body.append("".join(_img(f) for f in by_section["sweeps"]))
    body.append(_analysis_section(run, figs, by_section))
    other = by_section.get("other", [])
    body.append('<h2 id="figures">Other figures</h2>' + ("".join(_img(f) for f in other) if other else
                                                          _note("No other figures in figures/.")))
    files = [(_e(p.name), _e(d.get("kind")) + (f" ({_e(d.get('analysis'))})" if d.get("analysis") else ""), "read")
             for p, d in run.docs]
    files += [(_e(p.name), "—", f'<span class="loss">skipped: {_e(why)}</span>') for p, why in run.problems]
    body.append('<h2 id="files">Files</h2>' + (_table(["file", "kind", "status"], files) if files else
                                                 _note("The run directory holds no JSON files.")))

    heading = title or f"xlsteer report — {root.resolve().name}"
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (("setup", "Setup"), ("scores", "Scores"), ("sweeps", "Sweeps"),
                                                         ("analysis", "Analysis"), ("figures", "Other figures"),
                                                         ("files", "Files")))
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(heading)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(heading)}</h1><p>run directory <code>{_e(root)}</code> · {len(run.docs)} result files · "
        f"{len(figs)} figures · α = {alpha:g}</p></header><nav>{nav}</nav><main>"
        + "\n".join(body)
        + f"</main><footer>Generated by xlsteer {_e(__version__)} at {_e(now_utc())}. Self-contained: all figures are "
        "embedded; nothing is loaded from elsewhere.</footer></body></html>\n"
    )
    fig_dir = out.parent / f"{out.stem}_figures"
    for f in figs:
        atomic_write_bytes(fig_dir / f.name, f.png)
    atomic_write_text(out, page)
    return out
