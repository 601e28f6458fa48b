"""Translate-test: translate every item to English, then evaluate the English prompt unsteered.

Three translators (METHODS.md section 1, baseline "translation to English"):

* ``apertium``  rule-based MT through the ``apertium`` command (Debian packages ``apertium`` and
  ``apertium-<pair>``), for the languages that have a pair into English (``apertium -l``).
* ``self``      the evaluated model itself, prompted ``"Translate to English: <text>\\nEnglish:"``,
  greedy, stopped at the first newline. Costs extra inference tokens per item (recorded).
* ``gmt``       XCOPA only: the Google-MT English that ships with XCOPA (``data-gmt``), i.e. the
  production-MT reference of the steering paper (no translation is run).

Why a cache: translation is the slow part (a 270M model translating 500 XCOPA items x 3 fields
takes minutes on a CPU) and it does not depend on the method evaluated afterwards. Entries are
keyed by translator id + source language + sha256 of the text, in one JSON file written
atomically (merged with what is on disk, so two processes never produce a half-written file;
the last writer wins on a conflicting key, which holds the same translation anyway).
The translator id pins what produced the text: the apertium version and pair, or the model's
fingerprint, the prompt and the generation length for self-translation.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..data.langs import normalize_lang
from ..errors import DataError, LanguageError, UsageError, XlsteerError
from ..io import atomic_write_json, sha256_text

TRANSLATORS = ("apertium", "self", "gmt")

#: Item fields that carry text to translate, per task (everything else is copied unchanged).
TRANSLATED_FIELDS: dict[str, tuple[str, ...]] = {
    "xcopa": ("premise", "choice1", "choice2"),
    "xnli": ("premise", "hypothesis"),
    "mgsm": ("question",),
}
#: Why a task has no translate-test here.
UNSUPPORTED_TASKS = {
    "xquad": "translate-test on XQuAD needs the English answer span projected back onto the source-language "
             "context (the gold answers are spans of it); xlsteer does not implement answer projection",
}

SELF_PROMPT = "Translate to English: {text}\nEnglish:"
SELF_MAX_NEW_TOKENS = 96


class TranslationError(XlsteerError):
    """A translator failed (missing program or language pair, or malformed output)."""


# ---------------------------------------------------------------------------------------------
# cache


def default_cache_path() -> Path:
    from ..models.loading import cache_dir

    return cache_dir() / "translations.json"


class TranslationCache:
    """``(translator, lang, sha256(text)) -> translation`` in one JSON file (atomic writes).

    ``path=None`` keeps the cache in memory only (tests, or ``--no-cache``).
    """

    FORMAT = "xlsteer.translations"

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else Path(path)
        self._data: dict[str, dict[str, str]] = {}
        self._dirty: dict[str, dict[str, str]] = {}
        self.hits = 0
        self.misses = 0
        if self.path is not None:
            self._data = self._read()

    @staticmethod
    def key(translator: str, lang: str, text: str) -> str:
        return f"{translator}\t{lang}\t{sha256_text(text)}"

    def _read(self) -> dict[str, dict[str, str]]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DataError(f"translation cache {self.path} is corrupted; delete it (it is re-created)") from None
        if not isinstance(raw, dict) or raw.get("format") != self.FORMAT or not isinstance(raw.get("entries"), dict):
            raise DataError(f"{self.path} is not an xlsteer translation cache; delete it or choose another --translation-cache")
        return raw["entries"]

    def get(self, translator: str, lang: str, text: str) -> str | None:
        hit = self._data.get(self.key(translator, lang, text))
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        return hit["en"]

    def put(self, translator: str, lang: str, text: str, translation: str) -> None:
        entry = {"en": translation, "src": text[:80]}
        k = self.key(translator, lang, text)
        self._data[k] = entry
        self._dirty[k] = entry

    def save(self) -> None:
        """Merge new entries into the file on disk and write it atomically."""
        if self.path is None or not self._dirty:
            return
        merged = self._read()
        merged.update(self._dirty)
        atomic_write_json(self.path, {"format": self.FORMAT, "entries": merged})
        self._data.update(merged)
        self._dirty = {}

    def __len__(self) -> int:
        return len(self._data)


# ---------------------------------------------------------------------------------------------
# translators


@dataclasses.dataclass
class ApertiumTranslator:
    """Rule-based MT through the ``apertium`` program (unknown-word marks off, ``-u``)."""

    program: str = "apertium"
    timeout_s: float = 600.0
    name: str = "apertium"

    def __post_init__(self) -> None:
        exe = shutil.which(self.program)
        if exe is None:
            raise TranslationError(
                f"program {self.program!r} not found; install it (Debian: apt-get install apertium apertium-eng-spa) "
                "or use the translate-self / translate-gmt methods"
            )
        self.program = exe
        self.version = _apertium_version(exe)
        self.pairs = apertium_pairs(exe)

    def pair(self, lang: str) -> str:
        """The apertium mode translating ``lang`` into English (e.g. spa-eng)."""
        code = normalize_lang(lang)
        mode = self.pairs.get(code)
        if mode is None:
            have = ", ".join(sorted(self.pairs)) or "none"
            raise LanguageError(
                f"apertium has no pair from {code!r} to English (installed: {have}); install apertium-<lang>-eng "
                "or drop that language from translate-test (apertium)"
            )
        return mode

    def translator_id(self, lang: str) -> str:
        return f"apertium/{self.version}/{self.pair(lang)}"

    def translate(self, texts: Sequence[str], lang: str) -> list[str]:
        mode = self.pair(lang)
        flat = [" ".join(t.split()) for t in texts]  # one line per text
        if not flat:
            return []
        out = self._run(mode, "\n".join(flat) + "\n")
        lines = out.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if len(lines) != len(flat):  # should not happen; translate one by one to stay aligned
            lines = [self._run(mode, t + "\n").strip() for t in flat]
        return [line.strip() for line in lines]

    def _run(self, mode: str, text: str) -> str:
        try:
            res = subprocess.run(
                [self.program, "-u", mode], input=text, capture_output=True, text=True, encoding="utf-8",
                timeout=self.timeout_s, check=False,
            )
        except subprocess.TimeoutExpired:
            raise TranslationError(f"apertium {mode} took longer than {self.timeout_s:.0f} s; translate fewer items") from None
        if res.returncode != 0:
            msg = (res.stderr or "").strip().splitlines()
            raise TranslationError(f"apertium {mode} failed ({msg[0] if msg else f'exit {res.returncode}'}); "
                                   "check the installed pair with `apertium -l`")
        return res.stdout


def _apertium_version(exe: str) -> str:
    try:
        res = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=30, check=False)
        return (res.stdout.strip().split() or ["unknown"])[-1]
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


@functools.lru_cache(maxsize=4)
def _apertium_list(exe: str) -> tuple[str, ...]:
    try:
        res = subprocess.run([exe, "-l"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(line.strip() for line in res.stdout.splitlines() if line.strip())


def apertium_pairs(program: str | None = "apertium") -> dict[str, str]:
    """Source language (ISO 639-1) -> apertium mode into English, e.g. ``{"es": "spa-eng"}``.

    Only plain ``xxx-eng`` modes count (``spa-eng_US`` variants and debugging modes are ignored).
    Empty when apertium is not installed.
    """
    exe = shutil.which(program or "apertium")
    if exe is None:
        return {}
    out: dict[str, str] = {}
    for mode in _apertium_list(exe):
        parts = mode.split("-")
        if len(parts) != 2 or parts[1] != "eng":
            continue
        try:
            out[normalize_lang(parts[0])] = mode
        except LanguageError:
            continue
    return out


class SelfTranslator:
    """The evaluated model translates its own input (greedy, one line)."""

    name = "self"

    def __init__(self, lm: Any, *, prompt: str = SELF_PROMPT, max_new_tokens: int = SELF_MAX_NEW_TOKENS,
                 batch_size: int = 8, generate: Callable[[list[str], int], list[str]] | None = None):
        if "{text}" not in prompt:
            raise UsageError("the self-translation prompt must contain {text}")
        self.lm = lm
        self.prompt = prompt
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self._generate = generate or functools.partial(greedy_lines, lm, batch_size=self.batch_size)
        fp = getattr(lm, "fingerprint", {}) or {}
        ident = json.dumps({"model": getattr(lm, "name", "?"), "config": fp.get("config_hash", ""),
                            "tokenizer": fp.get("tokenizer_hash", ""), "prompt": prompt,
                            "max_new_tokens": self.max_new_tokens}, sort_keys=True)
        self._id = f"self/{getattr(lm, 'name', 'model')}/{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
        self.generated_tokens = 0
        self.prompt_tokens = 0

    def translator_id(self, lang: str) -> str:
        return self._id

    def translate(self, texts: Sequence[str], lang: str) -> list[str]:
        prompts = [self.prompt.format(text=" ".join(t.split())) for t in texts]
        outs = self._generate(prompts, self.max_new_tokens)
        tok = self.lm.tokenizer
        self.prompt_tokens += sum(len(tok(p)["input_ids"]) for p in prompts)
        self.generated_tokens += sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs)
        return [o.split("\n", 1)[0].strip() for o in outs]


def greedy_lines(lm: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy continuations of ``prompts`` (unsteered, the evaluation engine), cut at the first newline."""
    from ..evaluation.engine import Engine

    engine = Engine(lm, batch_size=batch_size, progress_desc="self-translate")
    return engine.generate(list(prompts), ["en"] * len(prompts), max_new_tokens, ["\n"])


