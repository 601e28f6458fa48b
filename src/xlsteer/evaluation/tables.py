"""Every table the CLI prints (eval, sweep, compare, table), through one formatter (:func:`xlsteer.formats.table`).

Why: the JSON holds everything (per-item records, CIs, paired tests), but a reader needs the
interval and the test next to each number, and the warnings (degenerate predictors, too few
items to tell) in the same place. Nothing is recomputed: every figure is read from the typed
result (:mod:`xlsteer.results.schema`), so a table says exactly what the file says.
``style="markdown"`` gives GitHub Markdown (``xlsteer table``, ``compare.md``);
``style="text"`` plain columns for the terminal.

- One run: per language n, every metric and continuous score with its 95% CI, agreement with the
  anchor and Jensen-Shannon divergence of the answer distributions, the majority answer's share
  (flagged when degenerate); last row the average over the non-anchor languages with its CI.
- A steered run (``baseline`` and ``comparison`` inside): per language and metric, unsteered and
  steered score, the paired difference with its CI, p (which test), p Holm-adjusted over the
  non-anchor languages, MDE and verdict; the average's row uses the paired permutation test
  stratified by language (its CI: the paired bootstrap stratified alike).
- A sweep: the main metric of every grid point per language, and the selection.
- A methods comparison (``xlsteer compare``): methods x languages with ▲/▼ where the change
  against zero-shot is significant after Holm, and the cost of each method.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from ..formats import MISSING, p_value, table
from ..results import COMPARE, EVAL, SWEEP

def ci(mean: float, lo: float | None, hi: float | None, digits: int = 3) -> str:
    if lo is None or hi is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _digits(name: str) -> int:
    """Scores in [0, 1] with 3 digits; log-probs (margins, fluency: nats) with 2."""
    return 2 if name in ("margin", "fluency") else 3


def _names(res: Any) -> list[str]:
    return list(res.metrics.names) + list(res.metrics.continuous)


def _score(res: Any, lang: str, name: str) -> Any:
    d = res.per_lang[lang]
    return d.metrics.get(name) or d.continuous.get(name)


def _agree(c: Any) -> str:
    value = c.agreement if c.agreement is not None else c.correct_agreement
    return f"{value:.2f}"


def parallel(res: Any) -> bool:
    """Whether the run's task pairs items across languages (files before non-parallel tasks: yes)."""
    spec = getattr(res, "task_spec", None)
    return getattr(spec, "pairing", "id") != "none" if spec is not None else True


def header(res: Any) -> str:
    from ..results.rows import method_label

    iv = res.intervention
    what = "unsteered" if not iv else method_label(iv)
    lim = f" (first {res.limit} items per language)" if res.limit else ""
    return (f"{res.task} {res.split}{lim}, model {res.model.name}, template {res.template.name} "
            f"v{res.template.version}, {what}; data hash {str(res.data.get('data_hash', ''))[:12]}, seed {res.seed}")


