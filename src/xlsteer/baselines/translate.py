"""Translate-test: translate every item to English, then evaluate the English prompt unsteered.

Three translators (METHODS.md section 1, baseline "translation to English"):

* ``apertium``  rule-based MT through the ``apertium`` command (Debian packages ``apertium`` and
  ``apertium-<pair>``), for the languages that have a pair into English (``apertium -l``).
* ``self``      the evaluated model itself, prompted ``"Translate to English: <text>\\nEnglish:"``,
  greedy, stopped at the first newline. Costs extra inference tokens per item (recorded).
* ``gmt``       XCOPA only: the Google-MT English that ships with XCOPA (``data-gmt``), i.e. the
  production-MT reference of the steering paper (no translation is run).

The translators and their cache live in :mod:`.translators` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

from ..errors import DataError, LanguageError, UsageError
from ..evaluation.config import EvalConfig
from .translators import (SelfTranslator, TranslationCache, TranslationError, apertium_pairs, default_cache_path,
                          make_translator)

TRANSLATORS = ("apertium", "self", "gmt")

# Which item fields carry text to translate (everything else is copied unchanged), and why a
# task has no translate-test: each task's BaselineHints (translate_fields, translate_unsupported).

# ---------------------------------------------------------------------------------------------
# items


def translated_fields(task: str) -> tuple[str, ...]:
    """The item fields translate-test translates for ``task`` (UsageError when it has none)."""
    from ..evaluation.tasks import get_task, task_names

    hints = get_task(task).baselines
    if hints.translate_fields:
        return hints.translate_fields
    able = " ".join(n for n in task_names() if get_task(n).baselines.translate_fields)
    why = hints.translate_unsupported or f"task {task} declares no fields to translate (translate_fields)"
    raise UsageError(f"{why}; use translate-test on {able}")


def translate_texts(translator: Any, texts: Sequence[str], lang: str, cache: TranslationCache | None = None,
                    chunk: int = 64) -> list[str]:
    """Translate ``texts`` from ``lang`` to English, through the cache (saved after each chunk)."""
    cache = cache if cache is not None else TranslationCache(None)
    tid = translator.translator_id(lang)
    found: dict[str, str] = {}
    todo: list[str] = []
    for t in dict.fromkeys(texts):
        hit = cache.get(tid, lang, t)
        if hit is None:
            todo.append(t)
        else:
            found[t] = hit
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        res = translator.translate(part, lang)
        if len(res) != len(part):
            raise TranslationError(f"{tid} returned {len(res)} translations for {len(part)} texts")
        for src, tgt in zip(part, res):
            cache.put(tid, lang, src, tgt)
            found[src] = tgt
        cache.save()
    return [found[t] for t in texts]


def translate_items(task: str, items: Sequence[Any], translator: Any, cache: TranslationCache | None = None) -> list[Any]:
    """Items with their text fields replaced by English translations (ids, split, gold unchanged).

    The item keeps its language (pairing and reporting are per source language); the fields record
    ``translated_from`` and ``translator``; the template is the English one (``prompt_lang``).
    Anchor-language (English) items are returned unchanged.
    """
    from ..evaluation.tasks import get_task

    names = translated_fields(task)
    polish = get_task(task).baselines.polish_translation
    out: list[Any] = list(items)
    by_lang: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        if it.lang != "en":
            by_lang.setdefault(it.lang, []).append(i)
    for lang, idx in by_lang.items():
        texts = [items[i].fields[f] for i in idx for f in names]
        trans = translate_texts(translator, texts, lang, cache)
        for k, i in enumerate(idx):
            it = items[i]
            fields = dict(it.fields)
            empty = []
            for j, f in enumerate(names):
                fields[f"{f}_source"] = fields[f]
                fields[f] = _usable(polish, f, trans[k * len(names) + j], fields[f])
                if not trans[k * len(names) + j].strip():
                    empty.append(f)
            fields.update(translated_from=lang, translator=translator.translator_id(lang), prompt_lang="en",
                          untranslated_fields=empty)
            out[i] = dataclasses.replace(it, fields=fields)
    return out


def _usable(polish: Callable[[str, str], str] | None, name: str, text: str, source: str) -> str:
    """A translation the template can render: an empty one falls back to the source text (recorded
    in ``untranslated_fields``); the task's ``polish_translation`` then adapts it (an XCOPA
    premise gets the final full stop the template removes)."""
    t = " ".join(text.split()) or source
    return polish(name, t) if polish is not None else t


def gmt_items(items: Sequence[Any], data_dir: str | None = None, task: str = "xcopa") -> list[Any]:
    """Items replaced by the English translation their benchmark ships (XCOPA's Google-MT
    ``data-gmt``: the task's ``english_reference``), matched by id."""
    from ..evaluation.tasks import get_task

    hints = get_task(task).baselines
    if hints.english_reference is None:
        raise UsageError(f"task {task} ships no English translation of its items; translate-gmt runs on xcopa")
    fields_to_copy = hints.translate_fields
    out: list[Any] = list(items)
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(items):
        if it.lang != "en":
            by_key.setdefault((it.lang, it.split), []).append(i)
    for (lang, split), idx in by_key.items():
        if lang not in hints.english_reference_langs:
            raise LanguageError(f"{task}'s English reference has no {lang!r} (it has "
                                f"{' '.join(hints.english_reference_langs)}); drop it from translate-gmt")
        gmt = {it.id: it for it in hints.english_reference(data_dir, lang, split)}
        for i in idx:
            it = items[i]
            g = gmt.get(it.id)
            if g is None or g.answer != it.answer:
                raise DataError(f"{task} English reference item {it.id} ({lang}) is missing or misaligned; "
                                "restore the shared data")
            fields = dict(it.fields)
            for f in fields_to_copy:
                fields[f"{f}_source"] = fields[f]
                fields[f] = g.fields[f]
            fields.update(translated_from=lang, translator="gmt", prompt_lang="en")
            out[i] = dataclasses.replace(it, fields=fields)
    return out


def supported_langs(kind: str, task: str, langs: Sequence[str]) -> dict[str, str | None]:
    """For each language, None if the translator covers it, else the reason it does not."""
    out: dict[str, str | None] = {}
    pairs = apertium_pairs() if kind == "apertium" else {}
    for lang in langs:
        if lang == "en":
            out[lang] = None
        elif kind == "apertium":
            out[lang] = None if lang in pairs else f"apertium has no {lang}-eng pair (installed: {' '.join(sorted(pairs)) or 'none'})"
        elif kind == "gmt":
            from ..evaluation.tasks import get_task

            hints = get_task(task).baselines
            if hints.english_reference is None:
                out[lang] = f"{task} ships no English translation of its items (XCOPA's Google-MT English does)"
            else:
                out[lang] = None if lang in hints.english_reference_langs else f"{task}'s English reference has no {lang}"
        else:
            out[lang] = None
    return out


def self_translation_tokens(tr: SelfTranslator, items: Sequence[Any], fields: Sequence[str]) -> int:
    """Model tokens self-translation costs for ``items`` (prompt + output + the stop newline per field),
    counted from the texts, so cached translations cost what they cost when they were made."""
    tok = tr.lm.tokenizer
    total = 0
    for it in items:
        for f in fields:
            prompt = tr.prompt.format(text=" ".join(it.fields[f"{f}_source"].split()))
            total += len(tok(prompt)["input_ids"]) + len(tok(it.fields[f], add_special_tokens=False)["input_ids"]) + 1
    return total


METHOD_TRANSLATOR = {"translate-test": "apertium", "translate-self": "self", "translate-gmt": "gmt"}


def translation_template(task: str, translated: dict[tuple[str, str], Any], info: dict[str, Any],
                         template: Any = None, anchor: str = "en") -> Any:
    """The task's template rendering each non-anchor item from its English translation.

    The translated item is rendered as English (``lang="en"``: XCOPA's English connectors), while
    the runner keeps the original item for scoring and pairing (same id, same language column).
    """
    from ..evaluation.tasks import get_template
    from .icl import base_render, wrap_template

    base = get_template(task, template)

    def render(t: Any, item: Any, exemplars: Sequence[Any]) -> Any:
        if item.lang == anchor:
            return base_render(t, item, exemplars)
        tr = translated.get((item.lang, item.id))
        if tr is None:
            raise TranslationError(f"no translation for {item.lang} item {item.id}; translate the same split and limit")
        return base_render(t, dataclasses.replace(tr, lang="en"), exemplars)

    return wrap_template(base, render, info)


def run_translate_test(lm: Any, task: str, langs: Sequence[str], translator: str = "apertium",
                       cfg: EvalConfig | None = None, *, cache: TranslationCache | str | os.PathLike | None | bool = True,
                       translator_options: Mapping[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """Translate the items of ``langs`` to English with ``translator`` and evaluate them unsteered,
    as ``cfg`` says (keyword ``settings`` override its fields).

    ``langs`` the translator cannot handle are left out (listed in ``results["translation"]["skipped"]``
    with the reason). ``cache``: True = the default cache file, a path, a TranslationCache, or
    False/None = no file. Cost figures: translation seconds and, for self-translation, the
    model's prompt + generated tokens per item.
    """
    from ..evaluation.runner import run_task
    from ..evaluation.tasks import get_task

    cfg = EvalConfig.of(cfg, **settings)
    split, limit, data_dir, anchor = cfg.split, cfg.limit, cfg.data_dir, cfg.anchor
    task = get_task(task).name
    fields = translated_fields(task)
    if translator not in TRANSLATORS:
        raise UsageError(f"unknown translator {translator!r}; choose one of {', '.join(TRANSLATORS)}")
    reasons = supported_langs(translator, task, langs)
    use = [lang for lang in langs if reasons[lang] is None]
    skipped = {lang: reasons[lang] for lang in langs if reasons[lang] is not None}
    if not [lang for lang in use if lang != anchor]:
        raise LanguageError(f"{translator} translates none of {', '.join(x for x in langs if x != anchor)} for {task}: "
                            + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    if isinstance(cache, TranslationCache):
        tcache = cache
    elif cache is True:
        tcache = TranslationCache(default_cache_path())
    elif cache in (False, None):
        tcache = TranslationCache(None)
    else:
        tcache = TranslationCache(cache)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    mod = get_task(task)
    items = [it for lang in use if lang != anchor for it in mod.load_items(data_dir, lang, split, limit)]
    tr_obj = None
    if translator == "gmt":
        done = gmt_items(items, data_dir, task)
        ids = {lang: "gmt (XCOPA data-gmt)" for lang in use if lang != anchor}
    else:
        tr_obj = make_translator(translator, lm, **dict(translator_options or {}))
        done = translate_items(task, items, tr_obj, tcache)
        ids = {lang: tr_obj.translator_id(lang) for lang in use if lang != anchor}
    seconds = time.perf_counter() - t0
    translated = {(it.lang, it.id): it for it in done}
    digest = hashlib.sha256(json.dumps(sorted((k[0], k[1], [v.fields[f] for f in fields])
                                              for k, v in translated.items()), ensure_ascii=False).encode()).hexdigest()
    info = {"method": f"translate-{translator}", "translator": translator, "translator_ids": ids,
            "translations_sha256": digest, "fields": list(fields)}
    tpl = translation_template(task, translated, info, cfg.template, anchor)
    res = run_task(lm, task, use, None, cfg.replace(template=tpl))
    n_items = max(1, len(items))
    res["translation"] = {
        "translator": translator,
        "translator_ids": ids,
        "skipped": skipped,
        "seconds": round(seconds, 3),
        "n_items": len(items),
        "cache": {"path": str(tcache.path) if tcache.path else None, "hits": tcache.hits, "misses": tcache.misses},
        "model_tokens_per_item": (
            self_translation_tokens(tr_obj, done, fields) / n_items if isinstance(tr_obj, SelfTranslator) else 0.0
        ),
        "examples": [{"id": it.id, "lang": it.lang, **{f: it.fields[f] for f in fields},
                      **{f"{f}_source": it.fields[f"{f}_source"] for f in fields}} for it in done[:3]],
    }
    return res
