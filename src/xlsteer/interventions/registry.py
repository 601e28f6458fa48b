"""The one registry of steering methods: everything ``fit``, ``xlsteer fit``, ``xlsteer compare`` and
the sweeps need to know about a method, declared once, on the method's fit function.

Each fit function is decorated where it is defined::

    @register_method("clas", site="mlp_act", statistics=StatisticsNeed("token-level means at every layer",
                     every_layer=True), layer_policy=LayerPolicy(CHOSEN_BY_FIT, ALL_TOGETHER, text=...),
                     alpha_grid=(-0.5, 0.5, 1.0, 2.0), description="...", compare="...", call=..., ...)
    def fit_clas(stats, langs, ...): ...

The spec (:class:`SteeringMethod`) says what used to be ``if method == ...`` branches in the
callers: the default and allowed sites; which statistics :func:`xlsteer.interventions.fit.fit`
collects (:class:`StatisticsNeed`: none, pooled item means at the fit layers, token-level
statistics at every layer, per-item vectors on the method's own texts); the layers fitted when
none are given and how a dev sweep treats them (:class:`LayerPolicy`: each candidate alone, or
every fitted layer together as in the INCLINE and CLAS papers); the strength grid searched on dev;
whether ``xlsteer compare`` runs it as a steering row; the dev grid beyond strengths
(:class:`Variant`: e.g. ReCoVeR's beta and layer ranges); and small hooks for what differs in
calling convention, preparation (CLAS's category languages, :class:`ExtraLanguages`) and input checks (INCLINE's ridge
against the corpus size, the learned vector's objective). Adding a method touches one file: its
module (a plugin file, :mod:`xlsteer.plugins`, or a test), which registers it when it runs. The
built-in methods are rows of :data:`BUILTIN_METHODS` (``name -> "module:fit function"``); a row's
module is imported the first time the method is asked for, and its decorator fills the row.

Two registries, two jobs, on purpose: :func:`xlsteer.interventions.base.register_intervention` maps an
intervention *class* to the ``method`` name stored in intervention files, which is how a file is
loaded (one class may serve several fit methods: :class:`~xlsteer.interventions.vector.SteeringVector`
holds both DiffMean and learned vectors, named by ``params["fit"]``); this registry maps a *fit
method* to how it is fitted, swept and compared. Loading a file must not depend on knowing how
it was fitted, so the class registry stays separate.

Only the standard library and the generic :class:`xlsteer.registry.Registry` are imported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..errors import UsageError
from ..registry import Registry

# layers fitted when the caller gives none (LayerPolicy.default)
MIDDLE_LAYER = "middle"
EVERY_LAYER = "every"
CHOSEN_BY_FIT = "fit"
# how a dev sweep treats the fitted layers (LayerPolicy.sweep)
EACH_ALONE = "each"
ALL_TOGETHER = "together"

_DEFAULTS = (MIDDLE_LAYER, EVERY_LAYER, CHOSEN_BY_FIT)
_SWEEPS = (EACH_ALONE, ALL_TOGETHER)


@dataclass(frozen=True)
class StatisticsNeed:
    """What :func:`~xlsteer.interventions.fit.fit` collects before calling the fit function.

    ``texts`` (hook): ``(texts, targets, anchor, params) -> (texts to collect on, code_switch)``
    for a method that collects on texts of its own (INCLINE: anchor/target pairs, optionally
    code-switched); the flag is recorded in the statistics and checked when a cache is reused.
    """

    what: str
    collect: bool = True
    every_layer: bool = False  # at every layer (categories / LAPE compare layers), else at the fit layers
    keep_items: bool = False  # per-item pooled vectors, not only their means
    texts: Callable[[Mapping[str, list[str]], list[str], str, Mapping[str, Any]],
                    tuple[dict[str, list[str]], bool]] | None = None

    def collect_texts(self, texts: Mapping[str, list[str]], targets: list[str], anchor: str,
                      params: Mapping[str, Any]) -> tuple[dict[str, list[str]], bool]:
        if self.texts is None:
            return dict(texts), False
        return self.texts(texts, targets, anchor, params)


#: A method that trains on the corpus directly (no statistics are collected).
NO_STATISTICS = StatisticsNeed("none (trains on the corpus directly)", collect=False)


def quartile_layers(n_layers: int) -> list[int]:
    """L/4, L/2 and 3L/4: the candidate layers ``xlsteer compare`` fits a DiffMean vector at."""
    return sorted({max(0, n_layers // 4), n_layers // 2, min(n_layers - 1, (3 * n_layers) // 4)})


@dataclass(frozen=True)
class LayerPolicy:
    """Which layers a method is fitted at and how a dev sweep uses them.

    ``default``: :data:`MIDDLE_LAYER` (L // 2), :data:`EVERY_LAYER`, or :data:`CHOSEN_BY_FIT` (the
    fit function chooses, e.g. CLAS's bridge layers). ``sweep``: :data:`EACH_ALONE` (each fitted
    layer is a candidate of its own) or :data:`ALL_TOGETHER` (the intervention at every fitted
    layer at once, as the INCLINE and CLAS papers apply them). ``compare``: the candidate layers
    ``xlsteer compare`` fits when none are given (None: ``default``). ``text``: the docs' wording.
    """

    default: str = MIDDLE_LAYER
    sweep: str = EACH_ALONE
    compare: Callable[[int], list[int]] | None = None
    text: str = ""

    def fit_layers(self, n_layers: int) -> list[int] | None:
        """The layers fitted when the caller gives none (None: the fit function chooses)."""
        if self.default == MIDDLE_LAYER:
            return [n_layers // 2]
        if self.default == EVERY_LAYER:
            return list(range(n_layers))
        return None

    def compare_layers(self, n_layers: int) -> list[int] | None:
        return self.compare(n_layers) if self.compare is not None else None

    def describe(self) -> str:
        return self.text or {MIDDLE_LAYER: "the middle layer (L // 2)", EVERY_LAYER: "every layer",
                             CHOSEN_BY_FIT: "chosen by the fit"}[self.default]


@dataclass(frozen=True)
class Variant:
    """One configuration of a fitted intervention that a dev sweep tries besides its strengths:
    the intervention restricted to ``layers`` (None: every fitted layer) with ``params`` changed
    (``Intervention.with_params``), e.g. ReCoVeR's beta and layer range."""

    label: str
    layers: tuple[int, ...] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def of(self, intervention: Any) -> Any:
        out = intervention.at_layers(self.layers) if self.layers is not None else intervention
        return out.with_params(**self.params) if self.params else out

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "layers": list(self.layers) if self.layers is not None else "all",
                "params": dict(self.params)}


