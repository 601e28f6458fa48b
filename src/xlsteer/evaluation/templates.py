"""Versioned prompt templates: how an :class:`~xlsteer.evaluation.tasks.base.Item` becomes model input.

Why versioned: a prompt is part of what a score means. Every template has a ``version``
string that enters the result file and the engine's cache key, so changing a prompt can never
silently reuse cached scores made with the old one (bump ``version`` whenever the rendered text
of any item would change).

Three kinds of request:

``choice``    (context, [continuation, ...]) scored by summed log-likelihood (XCOPA).
``label``     a prompt whose next token is one of a few label tokens (XNLI: "0"/"1"/"2").
``generate``  a prompt, generation (greedy unless the request's ``sampling`` says otherwise), stop
              sequences (MGSM, XQuAD).

Templates:

``xcopa``      lm-eval's XCOPA format (``lm_eval/tasks/xcopa/utils.py``, lm-eval 0.4.x): the premise
               without its final character (the full stop) + " " + the connector for the item's
               cause/effect question *in the item's own language*; continuations are " " + the
               choice with its first character lower-cased. English uses lm-eval's COPA
               connectors ("because"/"therefore"). ``question`` comes from the loader, which takes
               it from a language whose field is consistent (see tasks/xcopa.py).
``xnli``       the CLAS format: premise, hypothesis, the options "0: entailment 1: neutral
               2: contradiction", ending with "Answer:"; the prediction is the argmax over the
               next-token log-probs of "0", "1", "2". Calibration (optional, in the runner)
               subtracts the label log-probs of the content-free input (premise and hypothesis
               "N/A", :meth:`Template.content_free`).
``mgsm-direct`` "Question: ...\\nAnswer:" (k exemplars give their final number).
``mgsm-cot``   "Question: ...\\nStep-by-step answer:" (k exemplars give their chain of thought).
               Exemplars are the 8 MGSM train exemplars, in the item's language by default
               (``exemplar_lang="same"``) or in one fixed language; k and the exemplar language
               are recorded in :meth:`Template.describe`.
``xquad``      "Context: ...\\nQuestion: ...\\nAnswer:", greedy, at most 32 new tokens, stop at a newline.

A template that needs an item field the item lacks raises :class:`~xlsteer.errors.UsageError`
naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

from ..errors import LanguageError, UsageError
from .sampling import GREEDY, Sampling

Kind = Literal["choice", "label", "generate"]

#: lm-eval's XCOPA connectors (lm_eval/tasks/xcopa/utils.py) plus its COPA English connectors
#: (lm_eval/tasks/super_glue/copa/utils.py). tests/test_templates.py checks them against the
#: installed lm-eval when it is there.
XCOPA_CONNECTORS: dict[str, dict[str, str]] = {
    "en": {"cause": "because", "effect": "therefore"},
    "et": {"cause": "sest", "effect": "seetõttu"},
    "ht": {"cause": "poukisa", "effect": "donk sa"},
    "id": {"cause": "karena", "effect": "maka"},
    "it": {"cause": "perché", "effect": "quindi"},
    "qu": {"cause": "imataq", "effect": "chaymi"},
    "sw": {"cause": "kwa sababu", "effect": "kwa hiyo"},
    "ta": {"cause": "காரணமாக", "effect": "எனவே"},
    "th": {"cause": "เพราะ", "effect": "ดังนั้น"},
    "tr": {"cause": "çünkü", "effect": "bu yüzden"},
    "vi": {"cause": "bởi vì", "effect": "vì vậy"},
    "zh": {"cause": "因为", "effect": "所以"},
}

XNLI_LABELS: tuple[str, ...] = ("0", "1", "2")
XNLI_LABEL_NAMES: tuple[str, ...] = ("entailment", "neutral", "contradiction")
MGSM_MAX_EXEMPLARS = 8


@dataclass(frozen=True)
class Request:
    """What a template produces for one item (only the fields of its kind are set)."""

    kind: Kind
    context: str = ""
    choices: tuple[str, ...] = ()
    prompt: str = ""
    labels: tuple[str, ...] = ()
    max_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    #: "Multiple input" choice (Winograd-style): one context per choice, one shared continuation
    #: ``choices[0]``; choice i is scored as log P(choices[0] | contexts[i]).
    contexts: tuple[str, ...] = ()
    #: A conversation ((role, text), ...) for the model's chat template instead of ``prompt``
    #: (generate requests; the scorer renders it with the tokenizer, see scoring.prompt_text).
    messages: tuple[tuple[str, str], ...] = ()
    #: How a ``generate`` request is decoded (default greedy); ``EvalConfig.sampling`` may change it.
    sampling: Sampling = GREEDY


def _field(item: Any, name: str, template: str) -> Any:
    fields = getattr(item, "fields", None)
    if not isinstance(fields, Mapping) or name not in fields or fields[name] is None:
        raise UsageError(
            f"template '{template}' needs the item field '{name}', which item "
            f"{getattr(item, 'id', '?')!r} lacks; use a template made for this task"
        )
    return fields[name]


def _text(item: Any, name: str, template: str) -> str:
    value = _field(item, name, template)
    if not isinstance(value, str):
        raise UsageError(f"template '{template}': item field '{name}' must be text, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Template:
    """A named, versioned prompt format for one task."""

    name: str
    task: str
    version: str
    kind: Kind
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)
    _render: Callable[["Template", Any, Sequence[Any]], Request] | None = None
    #: The text fields a content-free (calibration) input sets to "N/A" (label templates).
    content_free_fields: tuple[str, ...] = ()

    def render(self, item: Any, exemplars: Sequence[Any] = ()) -> Request:
        """The request for ``item`` (``exemplars``: few-shot items, only used by MGSM)."""
        assert self._render is not None
        return self._render(self, item, exemplars)

    def with_options(self, **options: Any) -> "Template":
        """A copy with options changed (checked); options are part of the cache key."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise UsageError(
                f"template '{self.name}' has no option(s) {', '.join(unknown)}; "
                f"it has {', '.join(sorted(self.options)) or 'none'}"
            )
        merged = {**self.options, **{k: v for k, v in options.items() if v is not None}}
        _check_options(self.name, merged)
        return dataclasses.replace(self, options=merged)

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity of the template (name, version, options): goes into results and cache keys."""
        return {"name": self.name, "task": self.task, "version": self.version, "kind": self.kind,
                "options": dict(self.options)}

    def content_free(self, lang: str) -> Request:
        """Calibration input: the same prompt with every text field "N/A" (label templates)."""
        if self.kind != "label" or not self.content_free_fields:
            raise UsageError(f"calibration is only defined for label templates with content-free fields, "
                             f"not '{self.name}'")
        from .tasks.base import Item

        item = Item(id="content-free", lang=lang, split="none",
                    fields={f: "N/A" for f in self.content_free_fields}, answer=0)
        return self.render(item)


def _check_options(name: str, opts: Mapping[str, Any]) -> None:
    if "k" in opts:
        k = opts["k"]
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MGSM_MAX_EXEMPLARS:
            raise UsageError(f"template '{name}': k must be an integer 0..{MGSM_MAX_EXEMPLARS}, got {k!r}")
    if "max_new_tokens" in opts:
        m = opts["max_new_tokens"]
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise UsageError(f"template '{name}': max_new_tokens must be a positive integer, got {m!r}")
    if "exemplar_lang" in opts and not isinstance(opts["exemplar_lang"], str):
        raise UsageError(f"template '{name}': exemplar_lang must be 'same' or a language code")


# ---- renderers --------------------------------------------------------------------------------


def _xcopa(t: Template, item: Any, exemplars: Sequence[Any]) -> Request:
    premise = _text(item, "premise", t.name)
    c1 = _text(item, "choice1", t.name)
    c2 = _text(item, "choice2", t.name)
    question = _text(item, "question", t.name)
    conns = XCOPA_CONNECTORS.get(item.lang)
    if conns is None:
        raise LanguageError(
            f"template '{t.name}' has no connectors for language '{item.lang}'; "
            f"it has {', '.join(sorted(XCOPA_CONNECTORS))}"
        )
    if question not in conns:
        raise UsageError(f"template '{t.name}': item {item.id} has question {question!r}; expected cause or effect")
    # lm-eval: doc["premise"].strip()[:-1] + f" {connector}"; target_delimiter " "; convert_choice
    context = premise.strip()[:-1] + f" {conns[question]}"
    choices = tuple(" " + (c[0].lower() + c[1:] if c else c) for c in (c1, c2))
    return Request(kind="choice", context=context, choices=choices)


def _xnli(t: Template, item: Any, exemplars: Sequence[Any]) -> Request:
    premise = _text(item, "premise", t.name)
    hypothesis = _text(item, "hypothesis", t.name)
    options = " ".join(f"{d}: {n}" for d, n in zip(XNLI_LABELS, XNLI_LABEL_NAMES))
    prompt = (
        f"Premise: {premise}\n"
        f"Hypothesis: {hypothesis}\n"
        f"Does the premise entail the hypothesis? Options: {options}\n"
        "Answer:"
    )
    return Request(kind="label", prompt=prompt, labels=XNLI_LABELS)


def _mgsm(t: Template, item: Any, exemplars: Sequence[Any]) -> Request:
    cot = t.options["style"] == "cot"
    answer_prefix = "Step-by-step answer:" if cot else "Answer:"
    k = int(t.options["k"])
    if len(exemplars) < k:
        raise UsageError(f"template '{t.name}' with k={k} needs {k} exemplars, got {len(exemplars)}; "
                         "pass the MGSM train exemplars")
    shots = []
    for ex in list(exemplars)[:k]:
        q = _text(ex, "question", t.name)
        if cot:
            shots.append(f"Question: {q}\n{answer_prefix} {_text(ex, 'cot', t.name).strip()}")
        else:
            if ex.answer is None:
                raise UsageError(f"template '{t.name}': exemplar {ex.id} has no answer")
            shots.append(f"Question: {q}\n{answer_prefix} {ex.answer}")
    question = _text(item, "question", t.name)
    prompt = "".join(s + "\n\n" for s in shots) + f"Question: {question}\n{answer_prefix}"
    stop = ("\n\n", "Question:") if cot else ("\n", "Question:")
    return Request(kind="generate", prompt=prompt, max_new_tokens=int(t.options["max_new_tokens"]), stop=stop)


def _xquad(t: Template, item: Any, exemplars: Sequence[Any]) -> Request:
    context = _text(item, "context", t.name)
    question = _text(item, "question", t.name)
    prompt = f"Context: {context}\nQuestion: {question}\nAnswer:"
    return Request(kind="generate", prompt=prompt, max_new_tokens=int(t.options["max_new_tokens"]), stop=("\n",))


#: The built-in tasks' templates by name; each task's TaskSpec lists its own (the first is its default).
TEMPLATES: dict[str, Template] = {
    "xcopa": Template("xcopa", "xcopa", "1", "choice",
                      "lm-eval XCOPA: premise + connector in the item's language; choices lower-cased",
                      {}, _xcopa),
    "xnli": Template("xnli", "xnli", "1", "label",
                     "CLAS format: premise, hypothesis, options 0/1/2, 'Answer:'; argmax over '0','1','2'",
                     {}, _xnli, content_free_fields=("premise", "hypothesis")),
    "mgsm-direct": Template("mgsm-direct", "mgsm", "1", "generate",
                            "'Question: ...\\nAnswer:' with k exemplars (their final number)",
                            {"style": "direct", "k": 0, "exemplar_lang": "same", "max_new_tokens": 32}, _mgsm),
    "mgsm-cot": Template("mgsm-cot", "mgsm", "1", "generate",
                         "'Question: ...\\nStep-by-step answer:' with k chain-of-thought exemplars",
                         {"style": "cot", "k": 0, "exemplar_lang": "same", "max_new_tokens": 256}, _mgsm),
    "xquad": Template("xquad", "xquad", "1", "generate",
                      "'Context: ...\\nQuestion: ...\\nAnswer:', greedy, <= 32 new tokens, stop at newline",
                      {"max_new_tokens": 32}, _xquad),
}
