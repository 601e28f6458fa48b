"""Evaluate a model (steered or not) on a task, and compare two runs item by item.

:func:`evaluate` returns one JSON-ready dict (write it with :func:`write_results`):

- identity: task, split, langs, anchor, template (name, version, options; for MGSM the number
  of exemplars and their language), model (name, fingerprint and its sha256), data (hash of
  the SHA256SUMS lines of the files read), item ids (count and sha256), intervention (method,
  params, sites, layers, strength, positions, hash) and alpha, seed, library versions;
- ``per_lang``: n, ``metrics`` (each with a 95% percentile-bootstrap CI: acc and acc_norm for
  XCOPA; acc and macro F1 for XNLI; EM for MGSM; F1 and EM for XQuAD), ``continuous`` scores for
  choice tasks (margin = gold log-prob minus the best wrong one; p_correct = softmax mass on
  gold) with CIs, a ``degenerate`` flag (one answer >= 90% of the time), and ``consistency``
  with the anchor language on the same item ids (agreement of predictions, agreement of
  correctness, mean Jensen-Shannon divergence of the choice distributions) when the anchor is
  among the evaluated languages (for XCOPA "en" is the Google-MT English of the same items);
- ``average``: the mean of each per-language score over the non-anchor languages, with a 95%
  bootstrap interval (``ci``; items resampled within their language);
- ``items``: one record per item and language (id, lang, gold, prediction, correct, per-choice
  log-probs or generated text, margin, and ``scores``: the per-item value of every metric).

No wall-clock times or dates are recorded, so re-running on the same inputs gives a
byte-identical file (floats are deterministic given the cache; bootstrap given ``seed``).

:func:`compare_runs` pairs two results item by item per language: for each metric the paired
bootstrap of the difference (with its CI), McNemar's exact test for 0/1 scores, the minimum
detectable effect, a verdict, the share of changed predictions, and consistency before/after;
``p_holm``, the p-value Holm-adjusted over the non-anchor languages (per metric); and for the
average over the non-anchor languages a paired bootstrap stratified by language
(``average["tests"]``: difference with CI, p, MDE, verdict).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.langs import normalize_lang
from ..errors import UsageError, XlsteerError
from ..interventions.base import default_positions
from ..io import atomic_write_json, dumps_json
from ..provenance import versions
from ..results import EVAL as FORMAT, PAIRED, VERSION as FORMAT_VERSION
from . import metrics as M
from . import significance as S
from .engine import Engine, intervention_info
from .tasks import get_task
from .templates import Template, get_template


#: Per task: metric names and kinds ("binary" 0/1 per item, "continuous" per item, "macro_f1").
TASK_METRICS: dict[str, dict[str, str]] = {
    "xcopa": {"acc": "binary", "acc_norm": "binary"},
    "xnli": {"acc": "binary", "macro_f1": "macro_f1"},
    "mgsm": {"em": "binary"},
    "xquad": {"f1": "continuous", "em": "binary"},
}
CONTINUOUS: dict[str, tuple[str, ...]] = {
    "xcopa": ("margin", "p_correct"),
    "xnli": ("margin", "p_correct"),
    "mgsm": (),
    "xquad": (),
}
MAIN_METRIC = {"xcopa": "acc", "xnli": "acc", "mgsm": "em", "xquad": "f1"}
#: What breaks ties between configurations with the same main metric (sweep selection).
TIE_BREAK = {"xcopa": "margin", "xnli": "margin", "mgsm": None, "xquad": "em"}
XNLI_N_LABELS = 3


# --------------------------------------------------------------------------------------------
# statistics helpers


def _macro_f1_codes(codes: np.ndarray, n_labels: int) -> np.ndarray:
    """Macro F1 of rows of codes ``pred * L + gold`` (same rule as metrics.macro_f1 with all labels)."""
    c = np.atleast_2d(np.asarray(codes, dtype=np.int64))
    r, _ = c.shape
    flat = (c + (np.arange(r)[:, None] * n_labels * n_labels)).ravel()
    conf = np.bincount(flat, minlength=r * n_labels * n_labels).reshape(r, n_labels, n_labels)  # [pred, gold]
    tp = np.einsum("rii->ri", conf).astype(np.float64)
    fp = conf.sum(axis=2) - tp
    fn = conf.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
    return np.nanmean(f1, axis=1)


def _macro_f1_stat(n_labels: int):
    def stat(x: np.ndarray, axis: int | None = None) -> Any:
        if axis is None:
            return float(_macro_f1_codes(np.asarray(x)[None, :], n_labels)[0])
        return _macro_f1_codes(x, n_labels)

    return stat


def _codes(items: list[dict]) -> np.ndarray:
    """pred * L + gold per item; predictions outside the labels become a never-gold code (an error)."""
    out = []
    for it in items:
        p = it["prediction"]
        p = p if isinstance(p, int) and 0 <= p < XNLI_N_LABELS else None
        out.append((p if p is not None else (it["gold"] + 1) % XNLI_N_LABELS) * XNLI_N_LABELS + it["gold"])
    return np.asarray(out, dtype=np.float64)


def _summary(values: Sequence[float], seed: int, n_boot: int) -> dict[str, Any]:
    return S.summarize(np.asarray(values, dtype=np.float64), seed=seed, n_boot=n_boot)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# evaluate


def load_interventions(interventions: Any, alpha: float | None, fingerprint: dict | None,
                       model: Any = None) -> list[Any]:
    """Intervention objects from objects or file paths; ``alpha`` (when given) sets every strength.

    With ``model`` (a LoadedModel) each is also checked to fit it (layers, widths) before any
    work, not at the first forward call.
    """
    from ..interventions import check_compatible
    from ..interventions.base import Intervention, check_alpha

    if interventions is None:
        items: list[Any] = []
    elif isinstance(interventions, (list, tuple)):
        items = list(interventions)
    else:
        items = [interventions]
    out = []
    for iv in items:
        if isinstance(iv, (str, os.PathLike)):
            iv = Intervention.load(iv)
        if fingerprint is not None:
            iv.check_model(fingerprint)
        if model is not None and hasattr(iv, "tensors"):
            check_compatible(iv, model)
        if alpha is not None:
            iv = iv.with_strength(check_alpha(alpha, "alpha"))
        out.append(iv)
    if alpha is not None and not out:
        raise UsageError("--alpha was given without an intervention; pass --intervention FILE too")
    return out


def _langs(langs: str | Sequence[str]) -> list[str]:
    raw = [x.strip() for x in langs.split(",") if x.strip()] if isinstance(langs, str) else list(langs)
    out: list[str] = []
    for code in raw:
        c = normalize_lang(code)
        if c not in out:
            out.append(c)
    if not out:
        raise UsageError("no languages given; pass at least one language code, e.g. en,sw,zh")
    return out


def load_task_items(task: str, langs: Sequence[str], split: str, limit: int | None,
                    data_dir: str | os.PathLike | None) -> dict[str, list[Any]]:
    mod = get_task(task)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise UsageError(f"limit must be a positive integer, got {limit!r}")
    return {lang: mod.load_items(data_dir, lang, split, limit) for lang in langs}


def _exemplars(tpl: Template, lang: str, data_dir: Any) -> tuple[list[Any], str | None]:
    if tpl.task != "mgsm" or int(tpl.options.get("k", 0)) == 0:
        return [], None
    from .tasks import mgsm

    ex_lang = tpl.options.get("exemplar_lang", "same")
    ex_lang = lang if ex_lang == "same" else normalize_lang(ex_lang)
    return mgsm.load_exemplars(data_dir, ex_lang), ex_lang


def _softmax(lp: Sequence[float]) -> list[float]:
    a = np.asarray(lp, dtype=np.float64)
    e = np.exp(a - a.max())
    return (e / e.sum()).tolist()


def evaluate(
    lm: Any,
    task: str,
    langs: str | Sequence[str],
    split: str = "test",
    interventions: Any = None,
    alpha: float | None = None,
    limit: int | None = None,
    anchor: str = "en",
    data_dir: str | os.PathLike | None = None,
    template: str | Template | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    calibrate: bool = False,
    *,
    positions: str | None = None,
    batch_size: int = 8,
    max_length: int = 2048,
    n_boot: int = 2000,
    template_options: dict[str, Any] | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Evaluate ``lm`` on ``task`` in ``langs`` (see the module docstring for the result structure)."""
    from ..data.paths import data_dir as resolve_data_dir, data_hash

    task = get_task(task).NAME
    lang_list = _langs(langs)
    anchor = normalize_lang(anchor) if anchor else anchor
    tpl = get_template(task, template, **(template_options or {}))
    if calibrate and tpl.kind != "label":
        raise UsageError(f"--calibrate applies to label templates (xnli), not to {task}; drop --calibrate")
    ivs = load_interventions(interventions, alpha, lm.fingerprint, model=lm)
    positions = default_positions(ivs, positions)  # None: the policy the intervention stores
    items = load_task_items(task, lang_list, split, limit, data_dir)
    for lang, its in items.items():
        if not its:
            raise XlsteerError(f"{task} {split} has no items in {lang}; check the split")
    eng = engine or Engine(lm, batch_size=batch_size, cache_dir=cache_dir, max_length=max_length)
    counters0 = (eng.truncated, eng.boundary_mismatches)  # an engine may be shared (sweep): count this call only

    root = resolve_data_dir(data_dir)
    files: set[str] = set()
    mod = get_task(task)
    exemplars: dict[str, list[Any]] = {}
    ex_langs: dict[str, str | None] = {}
    for lang in lang_list:
        files.update(mod.data_files(lang, split))
        exemplars[lang], ex_langs[lang] = _exemplars(tpl, lang, data_dir)
        if ex_langs[lang] is not None:
            files.add(mod.EXEMPLARS_FILE)
    flat = [it for lang in lang_list for it in items[lang]]
    row_langs = [it.lang for it in flat]
    keys = [f"{it.lang}/{it.id}" for it in flat]
    scope = {"task": task, "template": tpl.describe(), "split": split}
    reqs = [tpl.render(it, exemplars[it.lang]) for it in flat]
    common = dict(interventions=ivs or None, positions=positions, anchor=anchor, keys=keys, scope=scope)

    records: list[dict[str, Any]] = []
    if tpl.kind == "choice":
        out = eng.loglikelihood([(r.context, list(r.choices)) for r in reqs], row_langs, **common)
        for it, res in zip(flat, out):
            lp = [x[0] for x in res]
            norm = [x[0] / max(x[2], 1) for x in res]
            sc = M.choice_scores(np.asarray([lp]), np.asarray([it.answer]))
            pred_norm = int(np.argmax(norm))
            records.append({
                "id": it.id, "lang": it.lang, "gold": int(it.answer), "prediction": int(sc["pred"][0]),
                "prediction_norm": pred_norm, "correct": bool(sc["correct"][0]),
                "logprobs": lp, "n_tokens": [x[1] for x in res], "n_chars": [x[2] for x in res],
                "is_greedy": [x[3] for x in res],
                "margin": float(sc["margin"][0]), "p_correct": float(sc["p_correct"][0]),
                "probs": _softmax(lp),
                "scores": {"acc": float(sc["correct"][0]), "acc_norm": float(pred_norm == it.answer),
                           "margin": float(sc["margin"][0]), "p_correct": float(sc["p_correct"][0])},
            })
    elif tpl.kind == "label":
        labels = list(reqs[0].labels)
        out = eng.label_logits([r.prompt for r in reqs], labels, row_langs, **common)
        cf: dict[str, list[float]] = {}
        if calibrate:
            cf_langs = sorted(set(row_langs), key=row_langs.index)
            cf_out = eng.label_logits([tpl.content_free(lang).prompt for lang in cf_langs], labels, cf_langs,
                                      interventions=ivs or None, positions=positions, anchor=anchor,
                                      keys=[f"{lang}/content-free" for lang in cf_langs], scope=scope)
            cf = dict(zip(cf_langs, cf_out))
        for it, lp in zip(flat, out):
            score = [a - b for a, b in zip(lp, cf[it.lang])] if calibrate else list(lp)
            sc = M.choice_scores(np.asarray([score]), np.asarray([it.answer]))
            rec = {
                "id": it.id, "lang": it.lang, "gold": int(it.answer), "prediction": int(sc["pred"][0]),
                "correct": bool(sc["correct"][0]), "logprobs": list(lp),
                "margin": float(sc["margin"][0]), "p_correct": float(sc["p_correct"][0]),
                "probs": _softmax(score),
                "scores": {"acc": float(sc["correct"][0]), "margin": float(sc["margin"][0]),
                           "p_correct": float(sc["p_correct"][0])},
            }
            if calibrate:
                rec["logprobs_calibrated"] = score
                rec["content_free_logprobs"] = list(cf[it.lang])
            records.append(rec)
    else:
        r0 = reqs[0]
        out = eng.generate([r.prompt for r in reqs], row_langs, r0.max_new_tokens, list(r0.stop), **common)
        for it, text in zip(flat, out):
            if task == "mgsm":
                pred = M.extract_number(text, it.lang)
                em = float(M.mgsm_exact_match(text, it.answer, it.lang))
                records.append({"id": it.id, "lang": it.lang, "gold": it.answer, "generated": text,
                                "prediction": pred, "correct": bool(em), "scores": {"em": em}})
            else:
                pred = text.strip()
                f1 = float(M.squad_f1(pred, it.answer, it.lang))
                em = float(M.squad_em(pred, it.answer, it.lang))
                records.append({"id": it.id, "lang": it.lang, "gold": list(it.answer), "generated": text,
                                "prediction": pred, "correct": bool(em), "scores": {"f1": f1, "em": em}})

    per_lang = {lang: _lang_summary(task, [r for r in records if r["lang"] == lang], seed, n_boot)
                for lang in lang_list}
    by_lang = {lang: [r for r in records if r["lang"] == lang] for lang in lang_list}
    for lang in lang_list:
        per_lang[lang]["consistency"] = (
            consistency(task, by_lang[lang], by_lang[anchor]) if anchor in by_lang and lang != anchor else None
        )

    ids = {lang: [it.id for it in items[lang]] for lang in lang_list}
    tpl_info = tpl.describe()
    if task == "mgsm":
        tpl_info["exemplars"] = {"k": int(tpl.options.get("k", 0)),
                                 "lang": {lang: ex_langs[lang] for lang in lang_list}}
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "task": task,
        "split": split,
        "langs": lang_list,
        "anchor": anchor,
        "template": tpl_info,
        "model": {"name": lm.name, "fingerprint": lm.fingerprint, "fingerprint_sha256": eng.model_hash},
        "data": {"data_hash": data_hash(root, sorted(files)), "files": sorted(files)},
        "item_ids": {"n": len(flat), "per_lang": {lang: len(v) for lang, v in ids.items()}, "sha256": _sha(ids)},
        "limit": limit,
        "seed": seed,
        "n_boot": n_boot,
        "calibrate": bool(calibrate),
        "intervention": intervention_info(ivs, positions),
        "alpha": alpha,
        "metrics": {"names": list(TASK_METRICS[task]), "kinds": TASK_METRICS[task], "main": MAIN_METRIC[task],
                    "continuous": list(CONTINUOUS[task]), "tie_break": TIE_BREAK[task]},
        "engine": {"max_length": eng.max_length, "truncated": eng.truncated - counters0[0],
                   "boundary_mismatches": eng.boundary_mismatches - counters0[1]},
        "per_lang": per_lang,
        "average": average(per_lang, [lang for lang in lang_list if lang != anchor], by_lang, task, seed, n_boot),
        "items": records,
        "versions": versions(),
    }


