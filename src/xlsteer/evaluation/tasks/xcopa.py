"""XCOPA (2-way causal commonsense choice, 11 languages; gold = 0 or 1).

Splits (METHODS.md 5): dev = upstream ``val`` (100 items), test = upstream ``test`` (500).
Ids are "xcopa/val/<idx>" and "xcopa/test/<idx>" (upstream split and ``idx``), identical in
every language.

``question`` (cause/effect) is wrong in some languages' files (th on half the items; tr, sw,
id, it on some; see shared/data/README.md), so ``fields["question"]`` is always taken from
the zh file by ``idx`` (zh agrees with the majority); the file's own value is kept in
``fields["question_file"]``.

English: ``lang="en"`` gives the Google-MT English translation (``data-gmt``) of the
Estonian items (:data:`EN_SOURCE`) as the English reference for the same ``idx``. Estonian
was chosen because its translations agree best with the other languages' translations
(mean token overlap, val and test) and its ``question`` field is consistent.
:func:`load_gmt_english` gives the translation of any language's items (translate-test).
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import DataError, LanguageError
from ...validation import check_limit
from .base import Item, check_split, read_jsonl, resolve_lang, root_dir, take
from .spec import BaselineHints, Metric, TaskSpec

NAME = "xcopa"
SOURCE_LANGS = ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh")
GMT_LANGS = tuple(x for x in SOURCE_LANGS if x != "qu")
LANGS = SOURCE_LANGS + ("en",)
SPLITS = ("dev", "test")
UPSTREAM = {"dev": "val", "test": "test"}
COUNTS = {"val": 100, "test": 500}
QUESTION_LANG = "zh"
EN_SOURCE = "et"
_FIELDS = ("premise", "choice1", "choice2", "question", "label", "idx")


def _rel(kind: str, lang: str, split: str) -> str:
    up = UPSTREAM[split]
    return f"xcopa/{kind}/{lang}/{up}.{lang}.jsonl"


def data_files(lang: str, split: str) -> list[str]:
    lang = resolve_lang(NAME, lang, LANGS)
    check_split(NAME, split, SPLITS)
    if lang == "en":
        return [_rel("data-gmt", EN_SOURCE, split), _rel("data", QUESTION_LANG, split)]
    files = [_rel("data", lang, split)]
    if lang != QUESTION_LANG:
        files.append(_rel("data", QUESTION_LANG, split))
    return files


def _read(path: Path, split: str) -> dict[int, dict]:
    """idx -> record, checked for fields and the expected count."""
    recs = read_jsonl(path)
    want = COUNTS[UPSTREAM[split]]
    if len(recs) != want:
        raise DataError(f"file {path} has {len(recs)} items, expected {want}; restore it from the shared data")
    out: dict[int, dict] = {}
    for n, r in enumerate(recs, 1):
        missing = [f for f in _FIELDS if f not in r]
        if missing:
            raise DataError(f"file {path} item {n} lacks field(s) {', '.join(missing)}; restore it from the shared data")
        if r["label"] not in (0, 1) or r["question"] not in ("cause", "effect"):
            raise DataError(f"file {path} item {n} has label {r['label']!r} / question {r['question']!r}; "
                            "expected 0/1 and cause/effect")
        out[int(r["idx"])] = r
    if len(out) != want:
        raise DataError(f"file {path} has duplicate idx values; restore it from the shared data")
    return out


def _items(recs: dict[int, dict], ref: dict[int, dict], lang: str, split: str, path: Path,
           extra: dict | None = None) -> list[Item]:
    if set(recs) != set(ref):
        raise DataError(f"misaligned data: {path} has other idx values than the {QUESTION_LANG} file")
    up = UPSTREAM[split]
    items = []
    for idx in sorted(recs):
        r, q = recs[idx], ref[idx]
        if r["label"] != q["label"]:
            raise DataError(f"misaligned data: {path} idx {idx} has label {r['label']}, {QUESTION_LANG} has {q['label']}")
        fields = {"premise": r["premise"], "choice1": r["choice1"], "choice2": r["choice2"],
                  "question": q["question"], "question_file": r["question"], "idx": idx,
                  "changed": bool(r.get("changed", False))}
        if extra:
            fields.update(extra)
        items.append(Item(id=f"xcopa/{up}/{idx}", lang=lang, split=split, fields=fields, answer=int(r["label"])))
    return items


def load_gmt_english(data_dir: str | os.PathLike | None, lang: str, split: str, limit: int | None = None) -> list[Item]:
    """Google-MT English translation of ``lang``'s items (translate-test); lang="en", ids as the source's."""
    src = resolve_lang(NAME, lang, LANGS)
    check_split(NAME, split, SPLITS)
    check_limit(limit)
    if src not in GMT_LANGS:
        raise LanguageError(f"xcopa data-gmt has no language {src!r}; available: {' '.join(GMT_LANGS)}")
    root = root_dir(data_dir)
    path = root / _rel("data-gmt", src, split)
    recs = _read(path, split)
    ref = _read(root / _rel("data", QUESTION_LANG, split), split)
    return take(_items(recs, ref, "en", split, path, {"source_lang": src}), limit)


def load_items(data_dir: str | os.PathLike | None, lang: str, split: str, limit: int | None = None) -> list[Item]:
    """XCOPA items; fields premise, choice1, choice2, question (from zh), question_file, idx; answer 0/1."""
    lang = resolve_lang(NAME, lang, LANGS)
    check_split(NAME, split, SPLITS)
    check_limit(limit)
    if lang == "en":
        return load_gmt_english(data_dir, EN_SOURCE, split, limit)
    root = root_dir(data_dir)
    path = root / _rel("data", lang, split)
    recs = _read(path, split)
    ref = recs if lang == QUESTION_LANG else _read(root / _rel("data", QUESTION_LANG, split), split)
    return take(_items(recs, ref, lang, split, path), limit)


# ---------------------------------------------------------------------------------------------
# the task


def _polish_translation(field: str, text: str) -> str:
    """The template drops the premise's final character (its full stop): give a translation one."""
    if field == "premise" and text and text[-1] not in ".!?。":
        return text + "."
    return text


def _spec() -> TaskSpec:
    from ..templates import TEMPLATES

    return TaskSpec(
        name=NAME, description="causal commonsense: the more plausible cause or effect of a premise (2 choices)",
        langs=LANGS, splits={"dev": "upstream val (100 items)", "test": "upstream test (500 items)"},
        load_items=load_items, data_files=data_files, templates=(TEMPLATES["xcopa"],),
        metrics=(Metric("acc", "binary"), Metric("acc_norm", "binary")), main="acc", tie_break="margin",
        baselines=BaselineHints(
            icl_split="dev", icl_k=4, icl_separator="\n", train_split="dev",
            train_note="XCOPA has no train split: the 100 dev (val) items per language are the training data",
            translate_fields=("premise", "choice1", "choice2"), polish_translation=_polish_translation,
            english_reference=load_gmt_english, english_reference_langs=GMT_LANGS,
            instructions=(
                "Complete the sentence with the most plausible cause or effect.",
                "Read the sentence and continue it in the way that makes the most sense.",
                "The following text may be in any language. Think about its meaning in English and complete it "
                "sensibly.",
            ), instruction_separator="\n"),
    )


SPEC = _spec()