# ---------------------------------------------------------------------------------------------
# items


def translated_fields(task: str) -> tuple[str, ...]:
    if task in UNSUPPORTED_TASKS:
        raise UsageError(UNSUPPORTED_TASKS[task] + "; use translate-test on xcopa, xnli or mgsm")
    try:
        return TRANSLATED_FIELDS[task]
    except KeyError:
        raise UsageError(f"translate-test is not defined for task {task!r}; available: {' '.join(TRANSLATED_FIELDS)}") from None


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
    names = translated_fields(task)
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
                fields[f] = _usable(task, f, trans[k * len(names) + j], fields[f])
                if not trans[k * len(names) + j].strip():
                    empty.append(f)
            fields.update(translated_from=lang, translator=translator.translator_id(lang), prompt_lang="en",
                          untranslated_fields=empty)
            out[i] = dataclasses.replace(it, fields=fields)
    return out


def _usable(task: str, name: str, text: str, source: str) -> str:
    """A translation the template can render: an empty one falls back to the source text (recorded
    in ``untranslated_fields``); an XCOPA premise gets the final full stop the template removes."""
    t = " ".join(text.split()) or source
    if task == "xcopa" and name == "premise" and t and t[-1] not in ".!?。":
        t += "."
    return t


def gmt_items(items: Sequence[Any], data_dir: str | None = None) -> list[Any]:
    """XCOPA items replaced by their Google-MT English (``data-gmt``), matched by id."""
    from ..evaluation.tasks import xcopa

    out: list[Any] = list(items)
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(items):
        if it.lang != "en":
            by_key.setdefault((it.lang, it.split), []).append(i)
    for (lang, split), idx in by_key.items():
        if lang not in xcopa.GMT_LANGS:
            raise LanguageError(f"XCOPA data-gmt has no {lang!r} (it has {' '.join(xcopa.GMT_LANGS)}); "
                                "drop it from translate-gmt")
        gmt = {it.id: it for it in xcopa.load_gmt_english(data_dir, lang, split)}
        for i in idx:
            it = items[i]
            g = gmt.get(it.id)
            if g is None or g.answer != it.answer:
                raise DataError(f"XCOPA data-gmt item {it.id} ({lang}) is missing or misaligned; restore the shared data")
            fields = dict(it.fields)
            for f in TRANSLATED_FIELDS["xcopa"]:
                fields[f"{f}_source"] = fields[f]
                fields[f] = g.fields[f]
            fields.update(translated_from=lang, translator="gmt", prompt_lang="en")
            out[i] = dataclasses.replace(it, fields=fields)
    return out


