"""MGSM (grade-school math, 250 problems in 11 languages; gold = an integer).

Splits (METHODS.md 5): train = the 8 chain-of-thought exemplars (``mgsm_exemplars.json``,
ids "mgsm/exemplar/1".."8"), dev = items 0-49, test = items 50-249 (ids "mgsm/<line>").
Gold answers are written with thousands separators in the files ("2,125"); ``answer`` is the
int, ``fields["answer_text"]`` the original string.
"""

from __future__ import annotations

import os
import re

from ...errors import DataError
from ...validation import check_limit
from .base import Item, check_split, read_json, read_lines, resolve_lang, root_dir, take
from .spec import BaselineHints, FewShot, Metric, Scored, TaskSpec

NAME = "mgsm"
LANGS = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
SPLITS = ("train", "dev", "test")
RANGES = {"dev": range(0, 50), "test": range(50, 250)}
N_ITEMS = 250
N_EXEMPLARS = 8
EXEMPLARS_FILE = "mgsm/mgsm_exemplars.json"

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+|-?\d+")
_PREFIX = re.compile(r"^\s*([^:：\n]{1,40}?)\s*[:：]\s*")


def data_files(lang: str, split: str) -> list[str]:
    lang = resolve_lang(NAME, lang, LANGS)
    check_split(NAME, split, SPLITS)
    return [EXEMPLARS_FILE] if split == "train" else [f"mgsm/mgsm_{lang}.tsv"]


def parse_answer(text: str) -> int:
    """'2,125' -> 2125; DataError if the gold answer is not an integer."""
    s = text.strip()
    if not _NUMBER.fullmatch(s):
        raise ValueError(s)
    return int(s.replace(",", ""))


def _split_prefix(text: str) -> tuple[str, str]:
    """('Question', 'Roger has ...') from 'Question: Roger has ...'."""
    m = _PREFIX.match(text)
    if not m:
        return "", text
    return m.group(1), text[m.end():]


def load_exemplars(data_dir: str | os.PathLike | None, lang: str) -> list[Item]:
    """The 8 few-shot exemplars: fields question/cot (prefix removed), their prefixes, the raw text."""
    lang = resolve_lang(NAME, lang, LANGS)
    path = root_dir(data_dir) / EXEMPLARS_FILE
    d = read_json(path)
    try:
        ex = d["MGSM_EXEMPLARS"][lang]
        numbers = d["EXEMPLAR_NUMBER_ANSWERS"]
        equations = d["EXEMPLAR_EQUATION_SOLUTIONS"]
        keys = sorted(ex, key=int)
        if len(keys) != N_EXEMPLARS or len(numbers) != N_EXEMPLARS or len(equations) != N_EXEMPLARS:
            raise ValueError("count")
        items = []
        for k in keys:
            q, a = ex[k]["q"], ex[k]["a"]
            qp, qt = _split_prefix(q)
            ap, at = _split_prefix(a)
            i = int(k) - 1
            items.append(Item(
                id=f"mgsm/exemplar/{k}", lang=lang, split="train",
                fields={"question": qt, "cot": at, "question_prefix": qp, "answer_prefix": ap,
                        "question_raw": q, "cot_raw": a, "equation": equations[i]},
                answer=int(numbers[i]),
            ))
    except (KeyError, TypeError, ValueError, IndexError):
        raise DataError(
            f"file {path} is malformed (expected MGSM_EXEMPLARS[{lang}]['1'..'8'] with q/a and 8 answers); "
            "restore it from the shared data"
        ) from None
    return items


def load_items(data_dir: str | os.PathLike | None, lang: str, split: str, limit: int | None = None) -> list[Item]:
    """MGSM items of one language and split; fields: question, answer_text; answer: int."""
    lang = resolve_lang(NAME, lang, LANGS)
    check_split(NAME, split, SPLITS)
    check_limit(limit)
    if split == "train":
        return take(load_exemplars(data_dir, lang), limit)
    path = root_dir(data_dir) / f"mgsm/mgsm_{lang}.tsv"
    lines = read_lines(path)
    if len(lines) != N_ITEMS:
        raise DataError(f"file {path} has {len(lines)} lines, expected {N_ITEMS}; restore it from the shared data")
    items = []
    for i in RANGES[split]:
        parts = lines[i].split("\t")
        if len(parts) != 2:
            raise DataError(f"file {path} line {i + 1} has {len(parts)} tab-separated fields, expected 2 (question, answer)")
        try:
            ans = parse_answer(parts[1])
        except ValueError:
            raise DataError(f"file {path} line {i + 1}: answer {parts[1]!r} is not an integer") from None
        items.append(Item(id=f"mgsm/{i}", lang=lang, split=split,
                          fields={"question": parts[0], "answer_text": parts[1].strip()}, answer=ans))
    return take(items, limit)


# ---------------------------------------------------------------------------------------------
# the task


def _few_shot(template: object, lang: str, data_dir: str | os.PathLike | None) -> tuple[list[Item], str | None]:
    """The template's k exemplars: the 8 train exemplars in the item's language or a fixed one."""
    from ...data.langs import normalize_lang

    options = getattr(template, "options", {})
    if int(options.get("k", 0)) == 0:
        return [], None
    ex_lang = options.get("exemplar_lang", "same")
    ex_lang = lang if ex_lang == "same" else normalize_lang(ex_lang)
    return load_exemplars(data_dir, ex_lang), ex_lang


def _score(item: Item, text: str) -> Scored:
    from ..metrics_numeric import extract_number, mgsm_exact_match

    em = float(mgsm_exact_match(text, item.answer, item.lang))
    return Scored(prediction=extract_number(text, item.lang), correct=bool(em), scores={"em": em})


def _answer_text(item: Item, template: object) -> str:
    """The gold answer after the prompt: the chain of thought for CoT templates, else the number."""
    if getattr(template, "options", {}).get("style") == "cot" and "cot" in item.fields:
        return " " + item.fields["cot"].strip()
    return " " + str(item.answer)


def _spec() -> TaskSpec:
    from ..templates import TEMPLATES

    return TaskSpec(
        name=NAME, description="grade-school math word problems; exact match of the final number",
        langs=LANGS, splits={"train": "the 8 exemplars (mgsm_exemplars.json)", "dev": "items 0-49",
                             "test": "items 50-249"},
        load_items=load_items, data_files=data_files,
        templates=(TEMPLATES["mgsm-direct"], TEMPLATES["mgsm-cot"]),
        metrics=(Metric("em", "binary"),), main="em", tie_break=None, score=_score,
        few_shot=FewShot(_few_shot, (EXEMPLARS_FILE,)),
        baselines=BaselineHints(
            icl_split="train", icl_k=4, icl_separator="\n\n", train_split="train",
            train_note="MGSM has no training set: the 8 exemplars per language are the training data",
            answer_text=_answer_text, translate_fields=("question",),
            instructions=(
                "Solve the math word problem and answer with the final number only.",
                "Read the problem carefully, compute the result, and give the number.",
                "The problem may be in any language. Solve it as you would in English and answer with a number.",
            )),
    )


SPEC = _spec()
