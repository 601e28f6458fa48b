"""What a task *is*: :class:`TaskSpec`, one frozen record per benchmark, and the task registry.

Why one record: the runner, the sweep, the baselines, the comparison, the tables and the report
all need the same facts about a benchmark (its languages, its fixed splits, how a request is
built and scored, which metric decides, what breaks ties, where few-shot exemplars and training
data may come from, which fields translate-test translates). Declaring them once, next to the
loader, means a new benchmark is one module (or one YAML file, or one lm-eval task name) and
nothing else branches on a task's name.

Built-in tasks (mgsm, xcopa, xnli, xquad, lcb) are modules of this package, each defining ``SPEC``
(lcb also ``SPEC_MONO`` and ``SPEC_CROSS``);
:data:`BUILTIN_TASKS` names them (``name -> "module:SPEC"``) and each is imported the first time it
is asked for, so ``import xlsteer`` stays cheap. A plugin or a script registers its own with
:func:`register_task`. User tasks also come from a *task reference* that is not a registered
name, read by a :class:`TaskSource` of :data:`TASK_SOURCES`: ``lmeval:NAME,...`` (an
lm-evaluation-harness task, :mod:`xlsteer.lmeval.tasks`) or the path of a YAML
spec over JSONL files (:mod:`xlsteer.evaluation.tasks.jsonl`); :func:`resolve_task` builds and
registers their spec for the rest of the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from ...errors import UsageError
from ...registry import Registry
from ..templates import Template

if TYPE_CHECKING:  # pragma: no cover
    from .base import Item

MetricKind = Literal["binary", "continuous", "macro_f1"]
#: How the items of different languages relate: ``id`` — items with the same id are the same item
#: in other words (translations), so predictions can be compared across languages on the ids two
#: languages share; ``none`` — every language has its own items (ids mean nothing across languages).
Pairing = Literal["id", "none"]
PAIRINGS: tuple[str, ...] = ("id", "none")

#: The built-in tasks: name -> the TaskSpec of a module of this package, imported on first use.
BUILTIN_TASKS: dict[str, str] = {
    "mgsm": "xlsteer.evaluation.tasks.mgsm:SPEC",
    "xcopa": "xlsteer.evaluation.tasks.xcopa:SPEC",
    "xnli": "xlsteer.evaluation.tasks.xnli:SPEC",
    "xquad": "xlsteer.evaluation.tasks.xquad:SPEC",
    "lcb": "xlsteer.evaluation.tasks.lcb:SPEC",
    "lcb-mono": "xlsteer.evaluation.tasks.lcb:SPEC_MONO",
    "lcb-cross": "xlsteer.evaluation.tasks.lcb:SPEC_CROSS",
    "lcb-cross-okapi": "xlsteer.evaluation.tasks.lcb:SPEC_CROSS_OKAPI",
}
#: Their names, in order.
BUILTIN: tuple[str, ...] = tuple(BUILTIN_TASKS)
#: Per-item scores every choice and label request yields (besides the task's metrics).
CHOICE_CONTINUOUS: tuple[str, ...] = ("margin", "p_correct")
#: The quality guard of generation tasks (:mod:`xlsteer.evaluation.guard`): fluency under the
#: unsteered model and seq-rep-4 degeneration of the output, per item.
GUARD_CONTINUOUS: tuple[str, ...] = ("fluency", "degeneration")


@dataclass(frozen=True)
class Metric:
    """One reported metric. ``binary``: a 0/1 score per item (McNemar applies); ``continuous``: a
    real score per item (paired permutation test); ``macro_f1``: computed over the whole set from
    (prediction, gold) codes with ``n_labels`` labels (bootstrap over items)."""

    name: str
    kind: MetricKind
    n_labels: int = 0

    def __post_init__(self) -> None:
        if self.kind == "macro_f1" and self.n_labels < 2:
            raise ValueError(f"metric {self.name}: macro_f1 needs n_labels >= 2")


@dataclass(frozen=True)
class Scored:
    """What a generation task's scorer says about one generated text."""

    prediction: Any
    correct: bool
    scores: Mapping[str, float]
    #: JSON-ready facts about the verdict kept in the item's record (e.g. which lines failed).
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class FewShot:
    """Exemplars a template renders into the prompt itself (MGSM's k exemplars).

    ``load(template, lang, data_dir)`` returns ``(exemplars, exemplar_lang)``; ``([], None)``
    when the template uses none. ``files`` are the data files they come from (for the data hash).
    """

    load: Callable[[Any, str, Any], tuple[list[Any], str | None]]
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptBaseline:
    """A baseline that is the task's default template with some options changed (e.g. LCB's
    explicit instruction ``{"explicit": True}`` or upstream's few-shot prompt ``{"k": 5}``):
    ``xlsteer compare`` runs it as the method of the same name (``instruct``, ``few-shot``)."""

    options: Mapping[str, Any]
    description: str


