"""Task metrics for the multilingual evaluation harness (pure numpy, no model code).

Why these exist rather than a library's: scores must be identical for every language and
method, robust to digits in any script, and auditable. Every choice that changes a number is
documented at the function that makes it.

Contents
--------
* MGSM: :func:`extract_number`, :func:`canonical_number`, :func:`mgsm_exact_match`.
* XQuAD: :func:`normalize_answer`, :func:`squad_f1`, :func:`squad_em` (SQuAD v1.1 for English,
  character-level for languages written without spaces).
* Classification (XNLI): :func:`accuracy`, :func:`macro_f1`, :func:`confusion`, :func:`degenerate`.
* Multiple choice (XCOPA, XNLI by log-likelihood): :func:`choice_scores`.
* Cross-lingual consistency: :func:`agreement`, :func:`js_divergence`, :func:`mean_js_divergence`.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from xlsteer.errors import DataError, UsageError

__all__ = [
    "CHAR_LEVEL_LANGS",
    "DOT_THOUSANDS_LANGS",
    "extract_number",
    "canonical_number",
    "mgsm_exact_match",
    "normalize_answer",
    "squad_f1",
    "squad_em",
    "accuracy",
    "macro_f1",
    "confusion",
    "choice_scores",
    "degenerate",
    "agreement",
    "js_divergence",
    "mean_js_divergence",
]


def _base_lang(lang: str | None) -> str | None:
    """'zh-Hans' / 'zh_CN' / 'ZH' -> 'zh'. Kept local so metrics depend on nothing else."""
    if lang is None:
        return None
    if not isinstance(lang, str) or not lang.strip():
        raise UsageError(f"language code {lang!r} is not a string; pass an ISO 639-1 code such as 'en'")
    return lang.strip().lower().replace("_", "-").split("-")[0]


# --------------------------------------------------------------------------------------------
# MGSM: final-number extraction
# --------------------------------------------------------------------------------------------

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
    # Indian (lakh) grouping: 1,00,000 / 12,34,567.5
    r"\d{1,2}(?:,\d{2})+,\d{3}(?:\.\d+)?(?![\d])"
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


# --------------------------------------------------------------------------------------------
# XQuAD: SQuAD-style F1 / EM
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def _pair(pred: Sequence[Any], gold: Sequence[Any], what: str) -> tuple[list[Any], list[Any]]:
    p, g = list(pred), list(gold)
    if len(p) != len(g):
        raise DataError(f"{what}: {len(p)} predictions but {len(g)} gold labels; align them item by item")
    if not p:
        raise DataError(f"{what}: no items; evaluate at least one item")
    return p, g


def accuracy(pred: Sequence[Any], gold: Sequence[Any]) -> float:
    """Share of items whose prediction equals the gold label."""
    p, g = _pair(pred, gold, "accuracy")
    return float(np.mean([a == b for a, b in zip(p, g)]))


def _labels(gold: list[Any], labels: Sequence[Hashable] | None, what: str) -> list[Any]:
    if labels is None:
        return sorted(set(gold), key=repr)
    lab = list(labels)
    if len(set(lab)) != len(lab):
        raise UsageError(f"{what}: labels {lab!r} contain duplicates; list each label once")
    unknown = set(gold) - set(lab)
    if unknown:
        raise DataError(f"{what}: gold labels {sorted(unknown, key=repr)!r} are not in labels {lab!r}; add them")
    return lab


def confusion(pred: Sequence[Any], gold: Sequence[Any], labels: Sequence[Hashable] | None = None) -> np.ndarray:
    """Counts ``C[i, j]`` of items with gold ``labels[i]`` predicted as ``labels[j]`` (int64).

    Predictions outside ``labels`` (e.g. unparseable generations) are not in any column, so a
    row may sum to less than its gold count; they still count as errors in :func:`accuracy`
    and :func:`macro_f1`. ``labels=None`` uses the sorted gold labels.
    """
    p, g = _pair(pred, gold, "confusion")
    lab = _labels(g, labels, "confusion")
    index = {label: i for i, label in enumerate(lab)}
    mat = np.zeros((len(lab), len(lab)), dtype=np.int64)
    for a, b in zip(p, g):
        j = index.get(a)
        if j is not None:
            mat[index[b], j] += 1
    return mat


def macro_f1(pred: Sequence[Any], gold: Sequence[Any], labels: Sequence[Hashable] | None = None) -> float:
    """Unweighted mean over labels of per-label F1 = 2TP / (2TP + FP + FN).

    A label that is neither predicted nor gold has no defined F1 and is left out of the mean
    (so it neither helps nor hurts). A label predicted but never gold has F1 0. Predictions
    outside ``labels`` count as false negatives of their gold label. ``labels=None`` uses the
    labels that occur in ``gold``.
    """
    p, g = _pair(pred, gold, "macro_f1")
    lab = _labels(g, labels, "macro_f1")
    f1s = []
    for label in lab:
        tp = sum(1 for a, b in zip(p, g) if a == label and b == label)
        fp = sum(1 for a, b in zip(p, g) if a == label and b != label)
        fn = sum(1 for a, b in zip(p, g) if a != label and b == label)
        denom = 2 * tp + fp + fn
        if denom == 0:
            continue
        f1s.append(2 * tp / denom)
    return float(np.mean(f1s))


def degenerate(pred: Sequence[Any], threshold: float = 0.9) -> dict[str, Any]:
    """Flag a predictor that (nearly) always outputs one label, e.g. after over-steering.

    ``degenerate`` is True when the most frequent label's share is >= ``threshold``. Ties for
    the majority go to the label seen first.
    """
    p = list(pred)
    if not p:
        raise DataError("degenerate: no predictions; evaluate at least one item")
    if not 0.0 < threshold <= 1.0:
        raise UsageError(f"degenerate: threshold {threshold} must lie in (0, 1]; e.g. 0.9")
    label, count = Counter(p).most_common(1)[0]
    share = count / len(p)
    return {"degenerate": bool(share >= threshold), "majority_label": label, "majority_share": float(share)}


# --------------------------------------------------------------------------------------------
# Multiple choice by log-likelihood
# --------------------------------------------------------------------------------------------


def choice_scores(logprobs: Any, gold: Any) -> dict[str, np.ndarray]:
    """Per-item scores from choice log-probabilities (``n_items x n_choices``) and gold indices.

    Returns arrays of length n: ``pred`` (argmax; ties go to the lowest index, as in lm-eval),
    ``correct`` (pred == gold), ``margin`` (log-prob of gold minus the best wrong choice; > 0
    iff gold is the unique maximum) and ``p_correct`` (softmax over the choices, mass on gold).
    ``-inf`` log-probs are allowed, NaN is not.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    gd = np.asarray(gold)
    if lp.ndim != 2 or lp.shape[1] < 2:
        raise DataError(f"choice_scores: logprobs must be n_items x n_choices with >= 2 choices, got shape {lp.shape}")
    n, c = lp.shape
    if n == 0:
        raise DataError("choice_scores: no items; score at least one item")
    if gd.shape != (n,) or not np.issubdtype(gd.dtype, np.integer):
        raise DataError(f"choice_scores: gold must be {n} integer choice indices, got shape {gd.shape} dtype {gd.dtype}")
    if gd.min() < 0 or gd.max() >= c:
        raise DataError(f"choice_scores: gold indices must lie in 0..{c - 1}; fix the labels")
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise DataError("choice_scores: logprobs contain NaN or +inf; check the scoring run")
    if np.isneginf(lp).all(axis=1).any():
        raise DataError("choice_scores: an item has -inf log-prob for every choice; check the scoring run")
    rows = np.arange(n)
    pred = np.argmax(lp, axis=1)
    gold_lp = lp[rows, gd]
    wrong = lp.copy()
    wrong[rows, gd] = -np.inf
    margin = gold_lp - wrong.max(axis=1)
    mx = lp.max(axis=1, keepdims=True)
    logz = mx[:, 0] + np.log(np.exp(lp - mx).sum(axis=1))
    p_correct = np.exp(gold_lp - logz)
    return {"pred": pred, "correct": pred == gd, "margin": margin, "p_correct": p_correct}


