"""lm-evaluation-harness tasks as TaskSpecs: ``lmeval:T_en,T_sw`` is one xlsteer task in two languages.

Why: a researcher's benchmark often exists already as an lm-eval YAML task (or one per
language). Run through xlsteer's own pipeline it gets what lm-eval does not give: per-language
CIs, paired tests against the unsteered model on the same items, MDE, Holm, consistency with
the anchor, the per-item cache, ``xlsteer table`` and ``xlsteer report``.

How a reference becomes a task: each name is one lm-eval task in one language (the language
from the name, ``xnli_de`` -> de, ``..._jp`` -> ja, or ``task_langs``); together they form ONE
TaskSpec named ``lmeval:<common prefix>`` (``lmeval:T`` for T_en,T_sw; the names joined by
"+" when they share none). The configs are read through ``lm_eval.tasks.TaskManager`` (only
``include_path`` when it defines every name; lm-eval's own index of thousands of tasks only
otherwise); the documents are loaded on first use.

Requests are lm-eval's own: for every document, the task's ``fewshot_context`` (description,
``num_fewshot`` exemplars sampled with lm-eval's default seed 1234, ``doc_to_text``,
``target_delimiter``, ``gen_prefix``) and ``construct_requests`` give exactly the strings
lm-eval would send, rendered in document order from the first document, so ``limit=N`` gives
the prompts of lm-eval's ``--limit N``. Deviation: when the few-shot pool is the split being
rendered, the document itself is never one of its exemplars (lm-eval excludes it only when the
pool is declared as the test split). Prompts are plain text: no chat template and no system
instruction (lm-eval's defaults).

* ``multiple_choice``: choice i is scored as the summed log-likelihood of
  ``target_delimiter + choice_i`` after the context (acc, acc_norm per character, margin,
  p_correct); "multiple input" tasks (Winograd-style, ``doc_to_text`` gives the index of the
  right context) score one shared continuation after each context (acc).
* ``loglikelihood``: one continuation; acc = whether it is the greedy continuation (is_greedy).
* ``generate_until``: greedy, the task's ``until`` and ``max_gen_toks`` (default 256); the
  generated text goes through the task's own filter pipelines and ``process_results``, and every
  metric with per-item ``mean`` aggregation is reported per filter (``exact_match`` with one
  filter, ``exact_match:strict-match`` with several); corpus-level metrics (bleu, chrf) cannot be
  paired per item and are left out. Sampling tasks (``do_sample: true``) are refused.

Splits: ``test`` = the task's test split (else its validation split); ``dev`` = its validation
split when it has both (else none: that language cannot be swept, and is left out of dev
selection); ``train`` = its training split. Each language has its own documents, counts and
splits. Item ids are ``<name>/<split>/<id>``: the documents' own ``id`` field where every document
has a unique one, else the index. Items pair across languages (agreement with the anchor) only
when declared parallel (``parallel=True``, ``--task-parallel``) or detected so (every language
holds the same document ids); otherwise the task is not parallel. Nothing lm-eval or
``datasets`` prints reaches the terminal.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from ..errors import DataError, LanguageError, UsageError
from ..evaluation.tasks.spec import BaselineHints, TaskSource, TaskSpec
from ..evaluation.templates import Template
from ..validation import check_limit
from . import harness
from .config import config_version, local_files, task_config, task_metrics, task_splits
from .docs import Docs, answer_text, render, score
from .languages import parse_task_langs, task_language

PREFIX = "lmeval:"


def parse_reference(ref: str) -> list[str]:
    """``lmeval:T_en,T_sw`` -> ["T_en", "T_sw"] (UsageError when no name or a name twice)."""
    body = str(ref).strip()[len(PREFIX):]
    names = [n.strip() for n in body.split(",") if n.strip()]
    if not names:
        raise UsageError("give lm-eval task names after lmeval:, e.g. --task lmeval:xnli_de,xnli_en")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"lm-eval task {dup[0]} is given twice in {ref!r}; list each task once")
    return names


def _languages(names: Sequence[str], task_langs: Any) -> dict[str, str]:
    given = parse_task_langs(task_langs.replace(",", ";") if isinstance(task_langs, str) else task_langs)
    out: dict[str, str] = {}
    for name in names:
        try:
            lang = task_language(name, given)
        except LanguageError:
            raise UsageError(f"cannot tell the language of lm-eval task {name} from its name; "
                             f"pass --task-langs {name}:<code>") from None
        clash = [n for n, code in out.items() if code == lang]
        if clash:
            raise UsageError(f"lm-eval tasks {clash[0]} and {name} are both in language {lang}; give one task per "
                             f"language (or set the languages with --task-langs {name}:<code>)")
        out[name] = lang
    return out


def spec_name(names: Sequence[str]) -> str:
    """``lmeval:`` + the names' common prefix without trailing separators (joined by + if none)."""
    prefix = os.path.commonprefix(list(names)).rstrip("_-. ") if len(names) > 1 else names[0]
    return PREFIX + (prefix if prefix else "+".join(names))