def run_table(res: Any, style: str = "markdown") -> str:
    """One run (steered or not): scores with CIs, consistency, degeneracy."""
    anchor, names = res.anchor, _names(res)
    cons = {lang: res.per_lang[lang].consistency for lang in res.langs}
    apart = not parallel(res) and anchor in res.langs and len(res.langs) > 1  # cross-language columns say so
    has_cons = any(cons.values()) or apart
    has_js = any(c is not None and c.mean_js is not None for c in cons.values())
    head = ["lang", "n", *[f"{n} [95% CI]" for n in names]]
    head += ([f"agree w/ {anchor}"] + (["JS"] if has_js else [])) if has_cons else []
    head.append("majority answer")
    rows = []
    for lang in res.langs:
        d = res.per_lang[lang]
        cells = [lang, d.n, *[ci(s.mean, s.ci_low, s.ci_high, _digits(n)) for n in names
                              for s in [_score(res, lang, n)]]]
        c = cons[lang]
        if has_cons:
            cells += ["not parallel" if apart and lang != anchor else MISSING if c is None else _agree(c)] + (
                [(MISSING if c is None or c.mean_js is None else f"{c.mean_js:.3f}")] if has_js else [])
        deg = d.degenerate
        cells.append("" if deg is None else f"{deg.majority_share:.0%}" + (" ⚠ degenerate" if deg.degenerate else ""))
        rows.append(cells)
    avg = res.average
    if len(avg.langs) > 1:  # the average of one language is that language
        cells = [f"avg non-{anchor}", sum(res.per_lang[x].n for x in avg.langs)]
        for n in names:
            value = avg.metrics.get(n, avg.continuous.get(n))
            iv = avg.ci.get(n)
            cells.append(MISSING if value is None else ci(value, iv and iv.ci_low, iv and iv.ci_high, _digits(n)))
        if has_cons:
            a = avg.consistency
            cells += ["not parallel" if apart else f"{a.get('agreement', a.get('correct_agreement')):.2f}" if a
                      else MISSING]
            cells += [f"{a['mean_js']:.3f}" if "mean_js" in a else MISSING] if has_js else []
        rows.append(cells + [""])
    out = [header(res), "", table(head, rows, style)]
    degen = [lang for lang in res.langs if res.per_lang[lang].degenerate and res.per_lang[lang].degenerate.degenerate]
    if degen:
        out += ["", f"⚠ degenerate predictor (one answer in >= 90% of items): {', '.join(degen)}"]
    if apart:
        out += ["", f"not parallel: each language has its own items, so agreement with {anchor} and the divergence "
                    "of answer distributions are not computed"]
    return "\n".join(out + task_summary_tables(res, style))


def task_summary_tables(res: Any, style: str = "markdown") -> list[str]:
    """The tables a task's own summary declares (``task_summary.tables``: title, headers, rows),
    e.g. LCB's figures as its paper reports them."""
    summary = getattr(res, "task_summary", None)
    if not isinstance(summary, dict):
        return []
    out: list[str] = []
    for t in summary.get("tables") or ():
        if isinstance(t, dict) and isinstance(t.get("headers"), list) and isinstance(t.get("rows"), list):
            out += ["", str(t.get("title", "")), "", table(t["headers"], t["rows"], style)]
    return out


def _diff(t: Any, digits: int) -> str:
    return f"{t.diff:+.{digits}f} [{t.diff_ci_low:+.{digits}f}, {t.diff_ci_high:+.{digits}f}]"


def verdict_of(t: Any, alpha: float = 0.05) -> str:
    """The verdict of a paired test, read from the Holm-adjusted p where Holm applies (a language
    among several), else from p; the unadjusted p stays in its own column."""
    from .significance import verdict

    p = t.p_holm if getattr(t, "p_holm", None) is not None else t.p
    return verdict(p, t.diff, alpha)


def _test_row(first: str, name: str, base: str, steered: str, t: Any, alpha: float = 0.05) -> list[str]:
    digits = _digits(name)
    return [first, name, base, steered, _diff(t, digits), f"{p_value(t.p)} ({t.test})", p_value(t.p_holm),
            MISSING if t.mde is None else f"{t.mde:.{digits}f}", verdict_of(t, alpha)]