def _lang_summary(task: str, recs: list[dict], seed: int, n_boot: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(recs), "metrics": {}, "continuous": {}}
    for name, kind in TASK_METRICS[task].items():
        if kind == "macro_f1":
            codes = _codes(recs)
            point = M.macro_f1([r["prediction"] for r in recs], [r["gold"] for r in recs],
                               labels=list(range(XNLI_N_LABELS)))
            _, lo, hi = S.bootstrap_ci(codes, n_boot=n_boot, seed=seed, stat=_macro_f1_stat(XNLI_N_LABELS))
            out["metrics"][name] = {"mean": point, "ci_low": lo, "ci_high": hi, "n": len(recs)}
        else:
            out["metrics"][name] = _summary([r["scores"][name] for r in recs], seed, n_boot)
    for name in CONTINUOUS[task]:
        out["continuous"][name] = _summary([r["scores"][name] for r in recs], seed, n_boot)
    out["degenerate"] = M.degenerate([json.dumps(r["prediction"], ensure_ascii=False) for r in recs])
    out["degenerate"]["majority_label"] = json.loads(out["degenerate"]["majority_label"])
    return out


def consistency(task: str, recs: list[dict], anchor_recs: list[dict]) -> dict[str, Any] | None:
    """Agreement with the anchor language on the items both have (same ids)."""
    a_by = {r["id"]: r for r in anchor_recs}
    pairs = [(r, a_by[r["id"]]) for r in recs if r["id"] in a_by]
    if not pairs:
        return None
    out: dict[str, Any] = {
        "n": len(pairs),
        "correct_agreement": M.agreement([p[0]["correct"] for p in pairs], [p[1]["correct"] for p in pairs]),
    }
    if task != "xquad":  # XQuAD answers are text in different languages: only correctness compares
        out["agreement"] = M.agreement([p[0]["prediction"] for p in pairs], [p[1]["prediction"] for p in pairs])
    if pairs[0][0].get("probs") is not None:
        out["mean_js"] = M.mean_js_divergence([p[0]["probs"] for p in pairs], [p[1]["probs"] for p in pairs])
    return out