def _load_tasks(tm: Any, names: Sequence[str]) -> dict[str, Any]:
    try:
        return harness.load_tasks(tm, names)
    except Exception as e:  # datasets/lm-eval raise anything (offline hub, bad paths, jinja)
        raise DataError(f"lm-eval could not load {', '.join(names)}: {harness.one_line(e)}; check the tasks' YAML "
                        "(dataset_path/data_files: local files or a dataset in the Hugging Face cache; "
                        "doc_to_text/doc_to_choice/doc_to_target)") from None


def build_spec(ref: str, include_path: Any = (), task_langs: Any = None, parallel: bool | None = None) -> TaskSpec:
    """The one TaskSpec of ``lmeval:NAME[,NAME...]`` (configs checked, documents loaded).

    ``include_path``: folders of task YAML files, relative or absolute (resolved here: the task is
    the same however the path is spelled). ``parallel``: True when document i (or id i) of every
    language is the same item; None: detected from the documents' ids."""
    names = parse_reference(ref)
    if isinstance(include_path, (str, os.PathLike)):
        include_path = [include_path]
    include_path = [_folder(p) for p in include_path or ()]
    tm = harness.task_manager(names, include_path)
    cfgs = {n: task_config(tm, n) for n in names}
    kinds = {c.get("output_type", "generate_until") for c in cfgs.values()}
    if len(kinds) > 1:
        raise UsageError(f"the lm-eval tasks {', '.join(names)} mix output types ({', '.join(sorted(kinds))}); "
                         "one xlsteer task needs one kind of request")
    kind = kinds.pop()
    langs = _languages(names, task_langs)
    per_task = task_splits(cfgs)
    splits = {langs[n]: per_task[n] for n in names}
    name = spec_name(names)
    loaded = _load_tasks(tm, names)
    docs = Docs(name, {langs[n]: loaded[n] for n in names}, {langs[n]: n for n in names}, splits)
    docs.check_loaded()
    pairing, why = docs.pairing(parallel)
    multi = {bool(t.multiple_input) for t in loaded.values()}
    if len(multi) > 1:
        raise UsageError(f"some of {', '.join(names)} are multiple-input tasks and some not; give one kind per task")
    metrics, main, tie, extra = task_metrics(cfgs, kind, multi.pop())
    generate = kind == "generate_until"
    template = Template("lmeval", name, config_version(cfgs), "generate" if generate else "choice",
                        f"lm-eval's own {kind} requests of {', '.join(names)}", _options(loaded, generate), render)
    every = [s for s in ("dev", "test", "train") if any(s in v for v in splits.values())]
    train = "train" if "train" in every else None
    return TaskSpec(
        name=name,
        description=f"lm-eval tasks {', '.join(names)} ({kind})",
        langs=tuple(langs[n] for n in names),
        splits={s: _split_rule(docs, s) for s in every},
        load_items=lambda data_dir, lang, split, limit=None: _items(docs, name, lang, split, limit),
        data_files=lambda lang, split: local_files(cfgs[docs.task_names[lang]]),
        templates=(template,),
        metrics=metrics, main=main, tie_break=tie,
        score=(lambda item, text: score(docs, metrics, item, text)) if generate else None,
        comparable_predictions=not generate,
        dev_split="dev" if "dev" in every else None,
        extra_continuous=extra,
        baselines=BaselineHints(
            icl_split=train, train_split=train, answer_text=answer_text,
            translate_unsupported="an lm-eval task builds its prompts with its own functions; translate its "
                                  "documents and write another task instead"),
        source={"kind": "lmeval", "tasks": {n: {"lang": langs[n], "yaml": cfgs[n].get("_yaml_path"),
                                                "version": (cfgs[n].get("metadata") or {}).get("version")}
                                            for n in names},
                "config_digest": template.version, "include_path": list(include_path), "parallel": why},
        pairing=pairing,  # type: ignore[arg-type]
        lang_splits=(None if all(set(v) == set(every) for v in splits.values())
                     else {lang: tuple(s for s in every if s in v) for lang, v in splits.items()}),
    )