def make_translator(kind: str, lm: Any = None, **kwargs: Any) -> Any:
    if kind == "apertium":
        return ApertiumTranslator(**kwargs)
    if kind == "self":
        if lm is None:
            raise UsageError("self-translation needs the model; pass lm")
        return SelfTranslator(lm, **kwargs)
    raise UsageError(f"unknown translator {kind!r}; choose apertium or self (gmt is not a translator)")


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
            from ..evaluation.tasks import xcopa

            if task != "xcopa":
                out[lang] = "Google-MT English exists only for XCOPA"
            else:
                out[lang] = None if lang in xcopa.GMT_LANGS else f"XCOPA data-gmt has no {lang}"
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
    from ..evaluation.templates import get_template
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


def run_translate_test(lm: Any, task: str, langs: Sequence[str], translator: str = "apertium", split: str = "test",
                       limit: int | None = None, *, data_dir: str | os.PathLike | None = None, anchor: str = "en",
                       cache: TranslationCache | str | os.PathLike | None | bool = True,
                       translator_options: Mapping[str, Any] | None = None, seed: int = 0,
                       **eval_kw: Any) -> dict[str, Any]:
    """Translate the items of ``langs`` to English with ``translator`` and evaluate them unsteered.

    ``langs`` the translator cannot handle are left out (listed in ``results["translation"]["skipped"]``
    with the reason). ``cache``: True = the default cache file, a path, a TranslationCache, or
    False/None = no file. Cost figures: translation seconds and, for self-translation, the
    model's prompt + generated tokens per item.
    """
    from ..evaluation.runner import evaluate
    from ..evaluation.tasks import get_task

    task = get_task(task).NAME
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
        done = gmt_items(items, data_dir)
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
    tpl = translation_template(task, translated, info, eval_kw.pop("template", None), anchor)
    res = evaluate(lm, task, use, split=split, limit=limit, data_dir=data_dir, anchor=anchor, template=tpl,
                   seed=seed, **eval_kw)
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
