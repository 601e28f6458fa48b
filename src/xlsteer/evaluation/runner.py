"""Evaluate a model (steered or not) on a task, and compare two runs item by item.

:func:`run_task` returns one run as a JSON-ready dict (write it with :func:`write_results`):

- identity: task (and its spec: kind, splits with their item rules, source), split, langs, anchor, template (name, version, options; for MGSM the number
  of exemplars and their language), model (name, fingerprint and its sha256), data (hash of
  the SHA256SUMS lines of the files read), item ids (count and sha256), intervention (method,
  params, sites, layers, strength, positions, hash) and alpha, seed, library versions;
- ``per_lang``: n, ``metrics`` (each metric of the task with a 95% percentile-bootstrap CI), ``continuous`` scores for
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

:func:`compare_runs` (:mod:`.pairing`) pairs two results item by item. Every task is evaluated
the same way: what differs between tasks is declared in its :class:`~.tasks.spec.TaskSpec`
(metrics, request kind, scorer, few-shot exemplars), never branched on here. The settings come
as one :class:`~.config.EvalConfig`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..data.langs import normalize_lang
from ..errors import UsageError
from ..interventions.base import default_positions
from ..io import atomic_write_json, dumps_json
from ..provenance import versions
from ..results import EVAL as FORMAT, VERSION as FORMAT_VERSION
from . import scoring
from .config import EvalConfig
from .engine import Engine
from .engine_cache import intervention_info
from .guard import guarded
from .summary import summarize_records
from .tasks.spec import TaskSpec, get_task, get_template, items_by_lang
from .templates import Template


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def files_data_hash(data_dir: str | os.PathLike | None, files: Sequence[str]) -> str:
    """The data hash of the files an evaluation read: files of the data dir by their SHA256SUMS
    lines (cheap), a user task's own files (absolute paths) by their bytes, named by file name."""
    from ..data.paths import data_dir as resolve_data_dir, file_sha256, hash_lines, sums_entries

    shipped = [f for f in files if not os.path.isabs(f)]
    entries = sums_entries(resolve_data_dir(data_dir), shipped) if shipped else []
    entries += [(Path(f).resolve().name, file_sha256(f)) for f in files if os.path.isabs(f)]
    return hash_lines(entries)


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


def check_inputs(task: str | TaskSpec, langs: str | Sequence[str], cfg: EvalConfig) -> dict[str, Any]:
    """Read the items of ``cfg.split`` in ``langs`` and hash every file they come from, before any
    model is loaded: the data record an evaluation will write (``data_hash``, ``files``). A file of
    the shared data that SHA256SUMS does not list, a missing user file or a split a language lacks
    is one line now, not after the first pass over the model."""
    spec = get_task(task)
    tpl = get_template(spec, cfg.template, **dict(cfg.template_options))
    return _inputs(spec, tpl, parse_langs(langs), cfg)[3]


def _inputs(spec: TaskSpec, tpl: Template, langs: list[str], cfg: EvalConfig) -> tuple[dict, dict, dict, dict]:
    """(items, exemplars, exemplar languages, data record) per language: everything an evaluation reads."""
    items = items_by_lang(spec, langs, cfg.split, cfg.limit, cfg.data_dir)
    exemplars, ex_langs, ex_files = _few_shot(spec, tpl, langs, cfg.data_dir)
    files = sorted({f for lang in langs for f in spec.data_files(lang, cfg.split)} | set(ex_files))
    return items, exemplars, ex_langs, {"data_hash": files_data_hash(cfg.data_dir, files), "files": files}


def parse_langs(langs: str | Sequence[str]) -> list[str]:
    """Normalised, de-duplicated language codes from a list or a comma-separated string."""
    raw = [x.strip() for x in langs.split(",") if x.strip()] if isinstance(langs, str) else list(langs)
    out: list[str] = []
    for code in raw:
        c = normalize_lang(code)
        if c not in out:
            out.append(c)
    if not out:
        raise UsageError("no languages given; pass at least one language code, e.g. en,sw,zh")
    return out



def _records(spec: TaskSpec, tpl: Template, eng: Engine, flat: list[Any], exemplars: dict[str, list[Any]],
             call: scoring.ScoringCall, calibrate: bool) -> list[dict[str, Any]]:
    """Render every item with the template and score it the way its request kind is scored."""
    keys = [f"{it.lang}/{it.id}" for it in flat]
    reqs = [tpl.render(it, exemplars[it.lang]) for it in flat]
    if tpl.kind == "choice":
        return scoring.choice_records(eng, flat, reqs, keys, call)
    if tpl.kind == "label":
        return scoring.label_records(eng, tpl, flat, reqs, keys, call, calibrate)
    return scoring.generation_records(eng, spec, flat, reqs, keys, call)


def _decoding(tpl: Template, flat: list[Any], exemplars: dict[str, list[Any]], call: scoring.ScoringCall
              ) -> dict[str, Any] | None:
    """How a generation task's answers were decoded (None for other request kinds)."""
    if tpl.kind != "generate" or not flat:
        return None
    return call.decoding(tpl.render(flat[0], exemplars[flat[0].lang])).describe()


def _few_shot(spec: TaskSpec, tpl: Template, langs: Sequence[str], data_dir: Any
              ) -> tuple[dict[str, list[Any]], dict[str, str | None], list[str]]:
    """Per language the exemplars the template renders itself, their language, and their files."""
    exemplars: dict[str, list[Any]] = {lang: [] for lang in langs}
    ex_langs: dict[str, str | None] = {lang: None for lang in langs}
    files: list[str] = []
    if spec.few_shot is not None:
        for lang in langs:
            exemplars[lang], ex_langs[lang] = spec.few_shot.load(tpl, lang, data_dir)
            if ex_langs[lang] is not None:
                files = list(spec.few_shot.files)
    return exemplars, ex_langs, files


