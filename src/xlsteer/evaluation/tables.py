"""Markdown tables of a results file, one row per language, for papers, notes and issues.

Why: the JSON of ``xlsteer eval`` holds everything (per-item records, CIs, paired tests), but
what a reader needs is a table with the interval and the test next to each number, and the
warnings (degenerate predictors, too few items to tell) in the same place. Nothing is
recomputed: every figure is read from the file, so the table says exactly what the file says.

- An unsteered run: per language n, every metric and continuous score with its 95% CI,
  agreement with the anchor language and Jensen-Shannon divergence of the answer
  distributions, and the majority answer's share (flagged when degenerate).
- A steered run (with ``baseline`` and ``comparison``): per language and metric, unsteered
  and steered score, the paired difference with its CI, p (which test), MDE and verdict, the
  share of changed predictions and agreement with the anchor before -> after. "p Holm" is p
  adjusted over the non-anchor languages (the verdict uses the unadjusted p, as per language).
- The last row is the average over the non-anchor languages (with its CI and its own paired
  test where the file has them).
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError


def _ci(m: dict[str, Any] | None, digits: int) -> str:
    if not m:
        return "–"
    return f"{m['mean']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"


def _diff(t: dict[str, Any], digits: int) -> str:
    return f"{t['diff']:+.{digits}f} [{t['diff_ci_low']:+.{digits}f}, {t['diff_ci_high']:+.{digits}f}]"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


def _digits(name: str) -> int:
    """Scores in [0, 1] with 3 digits; log-prob margins (nats) with 2."""
    return 2 if name == "margin" else 3


def _consistency_cells(c: dict[str, Any], with_js: bool) -> list[str]:
    agree = c.get("agreement", c.get("correct_agreement"))
    cells = ["–" if agree is None else f"{agree:.2f}"]
    return cells + ([f"{c['mean_js']:.3f}" if "mean_js" in c else "–"] if with_js else [])


def _metric(res: dict[str, Any], lang: str, name: str) -> dict[str, Any] | None:
    d = res["per_lang"][lang]
    return d["metrics"].get(name) or d["continuous"].get(name)


def _average(res: dict[str, Any], name: str, digits: int) -> str:
    avg = res.get("average", {})
    value = avg.get("metrics", {}).get(name, avg.get("continuous", {}).get(name))
    if value is None:
        return "–"
    ci = avg.get("ci", {}).get(name)
    return f"{value:.{digits}f}" + (f" [{ci['ci_low']:.{digits}f}, {ci['ci_high']:.{digits}f}]" if ci else "")


def _check(res: Any) -> dict[str, Any]:
    if not isinstance(res, dict) or res.get("format") != "xlsteer.results" or "per_lang" not in res:
        raise DataError("not an xlsteer results file (expected the JSON written by xlsteer eval -o FILE)")
    return res


def _header(res: dict[str, Any]) -> str:
    tpl = res.get("template", {})
    iv = res.get("intervention")
    what = "unsteered" if not iv else f"{iv.get('method', 'intervention')} (strength {iv.get('strength')})"
    lim = res.get("limit")
    return (f"**{res['task']}** {res['split']}{' (first ' + str(lim) + ' items per language)' if lim else ''}, "
            f"model {res['model']['name']}, template {tpl.get('name')} v{tpl.get('version')}, {what}; "
            f"data hash {str(res.get('data', {}).get('data_hash', ''))[:12]}, seed {res.get('seed')}")


def run_table(res: dict[str, Any]) -> str:
    """Markdown table of one run (steered or not): scores with CIs, consistency, degeneracy."""
    res = _check(res)
    anchor = res.get("anchor")
    names = list(res["metrics"]["names"]) + list(res["metrics"].get("continuous", []))
    has_cons = any(res["per_lang"][lang].get("consistency") for lang in res["langs"])
    has_js = any("mean_js" in (res["per_lang"][lang].get("consistency") or {}) for lang in res["langs"])
    head = ["lang", "n", *[f"{n} [95% CI]" for n in names]]
    if has_cons:
        head += [f"agree w/ {anchor}"] + (["JS"] if has_js else [])
    head.append("majority answer")
    rows = [_header(res), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lang in res["langs"]:
        d = res["per_lang"][lang]
        cells = [lang, str(d["n"]), *[_ci(_metric(res, lang, n), _digits(n)) for n in names]]
        if has_cons:
            cells += _consistency_cells(d.get("consistency") or {}, has_js)
        deg = d["degenerate"]
        cells.append(f"{deg['majority_share']:.0%}" + (" ⚠ degenerate" if deg["degenerate"] else ""))
        rows.append("| " + " | ".join(cells) + " |")
    avg = res.get("average", {})
    if avg.get("langs"):
        cells = [f"avg non-{anchor}", str(sum(res["per_lang"][x]["n"] for x in avg["langs"]))]
        cells += [_average(res, n, _digits(n)) for n in names]
        if has_cons:
            cells += _consistency_cells(avg.get("consistency", {}), has_js)
        cells.append("")
        rows.append("| " + " | ".join(cells) + " |")
    degen = [lang for lang in res["langs"] if res["per_lang"][lang]["degenerate"]["degenerate"]]
    if degen:
        rows += ["", f"⚠ degenerate predictor (one answer in >= 90% of items): {', '.join(degen)}"]
    return "\n".join(rows)


def comparison_table(res: dict[str, Any]) -> str:
    """Markdown table of a steered run against its unsteered baseline on the same items."""
    res = _check(res)
    if "comparison" not in res or "baseline" not in res:
        raise DataError("this results file has no unsteered baseline to compare with; "
                        "run xlsteer eval with --intervention FILE (or --method) to get one")
    base, comp = res["baseline"], res["comparison"]
    anchor = res.get("anchor")
    names = list(res["metrics"]["names"]) + list(res["metrics"].get("continuous", []))
    head = ["lang", "metric", "unsteered [95% CI]", "steered [95% CI]", "diff [95% CI]", "p (test)", "p Holm", "MDE",
            "verdict"]
    rows = [_header(res), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lang in res["langs"]:
        c = comp["per_lang"][lang]
        for name in names:
            t = c["metrics"].get(name) or c["continuous"].get(name)
            digits = _digits(name)
            rows.append("| " + " | ".join([
                lang, name, _ci(_metric(base, lang, name), digits), _ci(_metric(res, lang, name), digits),
                _diff(t, digits), f"{_p(t['p'])} ({t.get('test', '')})", _p(t["p_holm"]) if "p_holm" in t else "–",
                f"{t['mde']:.{digits}f}" if "mde" in t else "–",
                t.get("verdict", "").split(" (MDE")[0],
            ]) + " |")
    tests = comp.get("average", {}).get("tests", {})
    for name in names if tests else []:
        t = tests[name]
        digits = _digits(name)
        rows.append("| " + " | ".join([
            f"avg non-{anchor}", name, _average(base, name, digits), _average(res, name, digits),
            _diff(t, digits), f"{_p(t['p'])} (stratified paired bootstrap)", "–", f"{t['mde']:.{digits}f}", t["verdict"].split(" (MDE")[0],
        ]) + " |")
    changed = ", ".join(f"{lang} {comp['per_lang'][lang]['prediction_changed']:.0%}" for lang in res["langs"])
    rows += ["", f"Predictions changed by steering: {changed}."]
    cons = []
    for lang in res["langs"]:
        b, o = (comp["per_lang"][lang].get("consistency") or {}).get("base"), \
            (comp["per_lang"][lang].get("consistency") or {}).get("other")
        if b and o:
            key = "agreement" if "agreement" in b else "correct_agreement"
            cons.append(f"{lang} {b[key]:.2f} -> {o[key]:.2f}")
    if cons:
        rows.append(f"Agreement with {anchor} (unsteered -> steered): {', '.join(cons)}.")
    return "\n".join(rows)


def results_markdown(res: dict[str, Any]) -> str:
    """The tables of a results file: the run; for a steered run also its baseline and the comparison."""
    res = _check(res)
    if "baseline" in res and "comparison" in res:
        return "\n\n".join([run_table(res["baseline"]), run_table(res), comparison_table(res)])
    return run_table(res)
