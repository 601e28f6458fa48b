"""XQuAD (extractive QA, 12 languages; 48 articles, 240 paragraphs, 1,190 questions).

Splits (METHODS.md 5), by article: dev = articles 0-4, test = articles 10-47. Articles 5-9
are reserved for parallel statistics and are exposed only as parallel text
(:func:`xlsteer.data.corpora.load_xquad_paragraphs`), never as items. One item per question;
ids "xquad/<question id>" (the question ids are identical across languages).
Fields: context, question, answers (list of {"text", "answer_start"}), qid, title, article,
paragraph; ``answer`` is the list of gold answer texts. A leading U+FEFF (byte-order mark) in a
context is removed and the ``answer_start`` offsets shifted to match.
"""

from __future__ import annotations

import os

from ...errors import DataError
from ...validation import check_limit
from .base import Item, check_split, read_json, resolve_lang, root_dir, take
from .spec import BaselineHints, Metric, Scored, TaskSpec

NAME = "xquad"
LANGS = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
SPLITS = ("dev", "test")
ARTICLES = {"dev": range(0, 5), "test": range(10, 48)}
RESERVED_ARTICLES = range(5, 10)
N_ARTICLES = 48


def strip_bom(context: str) -> tuple[str, int]:
    """Drop leading U+FEFF (some contexts in ar/de/el/es/hi/ru/th/tr/vi/zh start with one); returns the shift."""
    stripped = context.lstrip("\ufeff")
    return stripped, len(context) - len(stripped)


def data_files(lang: str, split: str) -> list[str]:
    lang = resolve_lang(NAME, lang, LANGS)
    check_split(NAME, split, SPLITS)
    return [f"xquad/xquad.{lang}.json"]


def load_items(data_dir: str | os.PathLike | None, lang: str, split: str, limit: int | None = None) -> list[Item]:
    """XQuAD questions of one language and split, in file order."""
    lang = resolve_lang(NAME, lang, LANGS)
    check_split(NAME, split, SPLITS)
    check_limit(limit)
    path = root_dir(data_dir) / f"xquad/xquad.{lang}.json"
    d = read_json(path)
    try:
        data = d["data"]
        if len(data) != N_ARTICLES:
            raise DataError(f"file {path} has {len(data)} articles, expected {N_ARTICLES}; restore it from the shared data")
        items = []
        for a in ARTICLES[split]:
            art = data[a]
            for p, para in enumerate(art["paragraphs"]):
                ctx, shift = strip_bom(para["context"])
                for qa in para["qas"]:
                    answers = [{"text": x["text"], "answer_start": int(x["answer_start"]) - shift} for x in qa["answers"]]
                    if not answers:
                        raise DataError(f"file {path}: question {qa['id']} has no answers; restore it from the shared data")
                    for x in answers:
                        if x["answer_start"] < 0 or not ctx.startswith(x["text"], x["answer_start"]):
                            raise DataError(f"file {path}: answer_start of question {qa['id']} does not point at its "
                                            "answer text; restore the file from the shared data")
                    items.append(Item(
                        id=f"xquad/{qa['id']}", lang=lang, split=split,
                        fields={"context": ctx, "question": qa["question"], "answers": answers, "qid": qa["id"],
                                "title": art.get("title", ""), "article": a, "paragraph": p},
                        answer=[x["text"] for x in answers],
                    ))
    except (KeyError, TypeError, ValueError):
        raise DataError(f"file {path} is not SQuAD v1.1 JSON (data/paragraphs/qas/answers); restore it from the shared data") from None
    return take(items, limit)


# ---------------------------------------------------------------------------------------------
# the task


def _score(item: Item, text: str) -> Scored:
    from ..metrics_text import squad_em, squad_f1

    pred = text.strip()
    f1 = float(squad_f1(pred, item.answer, item.lang))
    em = float(squad_em(pred, item.answer, item.lang))
    return Scored(prediction=pred, correct=bool(em), scores={"f1": f1, "em": em})


def _answer_text(item: Item, template: object) -> str:
    return " " + str(item.answer[0])


def _spec() -> TaskSpec:
    from ..templates import TEMPLATES

    return TaskSpec(
        name=NAME, description="extractive question answering over a paragraph (SQuAD F1 / EM)",
        langs=LANGS, splits={"dev": "articles 0-4", "test": "articles 10-47 (5-9 are parallel text for fitting)"},
        load_items=load_items, data_files=data_files, templates=(TEMPLATES["xquad"],),
        metrics=(Metric("f1", "continuous"), Metric("em", "binary")), main="f1", tie_break="em",
        score=_score, comparable_predictions=False,  # the answers are text in each language
        baselines=BaselineHints(
            icl_split="dev", icl_k=2, icl_separator="\n\n", train_split="dev",
            train_note="XQuAD has no train split: the dev articles 0-4 are the training data",
            answer_text=_answer_text,
            translate_unsupported="translate-test on XQuAD needs the English answer span projected back onto the "
                                  "source-language context (the gold answers are spans of it); xlsteer does not "
                                  "implement answer projection",
            instructions=(
                "Answer the question with a short phrase copied from the context.",
                "Find the answer to the question in the context and write it exactly as it appears.",
                "The text may be in any language. Answer with the exact words from the context.",
            )),
    )


SPEC = _spec()