def comparison_table(res: Any, style: str = "markdown") -> str:
    """A steered run against its unsteered baseline on the same items."""
    if res.comparison is None or res.baseline is None:
        raise DataError("this results file has no unsteered baseline to compare with; "
                        "run xlsteer eval with --intervention FILE (or --method) to get one")
    base, comp, anchor = res.baseline, res.comparison, res.anchor
    head = ["lang", "metric", "unsteered [95% CI]", "steered [95% CI]", "diff [95% CI]", "p (test)", "p Holm", "MDE",
            "verdict"]
    rows = []
    level = float(getattr(comp, "alpha", 0.05) or 0.05)
    for lang in res.langs:
        c = comp.per_lang[lang]
        for name in _names(res):
            t = c.metrics.get(name) or c.continuous.get(name)
            a, b = _score(base, lang, name), _score(res, lang, name)
            rows.append(_test_row(lang, name, ci(a.mean, a.ci_low, a.ci_high, _digits(name)),
                                  ci(b.mean, b.ci_low, b.ci_high, _digits(name)), t, level))
    if len(comp.average.langs) > 1:  # the average of one language is that language
        for name, t in comp.average.tests.items():
            rows.append(_test_row(f"avg non-{anchor}", name, _avg(base, name), _avg(res, name), t, level))
    out = [header(res), "", table(head, rows, style), ""]
    out.append(f"Verdicts at {level:g} from p Holm-adjusted over the non-{anchor} languages (unadjusted p beside it); "
               "the average: paired permutation test stratified by language.")
    out.append("Predictions changed by steering: " + ", ".join(
        f"{lang} {comp.per_lang[lang].prediction_changed:.0%}" for lang in res.langs) + ".")
    cons = [(lang, comp.per_lang[lang].consistency) for lang in res.langs]
    cons = [f"{lang} {_agree(c['base'])} -> {_agree(c['other'])}" for lang, c in cons if c.get("base") and c.get("other")]
    if cons:
        out.append(f"Agreement with {anchor} (unsteered -> steered): {', '.join(cons)}.")
    return "\n".join(out)


def _avg(res: Any, name: str) -> str:
    value = res.average.metrics.get(name, res.average.continuous.get(name))
    iv = res.average.ci.get(name)
    return MISSING if value is None else ci(value, iv and iv.ci_low, iv and iv.ci_high, _digits(name))


def results_tables(res: Any, style: str = "markdown") -> str:
    """The tables of an eval file: the run; for a steered run also its baseline and the comparison."""
    if getattr(res, "format", None) != EVAL:
        raise DataError("not an xlsteer eval results file (expected the JSON written by xlsteer eval -o FILE)")
    if res.baseline is not None and res.comparison is not None:
        return "\n\n".join([run_table(res.baseline, style), run_table(res, style), comparison_table(res, style)])
    return run_table(res, style)


def sweep_table(rec: Any, style: str = "text") -> str:
    """Main metric per grid point and language on the selection split (the unsteered model first),
    each setting's dev gain over it with CI and p, then the choices with the rule's evidence."""
    from .evidence import evidence_text

    main, tie = rec.metrics.main, rec.metrics.tie_break
    langs = rec.langs
    targets = [lang for lang in langs if lang != rec.anchor]
    with_avg = len(targets) > 1
    rows = []
    if rec.baseline is not None:
        bl = rec.baseline
        rows.append(["unsteered", *[f"{bl['per_lang'][lang]['metrics'][main]['mean']:.3f}" for lang in langs],
                     *([f"{bl['average']['metrics'].get(main, float('nan')):.3f}"] if with_avg else []), MISSING, MISSING])
    for e in rec.results:
        gain = getattr(e, "dev_gain", None) or {}
        rows.append([getattr(e, "key", None) or f"L{e.layer}@{e.alpha:g}",
                     *[f"{e.per_lang[lang].metrics[main].mean:.3f}" for lang in langs],
                     *([f"{e.average.metrics.get(main, float('nan')):.3f}"] if with_avg else []),
                     f"{gain['gain']:+.3f} [{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}]" if gain else MISSING,
                     f"{p_value(gain['p'])} ({gain['test']})" if gain else MISSING])
    head = ["setting", *langs, *([f"avg non-{rec.anchor}"] if with_avg else []), "dev gain [95% CI]", "p (test)"]
    out = [f"sweep {rec.task} on {rec.split}, main metric {main}, tie-break {tie}", "",
           table(head, rows, style), "", f"rule: {rec.selection_rule}"]
    for lang, why in (getattr(rec, "left_out", None) or {}).items():
        out.append(f"{lang}: {why} — left out of the selection; takes the global choice")
    for lang, b in rec.best_per_lang.items():
        ev = getattr(b, "evidence", None)
        out.append(f"choice for {lang}: {choice_text(b)} ({main} {b.main:.3f})" + (f"; {evidence_text(ev)}" if ev else ""))
    b = rec.best
    gain = ("" if b.gain_over_baseline is None or not b.steer
            else f", {b.gain_over_baseline:+.3f} vs unsteered on {rec.split}")
    ev = getattr(b, "evidence", None)
    out.append(f"selected (all languages): {choice_text(b)} ({main} {b.main:.3f}{gain})"
               + (f"; {evidence_text(ev)}" if ev else ""))
    return "\n".join(out)