@dataclass(frozen=True)
class BaselineHints:
    """What the baselines need to know of a task; every source split here is never ``test``.

    ``icl_split``/``train_split``: where in-context exemplars / LoRA training items come from
    (None: that baseline cannot run on the task, and says so). ``answer_text(item, template)``:
    the gold answer as the model should write it after a generation prompt (ICL demonstrations,
    fine-tuning targets). ``translate_fields``: the item fields translate-test translates
    (empty: translate-test cannot run; ``translate_unsupported`` says why).
    ``polish_translation(field, text)``: makes a translation renderable (XCOPA's premise needs
    its final full stop). ``english_reference(data_dir, lang, split)``: human or MT English of
    the same items, where the benchmark ships one (XCOPA's Google-MT English).
    ``steer_toward``: where steering methods move a row: ``anchor`` (toward the anchor language,
    for tasks solved better in English) or ``wanted`` (toward the row's own language, the one its
    answer is wanted in: language fidelity; each method's registry entry says how, and a method
    that cannot is refused with the reason). ``prompt_baselines``: the prompt-level baselines the
    task declares, by method name (:class:`PromptBaseline`).
    """

    icl_split: str | None = None
    icl_k: int = 4
    icl_separator: str = "\n\n"
    train_split: str | None = None
    train_note: str = ""
    answer_text: Callable[[Any, Any], str] | None = None
    instructions: tuple[str, ...] = ()
    instruction_separator: str = "\n\n"
    translate_fields: tuple[str, ...] = ()
    translate_unsupported: str = ""
    polish_translation: Callable[[str, str], str] | None = None
    english_reference: Callable[[Any, str, str], list[Any]] | None = None
    english_reference_langs: tuple[str, ...] = ()
    steer_toward: Literal["anchor", "wanted"] = "anchor"
    prompt_baselines: Mapping[str, PromptBaseline] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark, declared once.

    ``splits`` maps each split to the rule that fixes its items (recorded in results, shown in
    ``xlsteer tasks``). ``pairing`` says how items relate across languages (:data:`Pairing`):
    ``id`` (the built-ins: the same ids in every language, so predictions can be compared across
    languages) or ``none`` (each language its own items, counts and splits: nothing is compared
    across languages). ``lang_splits``: the splits each language has, where not every language has
    every split (None: all of them); a language without the dev split is evaluated but left out of
    dev selection. Steered and unsteered runs always pair item by item within a language.
    ``load_items(data_dir, lang, split, limit)`` and ``data_files(lang, split)`` (paths
    relative to the data dir, or absolute for user tasks) read the data. ``templates``: the
    task's prompt templates, the first is the default. ``metrics`` are reported per language
    with CIs and paired tests; ``main`` decides sweeps and headlines, ``tie_break`` breaks ties
    between equal main scores. ``score(item, text)`` scores a generated text (generation tasks;
    choice and label tasks are scored by log-likelihood and need none). ``comparable_predictions``:
    whether predictions can be compared across languages (not for extractive QA, whose answers
    are text in each language). ``dev_split``: the split sweeps and selection use (None: the task
    cannot be swept). ``quality_guard``: a generation task whose every item also gets the guard's
    fluency and degeneration scores (:mod:`xlsteer.evaluation.guard`), reported beside its metrics.
    ``task_summary(records)``: a task's own figures over the scored records (e.g. a benchmark's
    published aggregates), kept in the result as ``task_summary``.
    """

    name: str
    description: str
    langs: tuple[str, ...]
    splits: Mapping[str, str]
    load_items: Callable[..., list["Item"]]
    data_files: Callable[[str, str], list[str]]
    templates: tuple["Template", ...]
    metrics: tuple[Metric, ...]
    main: str
    tie_break: str | None = None
    score: Callable[["Item", str], Scored] | None = None
    comparable_predictions: bool = True
    dev_split: str | None = "dev"
    few_shot: FewShot | None = None
    extra_continuous: tuple[str, ...] | None = None
    quality_guard: bool = False
    baselines: BaselineHints = field(default_factory=BaselineHints)
    source: Mapping[str, Any] = field(default_factory=lambda: {"kind": "builtin"})
    pairing: Pairing = "id"
    lang_splits: Mapping[str, tuple[str, ...]] | None = None
    task_summary: Callable[[Sequence[dict]], dict] | None = None

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if not self.templates:
            raise ValueError(f"task {self.name}: declare at least one template")
        if self.main not in names:
            raise ValueError(f"task {self.name}: main metric {self.main!r} is not among {names}")
        kind = self.templates[0].kind
        if kind == "generate" and self.score is None:
            raise ValueError(f"task {self.name}: a generation task needs a score function")
        if self.tie_break is not None and self.tie_break not in [*names, *self.continuous]:
            raise ValueError(f"task {self.name}: tie-break {self.tie_break!r} is not a metric of the task")
        if self.dev_split is not None and self.dev_split not in self.splits:
            raise ValueError(f"task {self.name}: dev split {self.dev_split!r} is not one of its splits")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"task {self.name}: pairing {self.pairing!r} is not one of {', '.join(PAIRINGS)}")
        for lang, have in (self.lang_splits or {}).items():
            extra = sorted(set(have) - set(self.splits))
            if extra:
                raise ValueError(f"task {self.name}: language {lang} has split(s) {extra} the task does not declare")
        if self.quality_guard and kind != "generate":
            raise ValueError(f"task {self.name}: the quality guard scores generated text; it needs a generation task")

    # ---- derived facts

    @property
    def kind(self) -> str:
        """The request kind of the default template: choice, label or generate."""
        return self.templates[0].kind

    @property
    def continuous(self) -> tuple[str, ...]:
        """Continuous per-item scores reported besides the metrics (margin and p_correct of the
        gold answer for log-likelihood tasks, unless ``extra_continuous`` says otherwise; then
        the quality guard's scores when the task has it)."""
        if self.extra_continuous is not None:
            own = self.extra_continuous
        else:
            own = CHOICE_CONTINUOUS if self.kind in ("choice", "label") else ()
        return (*own, *[g for g in GUARD_CONTINUOUS if g not in own]) if self.quality_guard else tuple(own)

    @property
    def metric_kinds(self) -> dict[str, str]:
        return {m.name: m.kind for m in self.metrics}

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def template(self, name: str | None = None) -> "Template":
        """The template ``name`` of this task (default: its first)."""
        if name is None:
            return self.templates[0]
        for t in self.templates:
            if t.name == name:
                return t
        mine = ", ".join(t.name for t in self.templates)
        specs = (TASKS.find(n) for n in TASKS.names())
        owner = next((s.name for s in specs if s is not None and any(t.name == name for t in s.templates)), None)
        if owner is not None:
            raise UsageError(f"template '{name}' is for task {owner}, not {self.name}; choose one of {mine}")
        raise UsageError(f"unknown template {name!r} for task {self.name!r}; choose one of {mine}")

    def check_split(self, split: str) -> str:
        if split not in self.splits:
            raise UsageError(f"{self.name} has no split {split!r}; available: {' '.join(self.splits)}")
        return split

    @property
    def parallel(self) -> bool:
        """Whether items pair across languages (by id), so cross-language agreement means something."""
        return self.pairing != "none"

    def splits_of(self, lang: str) -> tuple[str, ...]:
        """The splits language ``lang`` has (every split of the task unless ``lang_splits`` says less)."""
        if self.lang_splits is None or lang not in self.lang_splits:
            return tuple(self.splits)
        return tuple(s for s in self.splits if s in self.lang_splits[lang])

    def langs_with(self, split: str, langs: Sequence[str]) -> list[str]:
        """Those of ``langs`` that have ``split`` (in order)."""
        return [lang for lang in langs if split in self.splits_of(lang)]

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity of the task (goes into result files)."""
        out = {"name": self.name, "kind": self.kind, "splits": dict(self.splits), "source": dict(self.source),
               "pairing": self.pairing}
        if self.lang_splits is not None:
            out["lang_splits"] = {lang: list(v) for lang, v in self.lang_splits.items()}
        return out


# ---------------------------------------------------------------------------------------------
# the registry

def _accept(name: str, spec: Any) -> TaskSpec:
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"task {name!r} must be a TaskSpec, got {type(spec).__name__}")
    return spec


TASKS: Registry[TaskSpec] = Registry("task", BUILTIN_TASKS, accept=_accept, key=lambda name: str(name).strip().lower())


@dataclass(frozen=True)
class TaskSource:
    """A kind of task reference that is not a registered name: ``matches(ref)`` says whether a
    reference is of this kind, ``build(ref, **options)`` makes its TaskSpec(s)."""

    matches: Callable[[str], bool]
    build: Callable[..., list[TaskSpec]]


def _accept_source(name: str, source: Any) -> TaskSource:
    if not isinstance(source, TaskSource):
        raise TypeError(f"task reference kind {name!r} must be a TaskSource, got {type(source).__name__}")
    return source


#: Kinds of task reference, tried in this order (a plugin may add its own: :func:`register_task_source`).
TASK_SOURCES: Registry[TaskSource] = Registry("task reference kind", {
    "jsonl": "xlsteer.evaluation.tasks.jsonl:SOURCE",
    "lmeval": "xlsteer.lmeval.tasks:SOURCE",
}, accept=_accept_source)


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Make ``spec`` known by its name (an existing name is an error unless ``replace``)."""
    return TASKS.register(spec.name, spec, replace=replace)


def unregister_task(name: str) -> None:
    """Forget a task registered at run time (tests and temporary user tasks)."""
    TASKS.unregister(name)


def register_task_source(name: str, source: TaskSource) -> TaskSource:
    """Teach :func:`resolve_task` a new kind of task reference (tried after the built-in ones)."""
    return TASK_SOURCES.register(name, source)


def task_names() -> list[str]:
    """Names of the registered tasks (built-ins first)."""
    return [*BUILTIN, *sorted(n for n in TASKS.names() if n not in BUILTIN)]


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The registered task ``name`` (case-insensitive); a TaskSpec is returned as is."""
    if isinstance(name, TaskSpec):
        return name
    spec = TASKS.find(str(name))
    if spec is None:
        raise UsageError(f"unknown task {name!r}; available: {' '.join(task_names())} "
                         "(--task also takes lmeval:NAME for an lm-eval task, or the path of a task spec .yaml)")
    return spec


def resolve_task(ref: str | TaskSpec, **options: Any) -> list[TaskSpec]:
    """The task(s) a reference names: a registered name, ``lmeval:NAME[,NAME...]`` or a spec file.

    ``options`` go to the resolver (``include_path``, ``task_langs`` for lm-eval tasks). User
    tasks are registered for the rest of the process, so every later step finds them by name.
    """
    if isinstance(ref, TaskSpec):
        return [ref]
    text = str(ref).strip()
    if text in TASKS:
        return [get_task(text)]
    for name in TASK_SOURCES.names():
        source = TASK_SOURCES.get(name)
        if source.matches(text):
            specs = source.build(text, **options)
            for s in specs:
                register_task(s, replace=True)
            return specs
    return [get_task(text)]  # the one-line unknown-task error


def items_by_lang(spec: TaskSpec, langs: Sequence[str], split: str, limit: int | None,
                  data_dir: Any) -> dict[str, list["Item"]]:
    """The items of ``split`` per language, checked non-empty."""
    from ...errors import XlsteerError
    from ...validation import check_limit

    check_limit(limit)
    spec.check_split(split)
    lacking = [lang for lang in langs if split not in spec.splits_of(lang)]
    if lacking:
        raise UsageError(f"{spec.name} has no {split} split in {', '.join(lacking)}; leave "
                         f"{'it' if len(lacking) == 1 else 'them'} out of --langs or evaluate another split")
    out = {lang: spec.load_items(data_dir, lang, split, limit) for lang in langs}
    for lang, its in out.items():
        if not its:
            raise XlsteerError(f"{spec.name} {split} has no items in {lang}; check the split")
    return out


def get_template(task: Any, name: str | Template | None = None, **options: Any) -> Template:
    """The template ``name`` of ``task`` (a task name or TaskSpec; default: the task's first template).

    A Template object is checked to belong to the task; ``options`` (None values ignored) are
    applied with :meth:`Template.with_options`.
    """
    spec = get_task(task)
    if isinstance(name, Template):
        tpl = name
    else:
        tpl = spec.template(None if name is None else str(name))
    if tpl.task != spec.name:
        raise UsageError(f"template '{tpl.name}' is for task {tpl.task}, not {spec.name}; choose a {spec.name} template")
    opts = {k: v for k, v in options.items() if v is not None}
    return tpl.with_options(**opts) if opts else tpl