def _template_info(spec: TaskSpec, tpl: Template, langs: Sequence[str], ex_langs: dict[str, str | None]) -> dict:
    info = tpl.describe()
    if spec.few_shot is not None:
        info["exemplars"] = {"k": int(tpl.options.get("k", 0)), "lang": {lang: ex_langs[lang] for lang in langs}}
    return info


def metrics_record(spec: TaskSpec) -> dict[str, Any]:
    """What the result file says about its metrics (enough to compare files without the task)."""
    out: dict[str, Any] = {"names": [m.name for m in spec.metrics], "kinds": spec.metric_kinds, "main": spec.main,
                           "continuous": list(spec.continuous), "tie_break": spec.tie_break}
    n_labels = {m.name: m.n_labels for m in spec.metrics if m.kind == "macro_f1"}
    if n_labels:
        out["n_labels"] = n_labels
    if spec.quality_guard:
        from .guard import DEFINITIONS

        out["guard"] = dict(DEFINITIONS)
    return out


def run_task(lm: Any, task: str | TaskSpec, langs: str | Sequence[str], interventions: Any = None,
             cfg: EvalConfig | None = None, *, alpha: float | None = None, engine: Engine | None = None,
             **settings: Any) -> dict[str, Any]:
    """One evaluation of ``lm`` on ``task`` in ``langs`` (the result structure: module docstring).

    ``cfg`` holds the settings; keyword ``settings`` override single fields of it (e.g.
    ``split="dev"``). ``interventions``: objects or files (None: the unsteered model); ``alpha``
    sets their strength. ``engine``: share one engine (and its cache) between calls.
    """
    cfg = EvalConfig.of(cfg, **settings)
    spec = guarded(get_task(task), cfg.guard)
    lang_list = parse_langs(langs)
    anchor = normalize_lang(cfg.anchor) if cfg.anchor else cfg.anchor
    tpl = get_template(spec, cfg.template, **dict(cfg.template_options))
    if cfg.calibrate and tpl.kind != "label":
        raise UsageError(f"--calibrate applies to label templates (as xnli's), not to {spec.name}; drop --calibrate")
    ivs = load_interventions(interventions, alpha, lm.fingerprint, model=lm)
    positions = default_positions(ivs, cfg.positions)  # None: the policy the intervention stores
    # every input is read and hashed before any model time (a bad file fails now, not after a pass)
    items, exemplars, ex_langs, data = _inputs(spec, tpl, lang_list, cfg)
    eng = engine or Engine.for_config(lm, cfg)
    # an engine may be shared (sweep): count this call only
    counters0 = (eng.truncated, eng.boundary_mismatches, dict(eng.scored_by))

    flat = [it for lang in lang_list for it in items[lang]]
    call = scoring.ScoringCall(interventions=ivs or None, positions=positions, anchor=anchor,
                               scope={"task": spec.name, "template": tpl.describe(), "split": cfg.split},
                               sampling=dict(cfg.sampling))
    records = _records(spec, tpl, eng, flat, exemplars, call, cfg.calibrate)
    per_lang, avg = summarize_records(spec, records, lang_list, anchor, cfg.seed, cfg.n_boot)
    ids = {lang: [it.id for it in items[lang]] for lang in lang_list}
    extra = {"task_summary": spec.task_summary(records)} if spec.task_summary is not None else {}
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "task": spec.name, "task_spec": spec.describe(),
        "split": cfg.split, "langs": lang_list, "anchor": anchor,
        "template": _template_info(spec, tpl, lang_list, ex_langs),
        "model": {"name": lm.name, "fingerprint": lm.fingerprint, "fingerprint_sha256": eng.model_hash},
        "data": data,
        "item_ids": {"n": len(flat), "per_lang": {lang: len(v) for lang, v in ids.items()}, "sha256": _sha(ids)},
        "limit": cfg.limit, "seed": cfg.seed, "n_boot": cfg.n_boot, "calibrate": bool(cfg.calibrate),
        "intervention": intervention_info(ivs, positions), "alpha": alpha,
        "decoding": _decoding(tpl, flat, exemplars, call),
        "metrics": metrics_record(spec),
        "engine": _engine_record(eng, counters0),
        "per_lang": per_lang, "average": avg, "items": records, "versions": versions(), **extra,
    }


def _engine_record(eng: Engine, before: tuple[int, int, dict[str, int]]) -> dict[str, Any]:
    """The engine's counters for this call; how its log-likelihoods were scored (requests per
    strategy, as computed or as the cache recorded) and whether generation was compiled."""
    scored = {k: v - before[2].get(k, 0) for k, v in sorted(eng.scored_by.items()) if v - before[2].get(k, 0)}
    out: dict[str, Any] = {"max_length": eng.max_length, "truncated": eng.truncated - before[0],
                           "boundary_mismatches": eng.boundary_mismatches - before[1],
                           "compiled_generation": eng.compile_backend}
    if scored:
        out["scoring"] = {"strategy": eng.scoring, "requests": scored}
    return out


def write_results(path: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Deterministic JSON (sorted keys), written atomically after reading back as a result file."""
    from ..results.read import check_readable

    return atomic_write_json(path, results, validate=check_readable)


def results_json(results: dict[str, Any]) -> str:
    return dumps_json(results)
