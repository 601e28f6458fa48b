"""lm-eval documents as xlsteer items: lm-eval's own requests per document, and scoring of
generated texts through the task's own filters and ``process_results``.

See :mod:`.tasks` for what is built and why; everything lm-eval or ``datasets`` prints while
doing it is kept off the terminal (:func:`.harness.quiet`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..errors import DataError
from ..evaluation.tasks.base import Item
from ..evaluation.tasks.spec import Scored
from ..evaluation.templates import Request
from . import harness
from .config import metric_key
from .harness import one_line, quiet

#: lm-eval's default few-shot seed (``simple_evaluate(fewshot_random_seed=1234)``).
FEWSHOT_SEED = 1234


class Docs:
    """The loaded lm-eval tasks of every language, their documents and rendered items (cached).

    ``splits``: per language, xlsteer split -> that task's lm-eval split (languages may differ)."""

    def __init__(self, name: str, tasks: dict[str, Any], task_names: dict[str, str],
                 splits: dict[str, dict[str, str]]):
        self.name, self.tasks, self.task_names, self.splits = name, tasks, task_names, splits
        self._docs: dict[tuple[str, str], list] = {}
        self._items: dict[tuple[str, str], list] = {}

    def docs(self, lang: str, split: str) -> list:
        key = (lang, split)
        if key not in self._docs:
            task = self.tasks[lang]
            fn = {"test": task.test_docs if task.config.test_split else task.validation_docs,
                  "dev": task.validation_docs, "train": task.training_docs}[split]
            with quiet():
                try:
                    self._docs[key] = list(fn())
                except Exception as e:  # lm-eval/datasets raise anything; the user needs one line
                    raise DataError(f"lm-eval task {self.task_names[lang]} could not load its "
                                    f"{self.splits[lang][split]} documents: {one_line(e)}; check the task's "
                                    "process_docs") from None
        return self._docs[key]

    def check_loaded(self) -> None:
        """Every split of every language holds documents (languages may hold different numbers)."""
        for lang, splits in self.splits.items():
            for split, lm_split in splits.items():
                if not self.docs(lang, split):
                    raise DataError(f"lm-eval task {self.task_names[lang]} holds no {lm_split} documents; check its "
                                    "data files")

    def doc_ids(self, lang: str, split: str) -> list[str] | None:
        """The documents' own ids (an ``id`` field, unique in the split), else None (ids by position)."""
        ids = [doc.get("id") if isinstance(doc, dict) else None for doc in self.docs(lang, split)]
        if not ids or any(isinstance(i, bool) or not isinstance(i, (str, int)) or str(i).strip() == "" for i in ids):
            return None
        text = [str(i).strip() for i in ids]
        return text if len(set(text)) == len(text) else None

    def pairing(self, declared: bool | None) -> tuple[str, str]:
        """(pairing, why): ``id`` when declared parallel, or when every document carries an ``id`` and
        every language holds the same ids in each split it has; else ``none``."""
        if declared is False:
            return "none", "declared not parallel"
        if declared:
            return "id", "declared parallel: documents with the same id (else the same position) are the same item"
        for split in {s for splits in self.splits.values() for s in splits}:
            langs = [lang for lang, splits in self.splits.items() if split in splits]
            ids = [self.doc_ids(lang, split) for lang in langs]
            if any(i is None for i in ids):
                return "none", ("not parallel: the documents carry no 'id' field (pass --task-parallel if document i "
                                "of every language is the same item)")
            if any(set(i) != set(ids[0]) for i in ids):  # type: ignore[arg-type]
                return "none", f"not parallel: the languages hold other {split} document ids"
        return "id", "parallel: every language holds the same document ids"

    def items(self, lang: str, split: str, limit: int | None) -> list:
        """Items 0..limit-1 of a split, rendered from the first document with a fresh few-shot
        seed (so the prompts are lm-eval's, whatever the limit)."""
        docs = self.docs(lang, split)
        n = len(docs) if limit is None else min(limit, len(docs))
        key = (lang, split)
        if len(self._items.get(key, ())) < n:
            self._items[key] = self._build_items(lang, split, docs[:n])
        return self._items[key][:n]

    def _build_items(self, lang: str, split: str, docs: list) -> list:
        task, tname, lm_split = self.tasks[lang], self.task_names[lang], self.splits[lang][split]
        shots = int(task.config.num_fewshot or 0)
        own_pool = shots > 0 and harness.fewshot_pool(task) == lm_split
        ids = self.doc_ids(lang, split) or [str(i) for i in range(len(self.docs(lang, split)))]
        out = []
        with quiet():
            task.set_fewshot_seed(FEWSHOT_SEED)
            for i, doc in enumerate(docs):
                try:
                    with harness.excluding_from_fewshot(task, doc) if own_pool else contextlib.nullcontext():
                        fields, answer = _request_fields(task, doc, i, shots)
                except DataError:
                    raise
                except Exception as e:  # the task's own functions: jinja, KeyError, ...
                    raise DataError(f"lm-eval task {tname} could not build the request of {lm_split} "
                                    f"document {i}: {one_line(e)}; check its doc_to_text/doc_to_choice/"
                                    "doc_to_target") from None
                out.append(Item(id=f"{self.name}/{split}/{ids[i]}", lang=lang, split=split, fields=fields,
                                answer=answer))
        return out