@dataclass
class FitJob:
    """One fit's resolved inputs, as :func:`~xlsteer.interventions.fit.fit` hands them to the hooks.

    ``layers``: the layers given, else the policy's default (None: the fit function chooses).
    ``langs``: the anchor, the targets and any language the method needs besides (CLAS's
    category languages). ``texts``: every corpus language until the preparation has run, then
    the languages of ``langs`` only. ``recorded``: parameters the preparation adds to the
    intervention's params. ``corpus``: the corpus as given (its ``name`` is recorded).
    """

    lm: Any
    corpus: Any
    texts: dict[str, list[str]]
    targets: list[str]
    anchor: str
    langs: list[str]
    site: str
    n_layers: int
    layers: list[int] | None
    params: dict[str, Any]
    pooling: str = "mean"
    batch_size: int = 8
    max_length: int = 128
    stats: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    recorded: dict[str, Any] = field(default_factory=dict)


def call_with_layers(fn: Callable[..., Any], job: FitJob) -> Any:
    """The common calling convention: ``fn(stats, layers, targets, anchor=, site=, meta=, **params)``."""
    return fn(job.stats, job.layers, job.targets, anchor=job.anchor, site=job.site, meta=job.meta, **job.params)


def default_corpus_langs(anchor: str, targets: Sequence[str], params: Mapping[str, Any]) -> list[str] | None:
    """The corpus languages a fit needs: the anchor and the targets (None would mean every language)."""
    return [anchor, *targets]