def _metric_groups(task: str, name: str, runs: Sequence[dict[str, list[dict]]], langs: Sequence[str]):
    """Per run, one array of per-item values per language, and the statistic that scores a group."""
    if TASK_METRICS[task].get(name) == "macro_f1":
        return [[_codes(by_lang[lang]) for lang in langs] for by_lang in runs], _macro_f1_stat(XNLI_N_LABELS)
    return [[np.asarray([r["scores"][name] for r in by_lang[lang]], dtype=np.float64) for lang in langs]
            for by_lang in runs], np.mean


def average(per_lang: dict[str, dict], langs: Sequence[str], by_lang: dict[str, list[dict]] | None = None,
            task: str | None = None, seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
    """Unweighted mean over ``langs`` of each per-language score (and of the consistency scores).

    With the per-item records (``by_lang``, ``task``), ``ci`` holds a 95% bootstrap interval of
    each average, items resampled within their language.
    """
    langs = [lang for lang in langs if lang in per_lang]
    out: dict[str, Any] = {"langs": list(langs), "metrics": {}, "continuous": {}, "consistency": {}}
    if not langs:
        return out
    first = per_lang[langs[0]]
    for group in ("metrics", "continuous"):
        for name in first[group]:
            out[group][name] = float(np.mean([per_lang[lang][group][name]["mean"] for lang in langs]))
    if by_lang is not None and task is not None:
        out["ci"] = {}
        for name in [*first["metrics"], *first["continuous"]]:
            (groups,), stat = _metric_groups(task, name, [by_lang], langs)
            _, lo, hi = S.stratified_bootstrap_ci(groups, n_boot=n_boot, seed=seed, stat=stat)
            out["ci"][name] = {"ci_low": lo, "ci_high": hi}
    cons = [per_lang[lang].get("consistency") for lang in langs]
    if all(c is not None for c in cons):
        for key in cons[0]:  # type: ignore[union-attr]
            if key != "n":
                out["consistency"][key] = float(np.mean([c[key] for c in cons]))  # type: ignore[index]
    return out


def write_results(path: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Deterministic JSON (sorted keys), written atomically."""
    return atomic_write_json(path, results)


def results_json(results: dict[str, Any]) -> str:
    return dumps_json(results)


# --------------------------------------------------------------------------------------------
# compare


def _paired_macro_f1(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int, alpha: float = 0.05) -> dict[str, Any]:
    stat = _macro_f1_stat(XNLI_N_LABELS)
    fa, fb = stat(a), stat(b)
    diff = fb - fa
    n = a.size
    out: dict[str, Any] = {"n": int(n), "base_mean": fa, "method_mean": fb, "diff": diff, "test": "paired_bootstrap"}
    if n < 2:
        out.update(diff_ci_low=diff, diff_ci_high=diff, p=1.0)
    else:
        rng = np.random.default_rng(seed)
        boot = np.empty(n_boot)
        rows = max(1, 2_000_000 // n)
        for s in range(0, n_boot, rows):
            idx = rng.integers(0, n, size=(min(n_boot, s + rows) - s, n))
            boot[s:s + idx.shape[0]] = stat(b[idx], axis=1) - stat(a[idx], axis=1)
        lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
        tol = 1e-12 * max(1.0, abs(diff))
        p = float(np.mean(np.abs(boot - diff) >= abs(diff) - tol))
        out.update(diff_ci_low=float(lo), diff_ci_high=float(hi), p=p)
    out["verdict"] = S.verdict(out["p"], diff, alpha)
    return out


def compare_runs(base: dict[str, Any], other: dict[str, Any], *, n_boot: int = 2000, seed: int | None = None,
                 alpha: float = 0.05) -> dict[str, Any]:
    """Per language, ``other`` against ``base`` on the same items (positive diff: ``other`` is higher)."""
    for key in ("task", "split"):
        if base.get(key) != other.get(key):
            raise UsageError(f"cannot compare runs with different {key} ({base.get(key)} vs {other.get(key)}); "
                             "evaluate both on the same task and split")
    if base["template"].get("version") != other["template"].get("version") or \
            base["template"].get("name") != other["template"].get("name"):
        raise UsageError("cannot compare runs made with different prompt templates; evaluate both with one template")
    task = base["task"]
    seed = base.get("seed", 0) if seed is None else seed
    kinds = base["metrics"]["kinds"]
    cont = base["metrics"].get("continuous", [])
    per_lang: dict[str, Any] = {}
    paired: dict[str, tuple[list[dict], list[dict]]] = {}  # per language: both runs' records, same item order
    for lang in [x for x in base["langs"] if x in other["langs"]]:
        a = {r["id"]: r for r in base["items"] if r["lang"] == lang}
        b = {r["id"]: r for r in other["items"] if r["lang"] == lang}
        if set(a) != set(b):
            raise XlsteerError(f"runs have different items in {lang} ({len(a)} vs {len(b)}); "
                               "evaluate both with the same --split and --limit")
        ids = [r["id"] for r in base["items"] if r["lang"] == lang]
        ra, rb = [a[i] for i in ids], [b[i] for i in ids]
        paired[lang] = (ra, rb)
        entry: dict[str, Any] = {"n": len(ids), "metrics": {}, "continuous": {}}
        for name, kind in kinds.items():
            if kind == "macro_f1":
                entry["metrics"][name] = _paired_macro_f1(_codes(ra), _codes(rb), n_boot, seed, alpha)
            else:
                va = [r["scores"][name] for r in ra]
                vb = [r["scores"][name] for r in rb]
                entry["metrics"][name] = S.compare(va, vb, kind="binary" if kind == "binary" else "continuous",
                                                   seed=seed, n_boot=n_boot, alpha=alpha)
        for name in cont:
            entry["continuous"][name] = S.compare([r["scores"][name] for r in ra], [r["scores"][name] for r in rb],
                                                  kind="continuous", seed=seed, n_boot=n_boot, alpha=alpha)
        entry["prediction_changed"] = float(np.mean([x["prediction"] != y["prediction"] for x, y in zip(ra, rb)]))
        entry["consistency"] = {"base": base["per_lang"][lang].get("consistency"),
                                "other": other["per_lang"][lang].get("consistency")}
        per_lang[lang] = entry
    anchor = base.get("anchor")
    non_anchor = [lang for lang in per_lang if lang != anchor]
    avg: dict[str, Any] = {"langs": non_anchor, "diff": {}, "tests": {}}
    if non_anchor:
        runs = [{lang: paired[lang][k] for lang in non_anchor} for k in (0, 1)]
        for group, names in (("metrics", list(kinds)), ("continuous", list(cont))):
            for name in names:
                tests = [per_lang[lang][group][name] for lang in non_anchor]
                # one test per language: Holm-adjusted p over the non-anchor languages
                for t, p_adj in zip(tests, S.holm([t["p"] for t in tests])):
                    t["p_holm"] = p_adj
                avg["diff"][name] = float(np.mean([t["diff"] for t in tests]))
                # the average's own paired test: items resampled within each language, both runs alike
                (ga, gb), stat = _metric_groups(task, name, runs, non_anchor)
                avg["tests"][name] = S.paired_stratified_bootstrap(ga, gb, n_boot=n_boot, seed=seed, alpha=alpha,
                                                                   stat=stat)
    return {
        "format": PAIRED,
        "version": FORMAT_VERSION,
        "task": task,
        "split": base["split"],
        "main": base["metrics"]["main"],
        "seed": seed,
        "n_boot": n_boot,
        "alpha": alpha,
        "same_model": base["model"]["fingerprint_sha256"] == other["model"]["fingerprint_sha256"],
        "base": {"intervention": base.get("intervention"), "model": base["model"]["name"]},
        "other": {"intervention": other.get("intervention"), "model": other["model"]["name"]},
        "per_lang": per_lang,
        "average": avg,
    }