def _gold(task: Any, doc: dict, choices: list, multi_input: bool) -> int:
    gold = task.doc_to_text(doc) if multi_input else task.doc_to_target(doc)
    if isinstance(gold, list):
        raise DataError(f"lm-eval task {task.config.task} gives several gold answers per document; xlsteer scores "
                        "one gold choice per item: make doc_to_target return one")
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -1
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DataError(f"lm-eval task {task.config.task}: gold {gold!r} is not one of the {len(choices)} choices; "
                        "fix doc_to_target")
    return gold


def _request_fields(task: Any, doc: dict, index: int, shots: int) -> tuple[dict, Any]:
    """lm-eval's own request of one document, as item fields (and the gold answer)."""
    ctx = task.fewshot_context(doc, num_fewshot=shots, gen_prefix=task.doc_to_prefix(doc))
    insts = task.construct_requests(doc=doc, ctx=ctx, metadata=(task.config.task, index, 1))
    insts = insts if isinstance(insts, list) else [insts]
    fields: dict[str, Any] = {"doc": doc}
    kind = task.OUTPUT_TYPE
    if kind == "multiple_choice":
        choices = task.doc_to_choice(doc)
        multi = bool(task.multiple_input)
        pairs = [inst.arguments for inst in insts[:len(choices)]]  # acc_mutual_info appends more
        gold = _gold(task, doc, choices, multi)
        if multi:
            fields.update(contexts=[c for c, _ in pairs], continuations=[pairs[0][1]], target=choices[gold])
        else:
            fields.update(context=pairs[0][0], continuations=[c for _, c in pairs], target=choices[gold])
        return fields, gold
    if kind == "loglikelihood":
        context, cont = insts[0].arguments[:2]
        fields.update(context=context, continuations=[cont], target=cont)
        return fields, 0
    context, gen = insts[0].arguments[:2]
    gen = harness.generation_settings(dict(gen or {}))
    target = task.doc_to_target(doc)
    if task.config.doc_to_choice is not None and isinstance(target, int):
        target = task.doc_to_choice(doc)[target]
    fields.update(context=context, until=[str(u) for u in gen.get("until") or []],
                  max_gen_toks=int(gen["max_gen_toks"]), target=target)
    return fields, target


def render(t: Any, item: Any, exemplars: Any = ()) -> Any:
    """The request lm-eval built for the item's document (fields made by the loader)."""
    f = item.fields
    if t.kind == "generate":
        limit = t.options.get("max_new_tokens") or f["max_gen_toks"]  # the option: --max-new-tokens
        return Request(kind="generate", prompt=f["context"], max_new_tokens=int(limit), stop=tuple(f["until"]))
    if f.get("contexts"):
        return Request(kind="choice", contexts=tuple(f["contexts"]), choices=tuple(f["continuations"]))
    return Request(kind="choice", context=f["context"], choices=tuple(f["continuations"]))


def _number(value: Any, metric: str, task: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"lm-eval task {task}: process_results gave {metric}={value!r}, not one number per item; "
                        "xlsteer reports per-item metrics only") from None
    return out


def score(docs: Docs, metrics: tuple[Any, ...], item: Any, text: str) -> Any:
    """The task's own filters and process_results on one generated text (see the module doc)."""
    task, tname = docs.tasks[item.lang], docs.task_names[item.lang]
    doc = item.fields["doc"]
    wanted = {m.name for m in metrics}
    filters = harness.filter_names(task)
    values: dict[str, float] = {}
    prediction: Any = None
    with quiet():
        for flt, out, results in harness.filtered_results(task, doc, text):
            prediction = out if prediction is None else prediction
            for metric, value in results.items():
                key = metric_key(metric, flt, filters)
                if key in wanted:
                    values[key] = _number(value, key, tname)
    missing = sorted(wanted - set(values))
    if missing:
        raise DataError(f"lm-eval task {tname}: process_results gave no {missing[0]}; fix its metric_list")
    binary = [m.name for m in metrics if m.kind == "binary"]
    correct = values[binary[0]] >= 1.0 if binary else values[metrics[0].name] > 0
    return Scored(prediction, bool(correct), values)


def answer_text(item: Any, template: Any = None) -> str:
    return str(item.fields["target"])