@dataclass(frozen=True)
class ExtraLanguages:
    """A fit parameter naming languages the method needs besides the anchor and the targets (CLAS's
    category languages, langvec's languages averaged over): every corpus language unless given.

    Its two methods are the registry's ``corpus_langs`` and ``prepare`` hooks. ``with_targets``:
    the recorded set always holds the anchor and the targets (langvec's mean over languages); else
    it is the given set as normalised (CLAS's categories), the fit still collecting the union.
    """

    param: str
    with_targets: bool = False

    @staticmethod
    def _split(given: Any) -> list[Any]:
        return given.split(",") if isinstance(given, str) else list(given)

    def corpus_langs(self, anchor: str, targets: Sequence[str], params: Mapping[str, Any]) -> list[str] | None:
        """The corpus languages the fit reads: every one (None) unless the parameter names them."""
        given = params.get(self.param)
        if given is None:
            return None
        return list(dict.fromkeys([anchor, *targets, *self._split(given)]))

    def prepare(self, job: "FitJob") -> None:
        """fit(): the languages (given, else every corpus language) join the collected ones; the
        parameter and the rule that chose it are recorded."""
        from ..data.langs import normalize_langs

        given = job.params.get(self.param)
        job.recorded[f"{self.param}_rule"] = "given" if given is not None else \
            f"every language of the corpus ({getattr(job.corpus, 'name', 'texts')})"
        if given is None:
            chosen = list(dict.fromkeys([*job.langs, *job.texts]))
        else:
            chosen = normalize_langs([str(x).strip() for x in self._split(given) if str(x).strip()])
            if self.with_targets:
                chosen = list(dict.fromkeys([*job.langs, *chosen]))
        job.params[self.param] = chosen
        job.langs = list(dict.fromkeys([*job.langs, *chosen]))


@dataclass(frozen=True)
class SteeringMethod:
    """One registered steering method (see the module docstring); made by :func:`register_method`."""

    name: str
    fit: Callable[..., Any]
    description: str
    site: str
    sites: tuple[str, ...] | None  # allowed sites (None: any site)
    statistics: StatisticsNeed
    layer_policy: LayerPolicy
    alpha_grid: tuple[float, ...]
    compare: str | None = None  # the xlsteer compare row's description (None: not a compare row)
    compare_defaults: Mapping[str, Any] = field(default_factory=dict)
    trainable: bool = False  # its parameters are trained by gradient descent (cost: trainable_parameters)
    call: Callable[[Callable[..., Any], FitJob], Any] = call_with_layers
    prepare: Callable[[FitJob], None] | None = None
    corpus_langs: Callable[[str, Sequence[str], Mapping[str, Any]], list[str] | None] = default_corpus_langs
    check_params: Callable[[Mapping[str, Any]], None] | None = None
    check_inputs: Callable[[Any, str, int, Mapping[str, Any]], None] | None = None
    summary: Callable[[Mapping[str, Any]], list[str]] | None = None  # lines xlsteer fit / inspect print
    #: the dev grid beyond strengths: ``(n_layers, compare options) -> [Variant, ...]``; each variant is
    #: swept over ``alpha_grid`` (None: the layer policy's grid alone)
    variants: Callable[[int, Mapping[str, Any]], list[Variant]] | None = None
    variant_keys: tuple[str, ...] = ()  # compare options ``variants`` reads (not passed to the fit function)
    #: the compare options under which the method steers each row toward its *own* (wanted) language,
    #: for tasks that ask for that (``BaselineHints.steer_toward == "wanted"``: language fidelity);
    #: None: the method only moves rows toward the anchor, and such a task refuses it with the reason
    toward_wanted: Mapping[str, Any] | None = None
    #: The parameters ``xlsteer fit -p`` and ``compare -O`` may set, with types and ranges
    #: (:mod:`xlsteer.interventions.params`); empty: checked against the fit function's signature only.
    params: Mapping[str, Any] = field(default_factory=dict)

    def check_site(self, site: str) -> None:
        if self.sites is not None and site not in self.sites:
            raise UsageError(f"{self.name} acts at site {' or '.join(self.sites)}, not {site}; drop --site")

    def sweeps_together(self) -> bool:
        return self.layer_policy.sweep == ALL_TOGETHER


#: The built-in methods, in the order they are listed (``xlsteer fit --help``, ``xlsteer compare``).
BUILTIN_METHODS: dict[str, str] = {
    "diffmean": "xlsteer.interventions.vector:fit_diffmean",
    "learned": "xlsteer.interventions.learned:fit_learned",
    "incline": "xlsteer.interventions.incline:fit_incline",
    "clas": "xlsteer.interventions.clas:fit_clas",
    "lape": "xlsteer.interventions.neurons:fit_lape",
    "intmu": "xlsteer.interventions.neurons:fit_intmu",
    "langvec": "xlsteer.interventions.langvec:fit_langvec",
}


