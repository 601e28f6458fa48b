"""Analysis files as blocks the templates render: paragraphs, notes and plain-text tables.

Each function takes one ``xlsteer.analysis`` document (as a dict) and returns blocks; the
templates escape every string. Figures missing from ``figures/`` are redrawn from the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..formats import MISSING, number, p_value

ORDER = ("similarity", "logit_lens", "neuron_map", "projection", "regression", "compare_models")
TITLES = {
    "similarity": "Similarity to the anchor",
    "logit_lens": "Logit lens",
    "neuron_map": "Neuron categories (CLAS) and language neurons (LAPE)",
    "projection": "Projections (PCA, t-SNE)",
    "regression": "Gain vs. change in similarity",
    "compare_models": "Base vs. instruction-tuned",
}


@dataclass
class Block:
    kind: str  # "p", "note", "h4", "table"
    text: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def p(text: str) -> Block:
    return Block("p", text)


def note(text: str) -> Block:
    return Block("note", text)


def table(headers: list[str], rows: list[list[Any]]) -> Block:
    return Block("table", headers=headers, rows=[[str(c) for c in r] for r in rows])


def _by_layer(per: Mapping[str, Any] | None) -> dict[int, Any]:
    return {int(k): v for k, v in (per or {}).items()}


def similarity(doc: Mapping[str, Any]) -> list[Block]:
    before = (doc.get("before") or {}).get("similarity") or {}
    after = (doc.get("after") or {}).get("similarity") or {}
    delta = doc.get("delta") or {}
    if not before:
        return []
    langs = list(before)
    layers = sorted({int(k) for per in before.values() for k in per})
    anchor = doc.get("anchor", "en")
    sep_b = _by_layer((doc.get("before") or {}).get("separation"))
    sep_a = _by_layer((doc.get("after") or {}).get("separation"))
    rows = []
    for layer in layers:
        cells = [layer]
        for lang in langs:
            b = _by_layer(before[lang]).get(layer)
            a, d = _by_layer(after.get(lang)).get(layer), _by_layer(delta.get(lang)).get(layer)
            text = MISSING if b is None else number(b["paired"])
            if b is not None and a is not None and d is not None:
                text += f" → {number(a['paired'])} ({d['paired']:+.3f})"
            cells.append(text)
        sil = number(sep_b.get(layer, {}).get("silhouette"))
        if sep_a.get(layer):
            sil += f" → {number(sep_a[layer].get('silhouette'))}"
        rows.append(cells + [sil])
    out = [p(f"Cosine similarity of each language's pooled representation to {anchor} on the same items "
             f"(mean over {doc.get('n_items', '?')} parallel pairs, {doc.get('pooling', 'mean')} pooling)"
             + (", before → after steering (change)" if after else "") + "."),
           table(["layer", *langs, "silhouette"], rows)]
    if delta:
        last = layers[-1]
        changes = {lang: _by_layer(per).get(last, {}).get("paired") for lang, per in delta.items()}
        down = [lang for lang, v in changes.items() if v is not None and v < 0]
        up = [lang for lang, v in changes.items() if v is not None and v > 0]
        out.append(p(f"At layer {last}, steering lowered the similarity to {anchor} for "
                     f"{', '.join(down) or 'no language'} and raised it for {', '.join(up) or 'no language'}."))
    return out


def logit_lens(doc: Mapping[str, Any]) -> list[Block]:
    before, after = doc.get("before") or {}, doc.get("after") or {}
    if not before:
        return [note("No language had a usable lens share.")]
    langs = list(before)
    layers = sorted({int(k) for per in before.values() for k in per})
    rows = []
    for layer in layers:
        cells = [layer]
        for lang in langs:
            b, a = _by_layer(before[lang]).get(layer), _by_layer(after.get(lang)).get(layer)
            cells.append((MISSING if b is None else number(b["anchor"], 2))
                         + (f" → {number(a['anchor'], 2)}" if a else ""))
        rows.append(cells)
    rules = ", ".join(f"{k}: {v}" for k, v in (doc.get("rule") or {}).items())
    out = [p(f"Share of the top-{doc.get('k', '?')} lens tokens (at the {doc.get('positions', 'last')} token) that "
             f"are in {doc.get('anchor', 'en')}" + (", before → after steering" if after else "")
             + f". Token language rule per language: {rules or '—'}."), table(["layer", *langs], rows)]
    if doc.get("skipped"):
        out.append(note("Skipped: " + "; ".join(f"{k} ({v})" for k, v in doc["skipped"].items())))
    return out


def neuron_map(doc: Mapping[str, Any]) -> list[Block]:
    out: list[Block] = []
    cats = doc.get("categories")
    if cats:
        bridges = cats.get("bridge_layers") or []
        out.append(p(f"Bridge layers (◆): {', '.join(map(str, bridges)) or 'none given'}."
                     + (f" Activity rule: {cats['rule']}." if cats.get("rule") else "")))
        rows = [[f"{layer}{' ◆' if int(layer) in bridges else ''}",
                 *[number(v.get(c), 1) for c in ("dead", "language_specific", "partial_shared", "all_shared")]]
                for layer, v in sorted((cats.get("percentages") or {}).items(), key=lambda kv: int(kv[0]))]
        out.append(table(["layer", "dead %", "language-specific %", "partial-shared %", "all-shared %"], rows))
    lape = doc.get("lape")
    if lape:
        out.append(p("LAPE language-specific neurons per language: "
                     + ", ".join(f"{k}: {v}" for k, v in (lape.get("per_lang") or {}).items()) + "."))
    return out or [note("No neuron categories or LAPE neurons in this file.")]


def projection(doc: Mapping[str, Any]) -> list[Block]:
    rows = []
    for x in doc.get("projections") or []:
        if x.get("explained_variance"):
            fit = "explained variance " + ", ".join(number(v, 2) for v in x["explained_variance"])
        elif x.get("perplexity") is not None:
            fit = f"perplexity {number(x['perplexity'], 1)}, random_state {x.get('random_state')}"
        else:
            fit = ""
        rows.append([x.get("intervention") or MISSING, str(x.get("method", "")).upper(), x.get("layer"), fit])
    out = [p("PCA axes are fitted on the unsteered vectors and both panels use them; t-SNE embeds before and after "
             "jointly. X marks each language's centroid.")]
    return out + ([table(["intervention", "method", "layer", "fit"], rows)] if rows else [])


def regression(doc: Mapping[str, Any]) -> list[Block]:
    out: list[Block] = []
    for r in doc.get("regressions") or []:
        out += [Block("h4", r.get("method") or "method"), p(r.get("interpretation", ""))]
        fit = r.get("fit")
        if fit:
            out.append(table(["slope", "intercept", "r", "p", "n"], [[number(fit["slope"]), number(fit["intercept"]),
                                                                  number(fit["r"], 2), p_value(fit["p"]), fit["n"]]]))
    return out or [note("No regression in this file.")]


def compare_models(doc: Mapping[str, Any]) -> list[Block]:
    labels, summary = doc.get("labels") or [], doc.get("summary") or {}
    if len(labels) != 2 or not summary:
        return [note("No model comparison in this file.")]
    a, b = labels
    models = doc.get("models") or {}
    rows = [[lang, f"{s['mean_difference']:+.3f}", s["max_abs_layer"], f"{s['max_abs_difference']:+.3f}"]
            for lang, s in summary.items()]
    return [p(f"{a} = {models.get(a, a)}, {b} = {models.get(b, b)}. Difference = {b} − {a} of the cosine similarity "
              f"to {doc.get('anchor', 'en')} ({doc.get('key', 'paired')})."),
            table(["language", "mean difference over layers", "layer of largest |difference|", "difference there"],
                  rows)]


BLOCKS = {"similarity": similarity, "logit_lens": logit_lens, "neuron_map": neuron_map, "projection": projection,
          "regression": regression, "compare_models": compare_models}


def listed_figures(doc: Mapping[str, Any]) -> list[str]:
    """File names of the figures an analysis file says it wrote."""
    given = doc.get("figures")
    names = list(given) if isinstance(given, list) else []
    for key in ("projections", "regressions"):
        items = doc.get(key)
        names += [x["figure"] for x in (items if isinstance(items, list) else [])
                  if isinstance(x, Mapping) and x.get("figure")]
    return [str(x).replace("\\", "/").rsplit("/", 1)[-1] for x in names]


def redraw(section: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """Figures of an analysis file whose PNGs are missing, drawn from its JSON."""
    from ..analysis import plots
    from ..analysis.plots import neuron_figures
    from ..filenames import slug as _slug

    tag = _slug(str(doc.get("intervention") or "none"))
    if section == "similarity":
        return {f"similarity_{tag}.png": plots.plot_similarity(doc), f"separation_{tag}.png": plots.plot_separation(doc)}
    if section == "logit_lens":
        return {f"logit_lens_{tag}.png": plots.plot_logit_lens(doc)}
    if section == "neuron_map":
        return {f"{_slug(k)}.png": v for k, v in neuron_figures(doc).items()}
    if section == "projection":
        return {f"projection_{_slug(str(x.get('intervention') or 'none'))}_{_slug(x.get('method'))}.png":
                plots.plot_projection(x) for x in doc.get("projections") or [] if isinstance(x, Mapping)}
    if section == "regression":
        return {f"regression_{_slug(str(r.get('method') or 'x'))}.png": plots.plot_regression(r)
                for r in doc.get("regressions") or [] if isinstance(r, Mapping) and r.get("points")}
    if section == "compare_models":
        return {"compare_models.png": plots.plot_compare_models(doc)}
    return {}