def _folder(path: Any) -> str:
    """An include folder as an absolute path (symlinks resolved): the configs, the YAML paths and so
    the task's digest and data hash do not depend on how it was spelled or from where."""
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"include path {p} does not exist; give the folder of your lm-eval task YAML files")
    return str(p.resolve())


def _split_rule(docs: Docs, split: str) -> str:
    """An xlsteer split's rule: the lm-eval split(s) it is, with the document count per language."""
    have = {lang: v[split] for lang, v in docs.splits.items() if split in v}
    names = ", ".join(sorted(set(have.values())))
    counts = {lang: len(docs.docs(lang, split)) if lang in have else 0 for lang in docs.splits}
    if len(set(counts.values())) == 1:
        return f"lm-eval {names} split, all {next(iter(counts.values()))} documents"
    shown = ", ".join(f"{lang} {n}" if n else f"{lang} none" for lang, n in counts.items())
    return f"lm-eval {names} split; documents: {shown}"


def _options(loaded: dict[str, Any], generate: bool) -> dict[str, Any]:
    """Template options: a generation task's max_gen_toks (overridable) where every language agrees."""
    if not generate:
        return {}
    with harness.quiet():  # lm-eval's normaliser warns about contradictory settings
        limits = {int(harness.generation_settings(dict(t.config.generation_kwargs or {}))["max_gen_toks"])
                  for t in loaded.values()}
    return {"max_new_tokens": limits.pop()} if len(limits) == 1 else {}


def _items(docs: Docs, name: str, lang: str, split: str, limit: int | None) -> list:
    check_limit(limit)
    if lang not in docs.tasks:
        raise LanguageError(f"{name} has no language {lang!r}; available: {' '.join(docs.tasks)}")
    if split not in docs.splits[lang]:
        raise UsageError(f"{name} has no split {split!r} in {lang}; available: {' '.join(docs.splits[lang])}")
    return docs.items(lang, split, limit)


def is_lmeval_reference(ref: str) -> bool:
    return str(ref).strip().lower().startswith(PREFIX)


def build(ref: str, include_path: Any = (), task_langs: Any = None, parallel: bool | None = None,
          **options: Any) -> list[TaskSpec]:
    """Resolver entry point (other options are ignored)."""
    return [build_spec(ref, include_path=include_path, task_langs=task_langs, parallel=parallel)]


#: The ``lmeval:NAME,...`` task references (a row of xlsteer.evaluation.tasks.spec.TASK_SOURCES).
SOURCE = TaskSource(is_lmeval_reference, build)