# --------------------------------------------------------------------------------------------
# Cross-lingual consistency
# --------------------------------------------------------------------------------------------


def agreement(pred_a: Sequence[Any], pred_b: Sequence[Any]) -> float:
    """Share of items on which two prediction lists (e.g. two languages) agree."""
    a, b = _pair(pred_a, pred_b, "agreement")
    return float(np.mean([x == y for x, y in zip(a, b)]))


def _distributions(x: Any, what: str) -> np.ndarray:
    arr = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise DataError(f"{what}: expected rows of probabilities, got shape {np.shape(x)}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise DataError(f"{what}: probabilities must be finite and non-negative")
    sums = arr.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise DataError(f"{what}: a row sums to 0; each row must be a distribution over the choices")
    return arr / sums


def js_divergence(p: Any, q: Any) -> np.ndarray:
    """Per-row Jensen-Shannon divergence in bits (base 2), in [0, 1].

    Rows are renormalised to sum to 1 (so counts work too); 0 * log 0 = 0. Identical rows give
    0, rows with disjoint support give 1. A 1-D input is one row.
    """
    pp, qq = _distributions(p, "js_divergence p"), _distributions(q, "js_divergence q")
    if pp.shape != qq.shape:
        raise DataError(f"js_divergence: shapes {pp.shape} and {qq.shape} differ; align items and choices")
    m = 0.5 * (pp + qq)

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * (np.log2(a) - np.log2(m)), 0.0)
        return terms.sum(axis=1)

    return np.clip(0.5 * kl(pp) + 0.5 * kl(qq), 0.0, 1.0)


def mean_js_divergence(p: Any, q: Any) -> float:
    """Mean over items of :func:`js_divergence`."""
    return float(np.mean(js_divergence(p, q)))
