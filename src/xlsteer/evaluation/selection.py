"""Evaluate what a dev sweep selected, including "no steering", globally or per language.

A sweep (:func:`xlsteer.evaluation.sweep.sweep`) selects among the steered configurations *and*
the unsteered model. :func:`evaluate_selection` carries that choice to the evaluation split:

- ``global``: one configuration for every language, or none (the result is then the unsteered
  model's, and ``selection["steer"]`` is False with the reason);
- ``per-lang``: each non-anchor language gets its own configuration or none. Languages with the
  same choice are evaluated together (with the anchor, so that cross-lingual consistency is
  still measured against it) and the per-language results are merged; the average and its CI
  are recomputed over the merged per-item records.

Either way a choice is what the sweep's evidence rule (:mod:`.evidence`) allowed. A language the
sweep left out (it has no dev items) takes the global choice, made on the other languages' dev
items, and the summary says so.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..errors import UsageError
from . import runner as R
from .config import EvalConfig
from .summary import average
from .tasks import TaskSpec, get_task
from .sweep import NO_STEERING, SELECT_MODES, UNSTEERED, chosen_intervention


def _choices(record: dict[str, Any], langs: Sequence[str], anchor: str, mode: str) -> dict[str, dict[str, Any]]:
    if mode not in SELECT_MODES:
        raise UsageError(f"unknown selection mode '{mode}'; choose one of {', '.join(SELECT_MODES)}")
    targets = [lang for lang in langs if lang != anchor]
    if mode == "global":
        return {lang: record["best"] for lang in targets}
    return {lang: record["best_per_lang"].get(lang, record["best"]) for lang in targets}


def selection_summary(record: dict[str, Any], mode: str, langs: Sequence[str], anchor: str) -> dict[str, Any]:
    """What was chosen on dev, in the words the results and the demo print."""
    choices = _choices(record, langs, anchor, mode)
    per_lang = {lang: ({"steer": True, "layer": c["layer"], "alpha": c["alpha"], "key": c["key"]}
                       if c.get("steer", True) else {"steer": False, "key": UNSTEERED}) for lang, c in choices.items()}
    for lang in per_lang:
        if lang not in record["best_per_lang"]:
            per_lang[lang]["from"] = f"global choice (no {record['split']} items in {lang})"
        ev = (record["best"] if mode == "global" or lang not in record["best_per_lang"]
              else record["best_per_lang"][lang]).get("evidence")
        if ev is not None:
            per_lang[lang]["evidence"] = ev
    steer = any(v["steer"] for v in per_lang.values())
    out: dict[str, Any] = {"mode": mode, "steer": steer, "per_lang": per_lang, "rule": record["selection_rule"],
                           "split": record["split"], "evidence": record["best"].get("evidence"),
                           "left_out": dict(record.get("left_out") or {})}
    if not steer:
        out["decision"] = NO_STEERING
    elif mode == "global":
        out["decision"] = f"steer: {record['best']['key']} (layer {record['best']['layer']}, alpha {record['best']['alpha']:g})"
    else:
        off = [lang for lang, v in per_lang.items() if not v["steer"]]
        out["decision"] = "steer per language" + (f"; no steering for {', '.join(off)}" if off else "")
    return out


def _merge(parts: list[dict[str, Any]], lang_list: list[str], anchor: str, task: TaskSpec, seed: int, n_boot: int,
           infos: dict[str, Any]) -> dict[str, Any]:
    """One result from group results (each language taken from the group that evaluated it)."""
    per_lang: dict[str, Any] = {}
    items: list[dict[str, Any]] = []
    for lang in lang_list:
        part = next(p for p in parts if lang in p["per_lang"])
        per_lang[lang] = part["per_lang"][lang]
        items.extend(r for r in part["items"] if r["lang"] == lang)
    by_lang = {lang: [r for r in items if r["lang"] == lang] for lang in lang_list}
    out = dict(parts[0])
    n_ids = {lang: len(by_lang[lang]) for lang in lang_list}
    out.update(langs=lang_list, per_lang=per_lang, items=items,
               average=average(per_lang, [lang for lang in lang_list if lang != anchor], by_lang, task, seed, n_boot),
               intervention={"per_lang": infos, "selection": "per-lang",
                             "method": next((i.get("method") for i in infos.values() if i), None),
                             "positions": next((i["positions"] for i in infos.values() if i), None)})
    out["item_ids"] = {**out["item_ids"], "n": sum(n_ids.values()), "per_lang": n_ids}
    if task.task_summary is not None:  # the task's own figures, of the merged items
        out["task_summary"] = task.task_summary(items)
    return out


def evaluate_selection(lm: Any, task: Any, langs: Sequence[str], make_intervention: Callable[[int, float], Any],
                       record: dict[str, Any], mode: str = "global", cfg: EvalConfig | None = None,
                       **settings: Any) -> dict[str, Any]:
    """Evaluate the sweep's choice (``record``) on ``cfg.split`` (test); adds ``selection``."""
    cfg = EvalConfig.of(cfg, **settings)
    anchor = cfg.anchor
    lang_list = list(langs)
    choices = _choices(record, lang_list, anchor, mode)
    summary = selection_summary(record, mode, lang_list, anchor)
    groups: dict[str, list[str]] = {}
    for lang, c in choices.items():
        groups.setdefault(c["key"] if c.get("steer", True) else UNSTEERED, []).append(lang)
    if len(groups) <= 1:
        choice = next(iter(choices.values()), {"steer": False})
        res = R.run_task(lm, task, lang_list, chosen_intervention(make_intervention, choice), cfg)
        res["selection"] = summary
        return res
    parts, infos = [], {}
    for key, members in groups.items():
        iv = chosen_intervention(make_intervention, choices[members[0]])
        group_langs = ([anchor] if anchor in lang_list else []) + members
        part = R.run_task(lm, task, group_langs, iv, cfg)
        parts.append(part)
        infos.update({lang: part["intervention"] for lang in members})
    res = _merge(parts, lang_list, anchor, get_task(task), cfg.seed, cfg.n_boot, infos)
    res["selection"] = summary
    return res


def evaluate_choice(lm: Any, task: Any, langs: Sequence[str], record: dict[str, Any], mode: str = "global",
                    cfg: EvalConfig | None = None) -> Any:
    """A sweep's choice (``record``, from :func:`~.sweep.sweep` with a statistics or intervention
    source) evaluated on ``cfg.split`` against the unsteered model on the same items: an
    :class:`~.api.EvalResult` with the paired comparison (Holm over every non-anchor language)."""
    from .api import EvalResult
    from .pairing import compare_runs
    from .sweep import maker_from_source

    cfg = cfg or EvalConfig()
    if cfg.split == record.get("split"):
        raise UsageError(f"the sweep chose on {record.get('split')}; evaluate its choice on another split (test)")
    made_with = (record.get("model") or {}).get("fingerprint")
    if made_with is not None and made_with != lm.fingerprint:
        raise UsageError(f"the sweep was made with model {record['model'].get('name')}, not {lm.name}; evaluate its "
                         "choice with the model it was made with")
    make, _ = maker_from_source(record.get("source") or {}, lm, langs, cfg.anchor)
    chosen = evaluate_selection(lm, task, langs, make, record, mode, cfg)
    if chosen["intervention"] is None:
        return EvalResult(chosen)
    base = R.evaluate(lm, task, langs, None, cfg)
    return EvalResult(chosen, baseline=base, comparison=compare_runs(base, chosen))
