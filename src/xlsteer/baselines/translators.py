"""The translators of translate-test, and the cache of their translations.

Why a module of its own: how text gets translated (the ``apertium`` command, or the evaluated
model prompted to translate) and how translations are cached is independent of which task's
items are translated and how they are then evaluated (:mod:`.translate`).

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
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.langs import normalize_lang
from ..errors import DataError, LanguageError, UsageError, XlsteerError
from ..io import atomic_write_json, sha256_text

SELF_PROMPT = "Translate to English: {text}\nEnglish:"
SELF_MAX_NEW_TOKENS = 96


class TranslationError(XlsteerError):
    """A translator failed (missing program or language pair, or malformed output)."""


# ---------------------------------------------------------------------------------------------
# cache


def default_cache_path() -> Path:
    from ..models.shipped import cache_dir

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




def make_translator(kind: str, lm: Any = None, **kwargs: Any) -> Any:
    if kind == "apertium":
        return ApertiumTranslator(**kwargs)
    if kind == "self":
        if lm is None:
            raise UsageError("self-translation needs the model; pass lm")
        return SelfTranslator(lm, **kwargs)
    raise UsageError(f"unknown translator {kind!r}; choose apertium or self (gmt is not a translator)")