def choice_text(choice: Any) -> str:
    """A sweep's choice in words: a layer and alpha, every fitted layer, or no steering."""
    if not getattr(choice, "steer", choice.get("steer", True) if isinstance(choice, dict) else True):
        return "no steering"
    layer, alpha = (choice["layer"], choice["alpha"]) if isinstance(choice, dict) else (choice.layer, choice.alpha)
    where = "every fitted layer" if layer == -1 else f"layer {layer}"
    return f"{where} alpha {alpha:g}"


def mark(p_holm: float | None, diff: float | None, alpha: float) -> str:
    """▲/▼ for a change significant after Holm (over the non-anchor languages), else nothing."""
    if p_holm is None or diff is None or p_holm >= alpha:
        return ""
    return "▲" if diff > 0 else "▼"


def _pct_cell(cell: Any, reference: bool, alpha: float, holm: bool = True) -> str:
    if getattr(cell, "score", None) is None:
        return MISSING
    m = "" if reference else mark(cell.p_holm if holm else cell.p, cell.diff, alpha)
    body = f"{100 * cell.score:.1f}"
    if cell.ci_low is not None and cell.ci_high is not None:
        body += f" [{100 * cell.ci_low:.1f}, {100 * cell.ci_high:.1f}]"
    return body + (f" {m}" if m else "")


def _guard_cell(g: Any, reference: bool, alpha: float, digits: int) -> str:
    """A guard score's average and its change against the reference: ``-2.31 (+0.12 ▲)``."""
    if not g or g.get("score") is None:
        return MISSING
    body = f"{g['score']:.{digits}f}"
    if reference or g.get("diff") is None:
        return body
    p = g.get("p")
    m = "" if p is None or p >= alpha else (" ▲" if g["diff"] > 0 else " ▼")
    return body + f" ({g['diff']:+.{digits}f}{m})"


