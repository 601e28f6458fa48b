"""The typed results schema (pydantic): one model per file format, one union of them all.

Why: every writer (eval, sweep, compare, lm-eval, analyze, the demo's positive control) and every
reader (``xlsteer table``, ``xlsteer report``, the analysis regression) share these types, so a
field has one name and one meaning. Shared pieces are defined once: a score with its 95% CI
(:class:`Score`), a paired test against a reference on the same items (:class:`PairedTest`;
the test of the average over languages is the paired permutation test stratified by language),
consistency with the anchor, degeneracy, the selection a sweep made, and provenance.

Models allow extra fields: the types fix what readers rely on, writers may record more (per-item
records, engine counters). ``schema.json`` beside this module is generated from
:data:`ResultFile` (``python -m xlsteer.results schema``) and shipped with the package.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from . import ANALYSIS, COMPARE, CONTROL, EVAL, LM_EVAL, PAIRED, SETUP, SWEEP


class _Open(BaseModel):
    """Typed fields are checked; other fields are kept as written. (A file holding NaN or an
    infinity is refused before it gets here, by :func:`xlsteer.io.read_json`; in memory an
    infinite MDE means "no effect detectable" and is written as null.)"""

    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------------------------------------
# shared pieces


class Score(_Open):
    """A mean over items with its 95% percentile-bootstrap interval."""

    mean: float
    ci_low: float
    ci_high: float
    n: int


class Interval(_Open):
    ci_low: float
    ci_high: float


class PairedTest(_Open):
    """A method against its reference on the same items (diff = method - reference).

    ``test``: mcnemar (0/1 scores), paired_permutation (continuous, macro F1), or
    stratified_paired_permutation (the average over languages: outputs swapped item by item within
    their language); paired_bootstrap and stratified_paired_bootstrap in files written before the
    permutation test. ``p_holm``: p Holm-adjusted over the non-anchor languages of one metric.
    """

    n: int
    base_mean: float
    method_mean: float
    diff: float
    diff_ci_low: float
    diff_ci_high: float
    p: float
    test: str
    verdict: str
    mde: Optional[float] = None
    p_holm: Optional[float] = None


class Degeneracy(_Open):
    """One answer for (nearly) every item: the score then says little about understanding."""

    degenerate: bool
    majority_label: Any = None
    majority_share: float


class Consistency(_Open):
    """Agreement with the anchor language on the same item ids."""

    n: int
    correct_agreement: float
    agreement: Optional[float] = None
    mean_js: Optional[float] = None


class Provenance(_Open):
    versions: dict[str, str] = Field(default_factory=dict)
    created: Optional[str] = None


class ModelInfo(_Open):
    name: str
    fingerprint: dict[str, Any] = Field(default_factory=dict)
    fingerprint_sha256: Optional[str] = None


class TemplateInfo(_Open):
    name: str
    version: Any = None


class MetricsInfo(_Open):
    """The task's metrics: ``kinds`` binary | continuous | macro_f1 (``n_labels`` for macro F1), so
    files of any task can be compared without the task being registered."""

    names: list[str]
    kinds: dict[str, Literal["binary", "continuous", "macro_f1"]]
    main: str
    continuous: list[str] = Field(default_factory=list)
    tie_break: Optional[str] = None
    n_labels: dict[str, int] = Field(default_factory=dict)


class TaskInfo(_Open):
    """What the task declared: its request kind, the item rule of each split, where it came from
    (built-in, a spec file with its sha256, lm-eval tasks)."""

    name: str
    kind: str
    splits: dict[str, str] = Field(default_factory=dict)
    source: dict[str, Any] = Field(default_factory=dict)


class ItemIds(_Open):
    n: int
    per_lang: dict[str, int]
    sha256: str


class Selection(_Open):
    """What a sweep chose on its selection split (never test).

    ``steer`` is False when the unsteered model won on that split ("no steering"; ``layer`` is
    then None); ``layer`` -1 means every fitted layer (INCLINE, CLAS)."""

    layer: Optional[int] = None
    alpha: float = 0.0
    steer: bool = True
    decision: Optional[str] = None
    main: Optional[float] = None
    tie_break: Optional[float] = None
    baseline_main: Optional[float] = None
    gain_over_baseline: Optional[float] = None


class MethodRecord(_Open):
    """How a method of ``xlsteer compare`` ran: parameters, selection, cost, what it skipped."""

    name: str
    family: Optional[str] = None
    params: dict[str, Any] = Field(default_factory=dict)
    cost: dict[str, Any] = Field(default_factory=dict)
    selection: Optional[dict[str, Any]] = None
    notes: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)
    error: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# one evaluation


class LangResult(_Open):
    n: int
    metrics: dict[str, Score]
    continuous: dict[str, Score] = Field(default_factory=dict)
    degenerate: Optional[Degeneracy] = None
    consistency: Optional[Consistency] = None


class Average(_Open):
    """Unweighted mean over the non-anchor languages; ``ci``: stratified bootstrap interval."""

    langs: list[str]
    metrics: dict[str, float] = Field(default_factory=dict)
    continuous: dict[str, float] = Field(default_factory=dict)
    consistency: dict[str, float] = Field(default_factory=dict)
    ci: dict[str, Interval] = Field(default_factory=dict)


class PairedLang(_Open):
    n: int
    metrics: dict[str, PairedTest]
    continuous: dict[str, PairedTest] = Field(default_factory=dict)
    prediction_changed: Optional[float] = None
    consistency: dict[str, Optional[Consistency]] = Field(default_factory=dict)


class PairedAverage(_Open):
    langs: list[str]
    diff: dict[str, float] = Field(default_factory=dict)
    tests: dict[str, PairedTest] = Field(default_factory=dict)


class PairedResult(_Open):
    """Two evaluations of one task and split, paired item by item (``other`` against ``base``)."""

    format: Literal["xlsteer.paired"] = PAIRED
    version: Literal[2] = 2
    task: str
    split: str
    main: str
    alpha: float = 0.05
    base: dict[str, Any]
    other: dict[str, Any]
    per_lang: dict[str, PairedLang]
    average: PairedAverage
    method: Optional[str] = None


class EvalResult(_Open):
    """One evaluation; a steered one may embed its unsteered ``baseline`` and the ``comparison``."""

    format: Literal["xlsteer.eval"] = EVAL
    version: Literal[2] = 2
    task: str
    task_spec: Optional[TaskInfo] = None
    split: str
    langs: list[str]
    anchor: Optional[str] = None
    template: TemplateInfo
    model: ModelInfo
    data: dict[str, Any] = Field(default_factory=dict)
    item_ids: ItemIds
    limit: Optional[int] = None
    seed: int = 0
    intervention: Optional[dict[str, Any]] = None
    decoding: Optional[dict[str, Any]] = None  # generation tasks: evaluation.sampling.Sampling.describe()
    metrics: MetricsInfo
    per_lang: dict[str, LangResult]
    average: Average
    items: list[dict[str, Any]] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    baseline: Optional["EvalResult"] = None
    comparison: Optional[PairedResult] = None
    method: Union[MethodRecord, str, None] = None

    @model_validator(mode="after")
    def _main_metric_everywhere(self) -> "EvalResult":
        """The main metric is one of the metrics and every language has a score for it."""
        main = self.metrics.main
        if main not in self.metrics.names:
            raise ValueError(f"metrics.main {main[:40]!r} is not among metrics.names")
        for lang, res in self.per_lang.items():
            if main not in res.metrics and main not in res.continuous:
                raise ValueError(f"per_lang.{lang[:20]} has no score for the main metric {main[:40]!r}")
        return self


# ---------------------------------------------------------------------------------------------
# xlsteer compare: methods x languages


class MethodCell(_Open):
    score: float
    ci_low: float
    ci_high: float
    n: int
    diff: Optional[float] = None
    diff_ci_low: Optional[float] = None
    diff_ci_high: Optional[float] = None
    p: Optional[float] = None
    p_holm: Optional[float] = None
    test: Optional[str] = None
    verdict: Optional[str] = None
    mde: Optional[float] = None
    prediction_changed: Optional[float] = None


class Unavailable(_Open):
    status: Literal["n/a", "failed"]
    reason: Optional[str] = None


class MethodAverage(_Open):
    """The average over the non-anchor languages the method covers (``partial``: not all)."""

    langs: list[str] = Field(default_factory=list)
    partial: bool = False
    score: Optional[float] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    n: Optional[int] = None
    diff: Optional[float] = None
    diff_ci_low: Optional[float] = None
    diff_ci_high: Optional[float] = None
    p: Optional[float] = None
    test: Optional[Literal["stratified_paired_permutation", "stratified_paired_bootstrap"]] = None
    verdict: Optional[str] = None
    mde: Optional[float] = None


class MethodRow(MethodRecord):
    per_lang: dict[str, Union[MethodCell, Unavailable]]
    average: MethodAverage = Field(default_factory=MethodAverage)
    description: Optional[str] = None


class MethodsComparison(_Open):
    format: Literal["xlsteer.methods"] = COMPARE
    version: Literal[2] = 2
    task: str
    split: str
    langs: list[str]
    anchor: str
    main: str
    model: ModelInfo
    template: TemplateInfo
    item_ids: ItemIds
    reference: str
    methods: list[str]
    rows: dict[str, MethodRow]
    alpha_level: float = 0.05
    limit: Optional[int] = None
    seed: int = 0
    versions: dict[str, str] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# sweeps, analyses, setup, lm-eval, positive control


class SweepEntry(_Open):
    layer: int
    alpha: float
    per_lang: dict[str, LangResult]
    average: Average


class SweepResult(_Open):
    format: Literal["xlsteer.sweep"] = SWEEP
    version: Literal[2] = 2
    task: str
    split: str
    langs: list[str]
    anchor: Optional[str] = None
    model: ModelInfo
    metrics: MetricsInfo
    selection_rule: str
    results: list[SweepEntry]
    best: Selection
    best_per_lang: dict[str, Selection] = Field(default_factory=dict)
    baseline: Optional[dict[str, Any]] = None
    source: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)


class AnalysisResult(_Open):
    format: Literal["xlsteer.analysis"] = ANALYSIS
    version: Literal[2] = 2
    analysis: str
    model: Optional[str] = None
    model_fingerprint: Optional[dict[str, Any]] = None
    notes: list[str] = Field(default_factory=list)
    figures: list[str] = Field(default_factory=list)
    provenance: Optional[Provenance] = None


class SetupRecord(_Open):
    format: Literal["xlsteer.setup"] = SETUP
    version: Literal[2] = 2
    model: Optional[str] = None
    provenance: Optional[Provenance] = None


class LmEvalResult(_Open):
    """lm-evaluation-harness's results dict as ``xlsteer lm-eval`` got it, stamped."""

    format: Literal["xlsteer.lm-eval"] = LM_EVAL
    version: Literal[2] = 2
    results: dict[str, dict[str, Any]]


