"""XQuAD scoring: SQuAD-style answer normalisation, token F1 and exact match, per language.

Why a module of its own: SQuAD v1.1's English rules (lower case, no punctuation, no articles,
whitespace tokens) are kept exactly for English, and languages written without spaces are
compared character by character; which rule a language gets is decided here, in one place.
Importable from :mod:`xlsteer.evaluation.metrics`.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable

from xlsteer.errors import DataError, UsageError


def _base_lang(lang: str | None) -> str | None:
    """'zh-Hans' / 'zh_CN' / 'ZH' -> 'zh'. Kept local so metrics depend on nothing else."""
    if lang is None:
        return None
    if not isinstance(lang, str) or not lang.strip():
        raise UsageError(f"language code {lang!r} is not a string; pass an ISO 639-1 code such as 'en'")
    return lang.strip().lower().replace("_", "-").split("-")[0]


#: Languages written without spaces between words: tokens are characters.
CHAR_LEVEL_LANGS = frozenset({"zh", "ja", "th", "lo", "km", "my"})

_ASCII_PUNCT = frozenset(string.punctuation)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(s: str, lang: str) -> str:
    """Normalise an answer string before token matching.

    English mirrors the official SQuAD v1.1 script exactly: lowercase, delete ASCII
    ``string.punctuation``, replace the articles a/an/the by a space, collapse whitespace.
    Other languages: NFC, lowercase, delete Unicode punctuation (categories P*) and ASCII
    punctuation, delete format characters (Cf: zero-width spaces/joiners), collapse whitespace.
    Articles are removed only for English. For :data:`CHAR_LEVEL_LANGS` the result keeps no
    whitespace at all (tokens are characters).
    """
    if not isinstance(s, str):
        raise UsageError(f"answer must be a string, got {type(s).__name__}; pass the generated text")
    base = _base_lang(lang)
    if base == "en":
        text = s.lower()
        text = "".join(ch for ch in text if ch not in _ASCII_PUNCT)
        text = re.sub(r"\b(a|an|the)\b", " ", text)
        return " ".join(text.split())
    text = unicodedata.normalize("NFC", s).lower()
    text = "".join(ch for ch in text if not _is_punct(ch) and unicodedata.category(ch) != "Cf")
    if base in CHAR_LEVEL_LANGS:
        return "".join(text.split())
    return " ".join(text.split())


def _tokens(s: str, lang: str) -> list[str]:
    norm = normalize_answer(s, lang)
    if _base_lang(lang) in CHAR_LEVEL_LANGS:
        return list(norm)  # one token per code point (Thai combining marks count separately)
    return norm.split()


def _golds(golds: str | Iterable[str]) -> list[str]:
    gl = [golds] if isinstance(golds, str) else list(golds)
    if not gl:
        raise DataError("no gold answers given; every XQuAD item needs at least one answer text")
    return gl


def _f1_one(pred_toks: list[str], gold_toks: list[str]) -> float:
    common = Counter(pred_toks) & Counter(gold_toks)
    num_same = sum(common.values())
    if num_same == 0:  # as in SQuAD v1.1: also 0 when both are empty
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def squad_f1(pred: str, golds: str | Iterable[str], lang: str) -> float:
    """Token-overlap F1 of ``pred``, maximised over the gold answers (SQuAD v1.1).

    As in the official script, an empty normalised answer scores F1 0 even against an empty
    gold (EM would be 1).
    """
    pt = _tokens(pred, lang)
    return max(_f1_one(pt, _tokens(g, lang)) for g in _golds(golds))


def squad_em(pred: str, golds: str | Iterable[str], lang: str) -> float:
    """1.0 when the normalised ``pred`` equals any normalised gold, else 0.0."""
    p = normalize_answer(pred, lang)
    return float(any(p == normalize_answer(g, lang) for g in _golds(golds)))