def _fmt_int(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 1_000 else str(n)


def methods_table(rec: Any, style: str = "markdown") -> str:
    """``xlsteer compare``: rows = methods, columns = languages + average over non-anchor languages + cost."""
    langs, anchor, alpha = rec.langs, rec.anchor, rec.alpha_level
    n = rec.item_ids.per_lang
    with_avg = len([lang for lang in langs if lang != anchor]) > 1  # the average of one language is that language
    guard = list(dict.fromkeys(g for name in rec.methods for g in (getattr(rec.rows[name], "guard", None) or {})))
    kept = _preservation_head(rec)
    head = ["method", *[f"{lang} (n={n.get(lang, '?')})" for lang in langs], *([f"avg non-{anchor}"] * with_avg),
            *[f"{g} avg (Δ)" for g in guard], *([kept] if kept else []), "fit s", "+tok/item", "trained params"]
    rows, footnotes = [], []
    for name in rec.methods:
        row = rec.rows[name]
        ref = name == rec.reference
        if row.error:
            cells = [MISSING] * (len(langs) + with_avg + len(guard) + bool(kept))
            footnotes.append(f"{name}: not run — {row.error}")
        else:
            cells = [_pct_cell(row.per_lang[lang], ref, alpha) for lang in langs]
            avg = _pct_cell(row.average, ref, alpha, holm=False)
            if with_avg:
                cells.append(avg + (" †" if row.average.partial and row.average.score is not None else ""))
            cells += [_guard_cell((getattr(row, "guard", None) or {}).get(g), ref, alpha, _digits(g)) for g in guard]
            cells += [_preservation_cell(getattr(row, "preservation", None), alpha)] if kept else []
            footnotes += [f"{name}, {lang}: {why}" for lang, why in row.skipped.items()]
            footnotes += selection_note(name, getattr(row, "selection", None))
        cost = row.cost
        fit_s = cost.get("fit_seconds", 0.0) + cost.get("selection_seconds", 0.0)
        cells += [f"{fit_s:.0f}" if fit_s >= 1 else ("0" if fit_s == 0 else f"{fit_s:.1f}"),
                  f"{cost.get('extra_tokens_per_item', 0):.0f}", _fmt_int(int(cost.get("trainable_parameters", 0)))]
        rows.append([name, *cells])
    out = [f"{rec.task} {rec.split}, {rec.main} (%) with 95% bootstrap CI — model {rec.model.name}, template "
           f"{rec.template.name} v{rec.template.version}", "", table(head, rows, style), ""]
    out.append(f"▲/▼: significantly higher/lower than {rec.reference} on the same items (p Holm-adjusted over the "
               f"non-{anchor} languages < {alpha:g}; McNemar exact test for 0/1 scores, paired permutation test "
               f"otherwise; the average column: paired permutation test stratified by language, p < {alpha:g}). † average over the "
               "languages the method covers. fit s = training/fitting/search + dev selection seconds; "
               "+tok/item = extra model tokens per item.")
    if guard:
        out.append("Quality guard (average over the non-anchor languages, Δ against the reference, ▲/▼ when the "
                   "paired permutation test stratified by language gives p < 0.05): fluency = mean log-likelihood per token of the "
                   "output under the unsteered model (nats; higher = more fluent); degeneration = share of repeated "
                   "4-grams of tokens in the output (seq-rep-4; higher = more repetition).")
    if kept:
        out.append(f"{kept}: each steering row's selected intervention on that task's test items (the languages "
                   f"both tasks have), paired against the unsteered model; ▲/▼: stratified paired permutation p < "
                   f"{alpha:g}; n/a: not an intervention.")
    out += [f"- {f}" for f in footnotes]
    return "\n".join(out) + "\n"


def _preservation_head(rec: Any) -> str | None:
    """The preservation column's title (``xquad f1 avg (Δ)``), or None when no row measured one."""
    for name in rec.methods:
        p = getattr(rec.rows[name], "preservation", None)
        if isinstance(p, dict) and p.get("status") in ("ok", "reference") and p.get("main"):
            return f"{p['task']} {p['main']} avg (Δ)"
    return None


def _preservation_cell(p: Any, alpha: float) -> str:
    if not isinstance(p, dict) or p.get("status") == "n/a":
        return "n/a"
    avg = p.get("average") or {}
    if avg.get("score") is None:
        return MISSING
    body = f"{100 * avg['score']:.1f}"
    if p.get("status") == "reference" or avg.get("diff") is None:
        return body
    m = mark(avg.get("p"), avg.get("diff"), alpha)
    return body + f" ({100 * avg['diff']:+.1f}{' ' + m if m else ''})"


def selection_note(name: str, sel: Any) -> list[str]:
    """A steering row's dev selection in words: a "no steering" choice must be visible."""
    from .evidence import evidence_text

    if not isinstance(sel, dict) or "steer" not in sel:
        return []
    ev = f" ({evidence_text(sel['evidence'])})" if sel.get("evidence") else ""
    if not sel["steer"]:
        return [f"{name}: {sel.get('decision', 'no steering')} — its scores are the unsteered model's{ev}"]
    off = [lang for lang, v in (sel.get("per_lang") or {}).items() if not v.get("steer", True)]
    text = f"{name}: chosen on dev — {sel.get('decision', '')}"
    if off and sel.get("select") == "per-lang":
        text += f" (unsteered for {', '.join(off)})"
    return [text + ev]


def tables_of(doc: Any, style: str = "markdown") -> str:
    """The tables of any result file ``xlsteer table`` is given: eval, methods comparison or sweep."""
    fmt = getattr(doc, "format", None)
    if fmt == COMPARE:
        return methods_table(doc, style).rstrip("\n")
    if fmt == SWEEP:
        return sweep_table(doc, style)
    if fmt == EVAL:
        return results_tables(doc, style)
    raise DataError(f"xlsteer table prints eval, compare and sweep results, not {fmt} files; "
                    "give the JSON written by xlsteer eval / compare / sweep")
