"""EvalConfig: every setting of one evaluation, in one typed record.

Why: an evaluation has a dozen settings (split, limit, anchor, template, seed, cache, batch
size...) that used to be threaded as keyword arguments through the runner, the sweep, the
selection and every baseline; one frozen record passes them whole, checks them once, and
``replace`` derives the variants a sweep needs (the dev split, a smaller bootstrap).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import UsageError
from ..settings import Settings
from .evidence import SelectionRule

POSITIONS = ("all", "prompt", "generated", "last_prompt")


@dataclass(frozen=True)
class EvalConfig(Settings):
    """How to evaluate (not what: the model, task, languages and interventions are arguments).

    ``limit``: the first N items per language; ``template`` (a name or Template) and
    ``template_options`` (e.g. ``k`` for MGSM); ``seed`` and ``n_boot`` for the bootstrap CIs;
    ``cache_dir``: the per-item cache (None: no cache); ``calibrate``: content-free calibration
    of label tasks; ``positions``: which token positions an intervention edits (None: the policy
    the intervention stores); ``sampling``: decoding changes for generation tasks (e.g.
    ``{"temperature": 0}`` for greedy, ``{"gate": "script"}`` for the script gate); ``compile``:
    generation with a static KV cache and a compiled decode step (``True``, ``False``, ``"auto"``:
    on CUDA; or a torch.compile backend name), the same tokens as eager; ``scoring``: how
    log-likelihoods are computed (``"auto"``: per batch, the cheaper of ``"shared_prefix"`` and
    ``"full_forward"`` on this device), the same scores; ``select_rule``: how a sweep decides
    whether a steered setting replaces the unsteered model (:class:`~.evidence.SelectionRule`;
    evaluations ignore it).
    """

    split: str = "test"
    limit: int | None = None
    anchor: str = "en"
    data_dir: str | os.PathLike | None = None
    template: Any = None
    template_options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    n_boot: int = 2000
    cache_dir: str | os.PathLike | None = None
    calibrate: bool = False
    positions: str | None = None
    batch_size: int = 8
    max_length: int = 2048
    select_rule: SelectionRule = field(default_factory=SelectionRule)
    #: changes to the generation template's decoding settings (:class:`~.sampling.Sampling` fields:
    #: temperature, top_p, seed, gate); empty: decode as the template says (greedy for most tasks)
    sampling: Mapping[str, Any] = field(default_factory=dict)
    #: the quality guard (fluency, degeneration) of generation tasks: None as the task declares it
    guard: bool | None = None
    compile: bool | str = "auto"
    scoring: str = "auto"

    _what = "evaluation setting"
    _none_is_a_value = frozenset({"limit", "data_dir", "template", "cache_dir", "positions", "anchor"})

    def __post_init__(self) -> None:
        from .engine_compiled import BACKENDS
        from .sampling import Sampling
        from ..validation import check_limit
        from .scoring_strategy import STRATEGIES

        if self.compile not in (True, False, "auto", *BACKENDS):
            raise UsageError(f"compile must be true, false, auto or one of {', '.join(BACKENDS)}, got {self.compile!r}")
        if self.scoring not in ("auto", *STRATEGIES):
            raise UsageError(f"scoring must be auto or one of {', '.join(STRATEGIES)}, got {self.scoring!r}")

        check_limit(self.limit)
        if not isinstance(self.sampling, Mapping):
            raise UsageError(f"sampling must be a mapping of Sampling fields, got {type(self.sampling).__name__}")
        Sampling.of(None, self.sampling)  # the names and values are checked once, here
        if self.positions is not None and self.positions not in POSITIONS:
            raise UsageError(f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        for name in ("batch_size", "max_length", "n_boot"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.select_rule, SelectionRule):
            raise UsageError(f"select_rule must be a SelectionRule, got {self.select_rule!r}")
