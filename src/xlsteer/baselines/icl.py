"""In-context learning baseline: k solved exemplars in front of every prompt.

Two variants (METHODS.md section 1, baseline "in-context learning"):

* ``icl-en``      the exemplars are in English (the anchor), whatever the item's language;
* ``icl-native``  the exemplars are in the item's own language.

Exemplars come from data that is never reported (METHODS.md section 5): the ``train`` split
where the task has one (MGSM: the 8 upstream exemplars; XNLI: items 200-1489), else ``dev``
(XCOPA val, XQuAD articles 0-4). They are drawn once with a fixed seed, by item id, so both
variants and every language see the *same* exemplars (parallel items), and the draw is
recorded. :func:`exemplar_pool` refuses test items outright (their split is checked and
their ids are checked against the test split's ids). When the evaluated split is the
exemplar split itself (e.g. XCOPA dev), an item never serves as its own exemplar: one spare
exemplar is drawn and used instead.

How an exemplar is shown: the task's own template renders it and its gold answer is appended,
exactly as the model would have to produce it (XCOPA: the correct continuation; XNLI: the label
digit; MGSM: the template's own exemplar format; XQuAD: the first gold answer). Demonstrations
are separated from each other and from the item by a blank line (XCOPA: a newline).

The prompt machinery here (:func:`wrap_template`) is shared by every prompt-level baseline
(prompt search, translate-test): it wraps a template of :mod:`xlsteer.evaluation.templates`
without changing its name or version (so runs stay comparable item by item with
``compare_runs``) and records what the baseline changed under ``options["baseline"]``, which
enters the result file and the engine's cache key.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any, Callable, Mapping, Sequence

from ..data.langs import normalize_lang
from ..errors import UsageError, XlsteerError
from ..evaluation.tasks import get_task, get_template
from ..evaluation.templates import Request, Template

# Where exemplars come from, how many and what separates them: each task's BaselineHints.
VARIANTS = ("en", "native")


class LeakError(XlsteerError):
    """A test item was about to be used for selection (exemplars, prompts, training)."""


# ---------------------------------------------------------------------------------------------
# the shared prompt machinery


def with_prefix(req: Request, prefix: str) -> Request:
    """``req`` with ``prefix`` in front of its context (choice) or prompt (label, generate)."""
    if not prefix:
        return req
    if req.kind == "choice" and req.contexts:  # partial scoring: every choice's context
        return dataclasses.replace(req, contexts=tuple(prefix + c for c in req.contexts))
    if req.kind == "choice":
        return dataclasses.replace(req, context=prefix + req.context)
    return dataclasses.replace(req, prompt=prefix + req.prompt)


def wrap_template(base: Template, render: Callable[[Template, Any, Sequence[Any]], Request],
                  info: Mapping[str, Any], **options: Any) -> Template:
    """``base`` with another renderer; same name and version, ``options["baseline"] = info``.

    ``render(t, item, exemplars)`` receives the wrapping template ``t`` (its options include any
    override the runner applied) and typically calls :func:`base_render`.
    """
    if base._render is None:
        raise UsageError(f"template '{base.name}' has no renderer to wrap")
    opts = {**base.options, **options, "baseline": dict(info)}
    return Template(base.name, base.task, base.version, base.kind,
                    f"{base.description} [{info.get('method', 'baseline')}]", opts, render)


def base_render(t: Template, item: Any, exemplars: Sequence[Any] = ()) -> Request:
    """Render with the renderer of the template that ``t`` wraps (its own task's renderer)."""
    inner = get_task(t.task).template(t.name)._render
    assert inner is not None
    return inner(t, item, exemplars)


def gold_text(task: str, req: Request, item: Any, template: Template | None = None) -> str:
    """What the model should produce after ``req`` for ``item``.

    Choice: the gold continuation (it starts with a space); label: the gold label token;
    generation: the task's ``answer_text`` (MGSM: " " + the number; XQuAD: " " + the first gold answer).
    """
    if req.kind == "choice" and req.contexts:  # partial scoring: the shared continuation
        return req.choices[0]
    if req.kind == "choice":
        return req.choices[int(item.answer)]
    if req.kind == "label":
        return req.labels[int(item.answer)]
    answer_text = get_task(task).baselines.answer_text
    if answer_text is None:
        raise UsageError(f"task {task!r} declares no answer_text, so its gold answers cannot be shown or trained on")
    return answer_text(item, template)


def demonstration(t: Template, item: Any) -> str:
    """One solved exemplar, rendered as the item would be and followed by its gold answer
    (label tasks: "Answer: 0", with the space a reader would write)."""
    req = base_render(t, item, ())
    ans = gold_text(t.task, req, item, t)
    if req.kind == "choice" and req.contexts:
        return req.contexts[int(item.answer)] + ans
    if req.kind == "choice":
        return req.context + ans
    if req.kind == "label":
        return req.prompt + " " + ans
    return req.prompt + ans


# ---------------------------------------------------------------------------------------------
# exemplars


def test_ids(task: str, lang: str, data_dir: str | os.PathLike | None) -> set[str]:
    """Ids of the task's test split (for the leak check)."""
    spec = get_task(task)
    if "test" not in spec.splits:
        return set()
    return {it.id for it in spec.load_items(data_dir, lang, "test")}


def check_no_test(items: Sequence[Any], task: str, data_dir: str | os.PathLike | None, what: str) -> None:
    """Raise LeakError if any item is a test item (by split and by id)."""
    bad = [it.id for it in items if it.split == "test"]
    langs = sorted({it.lang for it in items})
    if not bad:
        for lang in langs:
            ids = test_ids(task, lang, data_dir)
            bad = [it.id for it in items if it.lang == lang and it.id in ids]
            if bad:
                break
    if bad:
        raise LeakError(f"{what} would use test item(s) {', '.join(bad[:3])} of {task}; "
                        "selection may only use train or dev items (METHODS.md section 5)")


def exemplar_split(task: str) -> str:
    spec = get_task(task)
    split = spec.baselines.icl_split
    if split is None:
        raise UsageError(f"task {spec.name} declares no split to draw in-context exemplars from "
                         "(a train or dev split); it has no ICL baseline")
    if split == "test":
        raise LeakError(f"exemplars of {spec.name} would come from test")
    return split


def exemplar_pool(task: str, lang: str, data_dir: str | os.PathLike | None = None) -> list[Any]:
    """Every item exemplars may be drawn from, in ``lang`` (train, else dev; never test)."""
    task = get_task(task).name
    split = exemplar_split(task)
    items = get_task(task).load_items(data_dir, normalize_lang(lang), split)
    check_no_test(items, task, data_dir, "in-context exemplars")
    return items


def select_exemplar_ids(task: str, k: int, seed: int = 0, data_dir: str | os.PathLike | None = None) -> list[str]:
    """``k + 1`` exemplar ids drawn with ``seed`` (one spare, for items that are exemplars themselves).

    Drawn from the English pool; ids are identical in every language, so the same problems
    serve every language and both variants.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise UsageError(f"k (number of exemplars) must be a positive integer, got {k!r}")
    pool = exemplar_pool(task, "en", data_dir)
    if k > len(pool):
        raise UsageError(f"{task} has {len(pool)} exemplar candidates; choose k <= {len(pool)}")
    ids = [it.id for it in pool]
    rng = random.Random(seed)
    return rng.sample(ids, min(k + 1, len(ids)))


def exemplars_for(item_id: str, chosen: Sequence[str], by_id: Mapping[str, Any], k: int) -> list[Any]:
    """The first ``k`` chosen exemplars that are not the item itself."""
    out = [by_id[i] for i in chosen if i != item_id][:k]
    return out


def icl_template(task: str, variant: str = "en", k: int | None = None, seed: int = 0,
                 data_dir: str | os.PathLike | None = None, template: str | Template | None = None,
                 langs: Sequence[str] | None = None) -> Template:
    """A template that puts ``k`` exemplars (``variant`` "en" or "native") before every item.

    ``langs``: languages to preload exemplars for (others are loaded on first use).
    """
    spec = get_task(task)
    task = spec.name
    if variant not in VARIANTS:
        raise UsageError(f"unknown ICL variant {variant!r}; choose en or native")
    k = spec.baselines.icl_k if k is None else k
    base = get_template(task, template)
    chosen = select_exemplar_ids(task, k, seed, data_dir)
    split = exemplar_split(task)
    pools: dict[str, dict[str, Any]] = {}

    def pool(lang: str) -> dict[str, Any]:
        if lang not in pools:
            pools[lang] = {it.id: it for it in exemplar_pool(task, lang, data_dir)}
        return pools[lang]

    for lang in langs or ():
        pool("en" if variant == "en" else normalize_lang(lang))
    sep = spec.baselines.icl_separator
    info = {"method": f"icl-{variant}", "k": k, "seed": seed, "exemplar_split": split,
            "exemplar_ids": list(chosen[:k]), "spare_id": chosen[k] if len(chosen) > k else None,
            "exemplar_lang": "en" if variant == "en" else "same", "separator": sep}

    if spec.few_shot is not None:
        # the template's own exemplar mechanism (MGSM): the runner passes the exemplars in the
        # exemplar language; we pick the seeded k of them (by id) in the drawn order
        def render(t: Template, item: Any, exemplars: Sequence[Any]) -> Request:
            by_id = {ex.id: ex for ex in exemplars}
            if not by_id:
                by_id = pool("en" if variant == "en" else item.lang)
            shots = exemplars_for(item.id, chosen, by_id, k)
            if any(s.split == "test" for s in shots):  # cannot happen: the pool is checked
                raise LeakError(f"in-context exemplars for {item.id} include a test item")
            return base_render(t, item, shots)

        return wrap_template(base, render, info, k=k, exemplar_lang="en" if variant == "en" else "same")

    drawn: dict[str, list[str]] = {}

    def chosen_in(lang: str) -> list[str]:
        """The exemplar ids of ``lang``: the English draw where items are parallel, else a draw of its own."""
        if spec.parallel or lang == "en":
            return chosen
        if lang not in drawn:
            ids = list(pool(lang))
            if k > len(ids):
                raise UsageError(f"{task} has {len(ids)} exemplar candidates in {lang}; choose k <= {len(ids)}")
            drawn[lang] = random.Random(seed).sample(ids, min(k + 1, len(ids)))
        return drawn[lang]

    def render(t: Template, item: Any, exemplars: Sequence[Any]) -> Request:
        lang = "en" if variant == "en" else item.lang
        shots = exemplars_for(item.id, chosen_in(lang), pool(lang), k)
        if any(s.split == "test" for s in shots):  # cannot happen: the pool is checked
            raise LeakError(f"in-context exemplars for {item.id} include a test item")
        prefix = "".join(demonstration(t, s) + sep for s in shots)
        return with_prefix(base_render(t, item, ()), prefix)

    return wrap_template(base, render, info)


def prefix_tokens(lm: Any, text: str) -> int:
    """Tokens ``text`` adds to a prompt (no special tokens)."""
    if not text:
        return 0
    return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def extra_tokens_per_item(lm: Any, tpl: Template, items: Sequence[Any],
                          data_dir: str | os.PathLike | None = None) -> float:
    """Mean number of prompt tokens ``tpl`` adds over the task's plain zero-shot template."""
    if not items:
        return 0.0
    base = get_template(tpl.task, tpl.name)
    few_shot = get_task(tpl.task).few_shot is not None and int(tpl.options.get("k", 0)) > 0
    total = 0
    for it in items:
        ex: list[Any] = []
        if few_shot:
            ex = exemplar_pool(tpl.task, "en" if tpl.options.get("exemplar_lang") == "en" else it.lang, data_dir)
        a, b = tpl.render(it, ex), base.render(it, ())
        ta = a.context if a.kind == "choice" else a.prompt
        tb = b.context if b.kind == "choice" else b.prompt
        total += prefix_tokens(lm, ta) - prefix_tokens(lm, tb)
    return total / len(items)


def run_icl(lm: Any, task: str, langs: Sequence[str], variant: str = "en", k: int | None = None,
            cfg: Any = None, **settings: Any) -> dict[str, Any]:
    """Evaluate ``lm`` with ``k`` exemplars (``variant`` en / native) as ``cfg`` (an EvalConfig;
    keyword ``settings`` override its fields) says; the exemplars are drawn with its seed. A
    runner result."""
    from ..evaluation.config import EvalConfig
    from ..evaluation.runner import run_task

    cfg = EvalConfig.of(cfg, **settings)
    tpl = icl_template(task, variant, k, cfg.seed, cfg.data_dir, cfg.template, langs)
    return run_task(lm, task, langs, None, cfg.replace(template=tpl))