def _accept(name: str, obj: Any) -> SteeringMethod:
    spec = obj if isinstance(obj, SteeringMethod) else getattr(obj, "steering_method", None)
    if not isinstance(spec, SteeringMethod) or spec.name != name:
        raise TypeError(f"steering method {name!r} must name a fit function decorated with @register_method({name!r})")
    return spec


STEERING_METHODS: Registry[SteeringMethod] = Registry("steering method", BUILTIN_METHODS, accept=_accept)


def register_method(
    name: str,
    *,
    site: str,
    statistics: StatisticsNeed,
    layer_policy: LayerPolicy,
    description: str,
    sites: Sequence[str] | None = None,
    alpha_grid: Sequence[float] = (0.5, 1.0, 2.0),
    **hooks: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register the decorated fit function as method ``name`` (returned unchanged, with
    its spec as ``fn.steering_method``).

    ``hooks``: the other :class:`SteeringMethod` fields (``compare``, ``compare_defaults``,
    ``trainable``, ``call``, ``prepare``, ``corpus_langs``, ``check_params``, ``check_inputs``,
    ``summary``, ``variants``, ``variant_keys``, ``toward_wanted``, ``params``: the settable parameters,
    :mod:`xlsteer.interventions.params`).
    """
    known = {f.name for f in dataclasses.fields(SteeringMethod)}
    unknown = sorted(set(hooks) - known)
    if unknown:
        raise TypeError(f"register_method got unknown field(s) {', '.join(unknown)}")
    if layer_policy.default not in _DEFAULTS or layer_policy.sweep not in _SWEEPS:
        raise ValueError(f"{name}: layer policy default must be one of {_DEFAULTS} and sweep one of {_SWEEPS}")
    allowed = tuple(sites) if sites is not None else None
    if allowed is not None and site not in allowed:
        raise ValueError(f"{name}: the default site {site} is not among the allowed sites {allowed}")
    grid = tuple(float(a) for a in alpha_grid)
    if not grid:
        raise ValueError(f"{name}: give at least one strength in alpha_grid")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        spec = SteeringMethod(name=name, fit=fn, description=description, site=site, sites=allowed,
                              statistics=statistics, layer_policy=layer_policy, alpha_grid=grid, **hooks)
        STEERING_METHODS.register(name, spec, defined_by=fn)
        fn.steering_method = spec  # type: ignore[attr-defined]
        return fn

    return decorate


@contextlib.contextmanager
def registered(name: str, fn: Callable[..., Any], **spec: Any) -> Iterator[SteeringMethod]:
    """``register_method(name, **spec)(fn)`` for the duration of a ``with`` block, then removed."""
    register_method(name, **spec)(fn)
    try:
        yield STEERING_METHODS.get(name)
    finally:
        STEERING_METHODS.unregister(name)


def method_names() -> list[str]:
    """Every registered method: the built-ins in their order, then the others as registered."""
    return STEERING_METHODS.names()


def get_method(name: str) -> SteeringMethod:
    spec = STEERING_METHODS.find(name)
    if spec is None:
        raise UsageError(f"unknown method '{name}'; choose one of {', '.join(method_names())}")
    return spec


def method_for(intervention: Any) -> SteeringMethod | None:
    """The registered method that fitted ``intervention`` (``params["fit"]`` when set: steering
    vectors record diffmean or learned there; else its class's method name), or None."""
    name = intervention.params.get("fit")
    return STEERING_METHODS.find(name if isinstance(name, str) else intervention.method)


def method_plugin(intervention: Any) -> Any:
    """The plugin (:class:`xlsteer.registry.PluginOrigin`) that registered ``intervention``'s fit method, or None."""
    name = intervention.params.get("fit")
    return STEERING_METHODS.origin(name if isinstance(name, str) else intervention.method)


def method_table(names: Sequence[str] | None = None) -> str:
    """The reST table of methods, sites, default layers and statistics (``fit``'s docstring holds it)."""
    specs = [get_method(n) for n in (names if names is not None else method_names())]
    rows = [("method", "site", "layers (None)", "statistics")]
    rows += [(s.name, s.site, s.layer_policy.describe(), s.statistics.what) for s in specs]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths)).rstrip(), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows[1:]]
    return "\n".join([*lines, rule])