class ControlRow(_Open):
    """Share of outputs in the target language, unsteered vs steered, on the same prompts."""

    prompt_lang: str
    target_lang: str
    n: int
    unsteered_share: float
    steered_share: float
    unsteered_ci: tuple[float, float]
    steered_ci: tuple[float, float]
    diff: float
    diff_ci: tuple[float, float]
    p: float
    test: Literal["mcnemar"]


class ControlResult(_Open):
    """The positive control: the intervention changes behaviour, whatever the task score does."""

    format: Literal["xlsteer.control"] = CONTROL
    version: Literal[1] = 1
    model: str
    method: str
    layer: int
    alpha: float
    n_new_tokens: int
    rows: list[ControlRow]
    provenance: dict[str, Any] = Field(default_factory=dict)


ResultFile = Annotated[
    Union[EvalResult, PairedResult, MethodsComparison, SweepResult, AnalysisResult, SetupRecord, LmEvalResult,
          ControlResult],
    Field(discriminator="format"),
]
ADAPTER: TypeAdapter = TypeAdapter(ResultFile)


def validate(doc: Any) -> BaseModel:
    """The typed result of a JSON document (raises pydantic.ValidationError on a wrong shape)."""
    return ADAPTER.validate_python(doc)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every result file (what ``schema.json`` holds)."""
    out = ADAPTER.json_schema()
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["title"] = "xlsteer result file"
    return out
