"""XNLI (3-way NLI, 15 languages; labelled dev set only, 2,490 pairs; CC BY-NC 4.0).

Splits (METHODS.md 5), by line position of the dev file: train = items 200-1489, dev = items
0-199 (the CLAS paper tunes alpha on 200), test = items 1490-2489. Ids "xnli/<line>".
The upstream test labels are not available, so "test" here is a held-out part of dev: report
it as such. Gold: entailment 0, neutral 1, contradiction 2.
"""

from __future__ import annotations

import os

from ...errors import DataError
from ...validation import check_limit
from .base import Item, check_split, read_lines, resolve_lang, root_dir, take
from .spec import BaselineHints, Metric, TaskSpec

NAME = "xnli"
LANGS = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
SPLITS = ("train", "dev", "test")
RANGES = {"train": range(200, 1490), "dev": range(0, 200), "test": range(1490, 2490)}
N_ITEMS = 2490
LABELS = ("entailment", "neutral", "contradiction")
LABEL_IDS = {name: i for i, name in enumerate(LABELS)}


def data_files(lang: str, split: str) -> list[str]:
    lang = resolve_lang(NAME, lang, LANGS)
    check_split(NAME, split, SPLITS)
    return [f"xnli/dev-{lang}.tsv"]


def load_items(data_dir: str | os.PathLike | None, lang: str, split: str, limit: int | None = None) -> list[Item]:
    """XNLI items; fields premise, hypothesis, label_name; answer 0/1/2."""
    lang = resolve_lang(NAME, lang, LANGS)
    check_split(NAME, split, SPLITS)
    check_limit(limit)
    path = root_dir(data_dir) / f"xnli/dev-{lang}.tsv"
    lines = read_lines(path)
    if len(lines) != N_ITEMS:
        raise DataError(f"file {path} has {len(lines)} lines, expected {N_ITEMS}; restore it from the shared data")
    items = []
    for i in RANGES[split]:
        parts = lines[i].split("\t")
        if len(parts) != 3:
            raise DataError(f"file {path} line {i + 1} has {len(parts)} tab-separated fields, "
                            "expected 3 (premise, hypothesis, label)")
        label = parts[2].strip()
        if label not in LABEL_IDS:
            raise DataError(f"file {path} line {i + 1}: label {label!r} is not one of {', '.join(LABELS)}")
        items.append(Item(id=f"xnli/{i}", lang=lang, split=split,
                          fields={"premise": parts[0], "hypothesis": parts[1], "label_name": label},
                          answer=LABEL_IDS[label]))
    return take(items, limit)


def _spec() -> TaskSpec:
    from ..templates import TEMPLATES

    return TaskSpec(
        name=NAME, description="natural language inference (entailment / neutral / contradiction)",
        langs=LANGS, splits={"train": "dev file items 200-1489", "dev": "dev file items 0-199",
                             "test": "dev file items 1490-2489 (held out; the upstream test labels are not used)"},
        load_items=load_items, data_files=data_files, templates=(TEMPLATES["xnli"],),
        metrics=(Metric("acc", "binary"), Metric("macro_f1", "macro_f1", n_labels=len(LABELS))),
        main="acc", tie_break="margin",
        baselines=BaselineHints(
            icl_split="train", icl_k=4, icl_separator="\n\n", train_split="train",
            train_note="XNLI train = items 200-1489 of the labelled dev file (METHODS.md section 5)",
            translate_fields=("premise", "hypothesis"),
            instructions=(
                "Decide whether the premise entails the hypothesis (0), is neutral to it (1), or contradicts it (2).",
                "Read both sentences carefully and answer with the number of the correct relation.",
                "The sentences may be in any language. Understand them as if they were in English, then answer "
                "0, 1 or 2.",
            )),
    )


SPEC = _spec()
