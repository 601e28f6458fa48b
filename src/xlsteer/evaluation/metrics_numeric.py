"""MGSM scoring: the final number of a generated answer, in any script and number format.

Why a module of its own: extracting "the answer" from free text is the one metric with many
language-specific rules (answer markers per language, thousands separators, digits of other
scripts, chain-of-thought triggers that look like markers); each rule that changes a number is
documented at the function that applies it. Importable from :mod:`xlsteer.evaluation.metrics`.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from xlsteer.errors import DataError, UsageError

from .metrics_text import _base_lang


#: Languages in which a single ``.`` followed by exactly three digits groups thousands
#: ("1.234" = 1234). Elsewhere (and when no language is given) it is a decimal point.
DOT_THOUSANDS_LANGS = frozenset(
    {"de", "es", "it", "pt", "nl", "da", "id", "tr", "vi", "el", "ro", "hr", "sl", "sr", "is", "ca"}
)

# Separators other than ASCII that are mapped before matching. Only unambiguous ones are
# mapped everywhere; the full-width comma/period also punctuate CJK prose, so they are
# mapped only between digits (see _normalize_digits).
_CHAR_MAP = {
    "\u2212": "-",  # MINUS SIGN
    "\uff0d": "-",  # FULLWIDTH HYPHEN-MINUS
    "\ufe63": "-",  # SMALL HYPHEN-MINUS
    "\u066b": ".",  # ARABIC DECIMAL SEPARATOR
    "\u066c": ",",  # ARABIC THOUSANDS SEPARATOR
}

_SPACE_SEPS = " \u00a0\u202f\u2009'\u2019"  # space, NBSP, narrow NBSP, thin space, ' and ’ (Swiss)

# Alternatives tried left to right at each position (the first that matches wins).
_NUMBER_RE = re.compile(
    r"(?P<sign>(?<![\w)\]])-)?"
    r"(?P<num>"
    # scientific notation, one number: 1e400 / 2.5E-3 (not "1" and "400")
    r"(?<![A-Za-z])\d+(?:\.\d+)?[eE][+-]?\d{1,9}(?![\d])"
    # Indian (lakh) grouping: 1,00,000 / 12,34,567.5
    r"|\d{1,2}(?:,\d{2})+,\d{3}(?:\.\d+)?(?![\d])"
    # comma grouping with optional point decimal: 1,234 / 1,234,567.89
    r"|\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d])(?!,\d)"
    # point grouping with comma decimal, or two+ point groups: 1.234,5 / 1.234.567
    r"|\d{1,3}(?:\.\d{3})+,\d+(?![\d])"
    r"|\d{1,3}(?:\.\d{3}){2,}(?![\d])(?!\.\d)"
    # space / apostrophe grouping with optional decimal: 1 234 / 1 234,5 / 1'234.5
    rf"|\d{{1,3}}(?:[{_SPACE_SEPS}]\d{{3}})+(?:[.,]\d+)?(?![\d])"
    # plain decimal (point or comma), not part of a list such as 1,2,3
    r"|(?<!\d[.,])\d+[.,]\d+(?![.,]?\d)"
    # plain integer
    r"|\d+"
    r")"
)

# "The answer is N" in the MGSM languages (phrasings of the MGSM exemplars and lm-eval's
# native-CoT filters) and in English. Preferred over colon markers.
_ANSWER_IS_MARKERS = [
    r"answer\s+is",
    r"answer\s+would\s+be",
    r"die\s+antwort\s+(?:lautet|ist)",
    r"la\s+respuesta\s+(?:es|final\s+es)",
    r"la\s+r[ée]ponse\s+(?:est|finale\s+est)",
    r"ответ\s*(?:—|–|-|равен|будет|:)",
    r"jibu\s+ni",
    r"উত্তর(?:টি)?\s*(?:হল|হলো|হচ্ছে)",
    r"సమాధానం",
    r"คำตอบ\s*คือ",
    r"答えは",
    r"答案(?:是|为|為)",
]
# "Answer: N" style markers.
_COLON_MARKERS = [
    r"(?:final\s+)?answer\s*[:：]",
    r"antwort\s*[:：]",
    r"respuesta\s*[:：]",
    r"r[ée]ponse\s*[:：]",
    r"ответ\s*[:：]",
    r"jibu\s*[:：]",
    r"উত্তর\s*[:：]",
    r"คำตอบ\s*[:：]",
    r"答え\s*[:：]",
    r"答案\s*[:：]",
]
# The MGSM chain-of-thought triggers ("Step-by-Step Answer:") contain an answer word but are
# not an answer; they are removed before markers are searched for.
_COT_TRIGGERS = [
    r"step-by-step\s+answer\s*[:：]",
    r"ধাপে\s+ধাপে\s+উত্তর\s*[:：]",
    r"schritt-für-schritt-antwort\s*[:：]",
    r"respuesta\s+paso\s+a\s+paso\s*[:：]",
    r"réponse\s+étape\s+par\s+étape\s*[:：]",
    r"ステップごとの答え\s*[:：]",
    r"пошаговое\s+решение\s*[:：]",
    r"jibu\s+la\s+hatua\s+kwa\s+hatua\s*[:：]",
    r"దశలవారీగా\s+సమాధానం\s*[:：]",
    r"คำตอบทีละขั้นตอน\s*[:：]",
    r"逐步解答\s*[:：]",
]
_ANSWER_IS_RE = re.compile("|".join(f"(?:{m})" for m in _ANSWER_IS_MARKERS), re.IGNORECASE)
_COLON_RE = re.compile("|".join(f"(?:{m})" for m in _COLON_MARKERS), re.IGNORECASE)
_COT_RE = re.compile("|".join(f"(?:{m})" for m in _COT_TRIGGERS), re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")


#: Numbers beyond 10**±60 stay in scientific form (canonical "1E+400"): no answer is that large,
#: and expanding 1e999999999 would take a gigabyte.
MAX_EXPONENT = 60


def _normalize_digits(text: str) -> str:
    """Map every decimal digit (category Nd, any script) to ASCII and a few separators."""
    out = []
    for ch in text:
        if unicodedata.category(ch) == "Nd":
            out.append(str(unicodedata.digit(ch)))
        else:
            out.append(_CHAR_MAP.get(ch, ch))
    s = "".join(out)
    # Full-width comma/period only when they sit inside a number (else they are CJK prose).
    s = re.sub(r"(?<=\d)\uff0c(?=\d{3}(?!\d))", ",", s)
    s = re.sub(r"(?<=\d)\uff0e(?=\d)", ".", s)
    return s


def canonical_number(num: str, negative: bool = False, lang: str | None = None) -> str:
    """Canonical string of one matched number: separators resolved, trailing zeros dropped.

    ``num`` is ASCII digits with separators, as matched by the extractor.
    """
    base = _base_lang(lang)
    s = num
    if re.fullmatch(r"\d{1,3}\.\d{3}", s) and base in DOT_THOUSANDS_LANGS:
        s = s.replace(".", "")
    elif re.fullmatch(r"\d{1,2}(?:,\d{2})+,\d{3}(?:\.\d+)?", s) or re.fullmatch(
        r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", s
    ):
        s = s.replace(",", "")
    elif re.fullmatch(r"\d{1,3}(?:\.\d{3})+,\d+", s) or re.fullmatch(r"\d{1,3}(?:\.\d{3}){2,}", s):
        s = s.replace(".", "").replace(",", ".")
    elif re.fullmatch(rf"\d{{1,3}}(?:[{_SPACE_SEPS}]\d{{3}})+(?:[.,]\d+)?", s):
        s = re.sub(rf"[{_SPACE_SEPS}]", "", s).replace(",", ".")
    else:
        s = s.replace(",", ".")
    try:
        d = Decimal(s)
    except InvalidOperation as exc:  # pragma: no cover - regex guarantees a valid literal
        raise DataError(f"cannot parse number {num!r}; report this as a bug") from exc
    if negative:
        d = -d
    if d == 0:
        return "0"
    if abs(d.adjusted()) > MAX_EXPONENT:  # 1e400: kept in scientific form, never expanded (nor overflowed)
        import decimal

        wide = decimal.Context(prec=max(1, len(d.as_tuple().digits)), Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
        return format(wide.normalize(d), "E")
    text = format(d.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _numbers(text: str, lang: str | None) -> list[tuple[int, str]]:
    """All numbers in ``text`` (already digit-normalised) as (start, canonical)."""
    return [
        (m.start(), canonical_number(m.group("num"), bool(m.group("sign")), lang))
        for m in _NUMBER_RE.finditer(text)
    ]


def _number_after_marker(text: str, marker_re: re.Pattern[str], lang: str | None) -> str | None:
    """First number on the rest of the line after the first marker that is followed by one."""
    for m in marker_re.finditer(text):
        # Skip blanks, colons, markdown bold and currency signs (not "-": it may be a sign).
        rest = text[m.end():].lstrip(" \t\r\n:：*$€£¥#=")
        line = rest.split("\n", 1)[0]
        nums = _numbers(line, lang)
        if nums:
            return nums[0][1]
    return None


def extract_number(text: str, lang: str | None = None) -> str | None:
    """The final numeric answer of a generated text, in canonical form, or None.

    Why so many rules: MGSM outputs mix scripts and local number formats, and a wrong parse is
    a silently wrong score. The rules, in order:

    1. Digits of any script (Unicode category Nd: Bengali, Devanagari, Thai, Telugu,
       Arabic-Indic, full-width, ...) become ASCII via ``unicodedata.digit``. Superscripts and
       other non-decimal "digits" (``²``) are not numbers. U+2212 and full-width minus are
       minus signs; Arabic decimal/thousands separators are mapped to ``.``/``,``.
    2. Where the answer is taken from: the content of the last ``\\boxed{...}`` if it holds a
       number; else the first number on the same line after the first "answer is" marker
       (``The answer is``, ``Die Antwort lautet``, ``答案是``, ``উত্তর হল``, ... ; the first,
       because a model that keeps generating invents new questions with new answers); else
       the same after an ``Answer:`` marker (MGSM chain-of-thought triggers such as
       ``Step-by-Step Answer:`` are ignored); else the last number in the text.
    3. Separators. ``,`` followed by groups of exactly three digits groups thousands
       (``1,234`` -> 1234; Indian ``1,00,000`` -> 100000); otherwise a single ``,`` is a
       decimal comma (``2,5`` -> 2.5), and lists such as ``1,2,3`` are separate numbers.
       ``.`` groups thousands when it occurs twice or more (``1.234.567``) or before a decimal
       comma (``1.234,5``); a single ``.`` followed by exactly three digits (``1.234``) is a
       decimal point unless ``lang`` is in :data:`DOT_THOUSANDS_LANGS` (de, es, it, ...), then
       1234. A space, no-break/thin space or apostrophe groups thousands when every following
       group has exactly three digits (``1 234`` -> 1234; so "5 100" in prose reads 5100).
    4. A ``-`` is a minus sign only when not preceded by a letter, digit or closing bracket
       (``10-3`` is two numbers, ``= -3`` is -3).
    5. Canonical form: no separators, no trailing zeros, no leading ``+``, ``-0`` -> ``0``
       (``42.0`` -> ``42``, ``2.50`` -> ``2.5``). Fractions ``1/2`` are two numbers.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise UsageError(f"extract_number needs a string, got {type(text).__name__}; pass the generated text")
    s = _normalize_digits(text)
    for content in reversed(_BOXED_RE.findall(s)):
        nums = _numbers(content, lang)
        if nums:
            return nums[-1][1]
    s_markers = _COT_RE.sub(" ", s)
    for marker_re in (_ANSWER_IS_RE, _COLON_RE):
        found = _number_after_marker(s_markers, marker_re, lang)
        if found is not None:
            return found
    nums = _numbers(s, lang)
    return nums[-1][1] if nums else None


def _gold_number(gold: Any, lang: str | None) -> str:
    if isinstance(gold, bool):
        raise DataError(f"MGSM gold answer {gold!r} is a boolean; pass the numeric answer")
    if isinstance(gold, (int, np.integer)):
        return canonical_number(str(abs(int(gold))), int(gold) < 0)
    if isinstance(gold, (float, np.floating)):
        if not np.isfinite(gold):
            raise DataError(f"MGSM gold answer {gold!r} is not finite; fix the data file")
        return canonical_number(repr(abs(float(gold))), float(gold) < 0)
    if isinstance(gold, str):
        num = extract_number(gold, lang)
        if num is not None:
            return num
    raise DataError(f"MGSM gold answer {gold!r} holds no number; fix the data file")


def mgsm_exact_match(pred_text: str, gold: Any, lang: str | None = None) -> bool:
    """Whether the final number of ``pred_text`` equals ``gold`` (int, float or numeric string).

    Both sides go through the same canonicalisation, so ``"42.0"`` matches ``42``. No text
    answer (no number at all) is a miss.
    """
    pred = extract_number(pred_text, lang)
    return pred is not None and pred == _gold_number(gold, lang)
