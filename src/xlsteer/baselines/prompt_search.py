"""Prompt optimisation baseline: search an instruction on dev, report the winner on test.

What a practitioner would do instead of steering: put an instruction in front of the prompt
and pick the one that works best. The search (in the spirit of APE / OPRO, kept small and
deterministic):

1. Candidates start as hand-written seed instructions for the task (its
   ``BaselineHints.instructions``), plus the empty instruction (the zero-shot prompt itself: if nothing beats it, the search says so).
2. Every candidate is scored on the ``dev`` split (``dev_limit`` items per language): the mean
   main metric (accuracy / EM / F1) over the non-anchor languages, ties broken by the task's
   continuous score (mean margin for choice tasks), then by the shorter instruction, then
   by candidate order. The top instruction replaces the empty one only when its dev gain is
   distinguishable from noise (:mod:`xlsteer.evaluation.evidence`, the rule every selection
   uses; the settings tried are the instructions scored).
3. For ``rounds`` rounds, the model itself proposes paraphrases of the ``n_parents`` best
   instructions so far (greedy generation, one line, through a few fixed meta-prompts,
   :data:`META_PROMPTS`); the first ``per_round`` new, well-formed ones are scored too.
4. The best candidate is evaluated on ``test``. Every candidate, its origin (seed or the
   parent and meta-prompt it came from) and its dev scores are recorded.

The search never scores test items: :func:`search` refuses ``split="test"`` and only calls the
task loader for the search split (tests instrument the loader to check this).

Placement: the instruction is put first, followed by a blank line (a newline for XCOPA), then
the task's unchanged prompt. Extra inference tokens per item = the tokens of that prefix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import UsageError
from ..evaluation.config import EvalConfig
from ..evaluation.tasks import get_task, get_template
from ..evaluation.templates import Request, Template
from ..settings import Settings
from .icl import LeakError, base_render, prefix_tokens, with_prefix, wrap_template

# The hand-written seed instructions (English: the anchor language) and the text that separates
# an instruction from the prompt are each task's BaselineHints (instructions, instruction_separator).

#: How the model is asked to propose a new instruction ({x} = a current instruction).
META_PROMPTS: tuple[str, ...] = (
    "Paraphrase the instruction.\nInstruction: {x}\nParaphrase:",
    "Write a clearer and more helpful version of this instruction for a language model.\nInstruction: {x}\nBetter instruction:",
    "Instruction: {x}\nThe same instruction in other words:",
)

MAX_INSTRUCTION_CHARS = 300


def instruction_template(task: str, instruction: str, template: str | Template | None = None,
                         extra: dict[str, Any] | None = None) -> Template:
    """The task's template with ``instruction`` in front of every prompt (unchanged when empty)."""
    spec = get_task(task)
    base = get_template(spec, template)
    sep = spec.baselines.instruction_separator
    prefix = instruction.strip() + sep if instruction.strip() else ""

    def render(t: Template, item: Any, exemplars: Sequence[Any]) -> Request:
        return with_prefix(base_render(t, item, exemplars), prefix)

    info = {"method": "prompt-opt", "instruction": instruction.strip(), "separator": sep, **(extra or {})}
    return wrap_template(base, render, info)


def clean_proposal(text: str) -> str | None:
    """A proposed instruction, trimmed; None when unusable (empty, too short or too long)."""
    s = text.strip().strip('"').strip("'").strip()
    s = s.split("\n", 1)[0].strip()
    if len(s.split()) < 3 or len(s) > MAX_INSTRUCTION_CHARS:
        return None
    return s


def propose(lm: Any, parents: Sequence[str], *, max_new_tokens: int = 40, batch_size: int = 8,
            meta_prompts: Sequence[str] = META_PROMPTS) -> list[dict[str, Any]]:
    """The model's proposals for every (parent, meta-prompt), greedy, one line each."""
    from ..evaluation.engine import Engine

    pairs = [(p, m) for p in parents for m in meta_prompts]
    if not pairs:
        return []
    prompts = [m.format(x=p) for p, m in pairs]
    engine = Engine(lm, batch_size=batch_size, progress_desc="propose")
    outs = engine.generate(prompts, ["en"] * len(prompts), max_new_tokens, ["\n"])
    out = []
    for (p, m), text, prompt in zip(pairs, outs, prompts):
        out.append({"parent": p, "meta_prompt": meta_prompts.index(m), "raw": text, "instruction": clean_proposal(text),
                    "prompt_tokens": prefix_tokens(lm, prompt), "generated_tokens": prefix_tokens(lm, text)})
    return out


def _rank_key(c: dict[str, Any]) -> tuple:
    return (-c["dev_score"], -c["dev_tie_break"], len(c["instruction"]), c["index"])


@dataclass
class _Pool:
    """The scored candidates: each instruction scored once (case-insensitively) on dev, in order."""

    lm: Any
    spec: Any
    langs: list[str]
    targets: list[str]
    template: Any
    cfg: Any
    engine: Any
    candidates: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    items: dict[int, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # per candidate, by language
    metrics: dict[str, Any] = field(default_factory=dict)

    def _mean(self, res: dict[str, Any], name: str | None) -> float:
        if name is None:
            return 0.0
        vals = []
        for lang in self.targets:
            d = res["per_lang"][lang]
            vals.append((d["metrics"] if name in d["metrics"] else d["continuous"])[name]["mean"])
        return float(np.mean(vals))

    def score(self, instruction: str, origin: dict[str, Any]) -> None:
        from ..evaluation.runner import run_task

        key = instruction.strip().casefold()
        if key in self.seen:
            return
        self.seen.add(key)
        tpl = instruction_template(self.spec.name, instruction, self.template)
        res = run_task(self.lm, self.spec, self.langs, None, self.cfg, template=tpl, engine=self.engine)
        per = {lang: res["per_lang"][lang]["metrics"][self.spec.main]["mean"] for lang in self.langs}
        self.items[len(self.candidates)] = {lang: [r for r in res["items"] if r["lang"] == lang] for lang in self.langs}
        self.metrics = res["metrics"]
        self.candidates.append({
            "index": len(self.candidates), "instruction": instruction.strip(), **origin,
            "dev_score": float(np.mean([per[lang] for lang in self.targets])),
            "dev_tie_break": self._mean(res, self.spec.tie_break),
            "dev_per_lang": per, "dev_n_items": res["item_ids"]["per_lang"],
        })


def _paraphrase_rounds(pool: _Pool, rounds: int, per_round: int, n_parents: int, propose_tokens: int,
                       batch_size: int) -> tuple[list[dict[str, Any]], int]:
    """Each round: the model paraphrases the best instructions; up to ``per_round`` new ones are scored."""
    log: list[dict[str, Any]] = []
    tokens = 0
    for r in range(1, rounds + 1):
        # the best non-empty instructions (the empty one has nothing to paraphrase)
        parents = [c["instruction"] for c in sorted(pool.candidates, key=_rank_key) if c["instruction"]][:n_parents]
        props = propose(pool.lm, parents, max_new_tokens=propose_tokens, batch_size=batch_size)
        tokens += sum(p["prompt_tokens"] + p["generated_tokens"] for p in props)
        added = 0
        for p in props:
            log.append({"round": r, **{k: p[k] for k in ("parent", "meta_prompt", "raw", "instruction")}})
            if added >= per_round or p["instruction"] is None or p["instruction"].casefold() in pool.seen:
                continue
            pool.score(p["instruction"], {"source": "paraphrase", "round": r, "parent": p["parent"],
                                          "meta_prompt": p["meta_prompt"]})
            added += 1
    return log, tokens


def _choose(pool: _Pool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the chosen candidate, the evidence): the top instruction on dev, or the empty one (the
    zero-shot prompt) when the top one's gain over it is not distinguishable from noise."""
    from ..evaluation.evidence import decide, gain_evidence
    from ..evaluation.summary import metrics_from_record

    ranked = sorted(pool.candidates, key=_rank_key)
    empty = next((c for c in pool.candidates if not c["instruction"]), None)
    top = next((c for c in ranked if c["instruction"]), None)
    if empty is None or top is None:
        return ranked[0], None
    metric = next(m for m in metrics_from_record(pool.metrics) if m.name == pool.spec.main)
    ev = gain_evidence(metric, pool.items[empty["index"]], pool.items[top["index"]], pool.targets,
                       seed=pool.cfg.seed, n_boot=pool.cfg.n_boot)
    verdict = decide(pool.cfg.select_rule, ev, sum(1 for c in pool.candidates if c["instruction"]))
    return (top if verdict["steer"] else empty), {**verdict, "tested_instruction": top["instruction"]}


def _seed_list(spec: Any, seeds: Sequence[str] | None, include_empty: bool) -> list[str]:
    seed_list = list(spec.baselines.instructions if seeds is None else seeds)
    if not seed_list and not include_empty:
        raise UsageError(f"task {spec.name} declares no seed instructions; pass seeds=[...] "
                         "(-O prompt-opt.seeds=...)")
    return ["", *seed_list] if include_empty else seed_list


@dataclass(frozen=True)
class SearchConfig(Settings):
    """The budget of a prompt search: ``seeds`` (default: the task's seed instructions) and the
    empty instruction (``include_empty``) first, then ``rounds`` in which the model paraphrases the
    ``n_parents`` best (greedy, ``propose_tokens`` tokens) and the first ``per_round`` new
    instructions are scored; every candidate on the first ``dev_limit`` items per language of
    ``split`` (dev, never test), with ``n_boot`` bootstrap resamples."""

    split: str = "dev"
    dev_limit: int | None = 50
    seeds: Sequence[str] | None = None
    include_empty: bool = True
    rounds: int = 2
    per_round: int = 4
    n_parents: int = 2
    propose_tokens: int = 40
    n_boot: int = 200

    _what = "prompt-search setting"
    _none_is_a_value = frozenset({"dev_limit", "seeds"})


def search(lm: Any, task: str, langs: Sequence[str], cfg: SearchConfig | None = None,
           evaluation: EvalConfig | None = None, **settings: Any) -> dict[str, Any]:
    """Score seeds and model-proposed paraphrases on dev; return the record with the best.

    ``cfg`` (:class:`SearchConfig`; keyword ``settings`` override its fields) is the budget;
    ``evaluation`` gives the anchor, data dir, base template, seed, batch size, maximum length and
    cache of the dev evaluations (their split, limit and bootstrap come from ``cfg``).
    """
    from ..evaluation.engine import Engine

    cfg = SearchConfig.of(cfg, **settings)
    base = evaluation or EvalConfig()
    if cfg.split == "test":
        raise LeakError("prompt search selects a prompt and must not score test items; use split='dev'")
    spec = get_task(task)
    spec.check_split(cfg.split)
    for name in ("rounds", "per_round", "n_parents"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 0:
            raise UsageError(f"{name} must be a non-negative integer, got {v!r}")
    t0 = time.perf_counter()
    seed_list = _seed_list(spec, cfg.seeds, cfg.include_empty)
    targets = [lang for lang in langs if lang != base.anchor] or list(langs)
    dev = EvalConfig(split=cfg.split, limit=cfg.dev_limit, anchor=base.anchor, data_dir=base.data_dir, seed=base.seed,
                     n_boot=cfg.n_boot, select_rule=base.select_rule)
    engine = Engine(lm, batch_size=base.batch_size, cache_dir=base.cache_dir, max_length=base.max_length,
                    progress_desc="prompt-search")
    pool = _Pool(lm, spec, list(langs), targets, base.template, dev, engine)
    for s in seed_list:
        pool.score(s, {"source": "seed" if s else "empty", "round": 0})
    proposals_log, gen_tokens = _paraphrase_rounds(pool, cfg.rounds, cfg.per_round, cfg.n_parents,
                                                   cfg.propose_tokens, base.batch_size)
    best, evidence = _choose(pool)
    return {
        "format": "xlsteer.prompt-search", "task": spec.name, "split": cfg.split, "dev_limit": cfg.dev_limit,
        "langs": list(langs), "scored_langs": targets, "main": spec.main, "tie_break": spec.tie_break,
        "selection_rule": "max mean main metric over non-anchor languages on dev; ties: tie-break score, "
                          "shorter instruction, earlier candidate; it replaces the empty instruction only under "
                          "the evidence rule: " + dev.select_rule.describe(),
        "budget": {"seeds": len(seed_list), "rounds": cfg.rounds, "per_round": cfg.per_round,
                   "n_parents": cfg.n_parents, "meta_prompts": list(META_PROMPTS),
                   "candidates_scored": len(pool.candidates)},
        "candidates": pool.candidates,
        "proposals": proposals_log,
        "best": {"instruction": best["instruction"], "index": best["index"], "dev_score": best["dev_score"],
                 "source": best["source"], "evidence": evidence},
        "search_seconds": round(time.perf_counter() - t0, 3),
        "proposal_tokens": gen_tokens,
    }


def run_prompt_search(lm: Any, task: str, langs: Sequence[str], evaluation: EvalConfig,
                      cfg: SearchConfig | None = None) -> dict[str, Any]:
    """Search on dev (:func:`search`), evaluate the winning instruction as ``evaluation`` says (its
    split: test); the search record is in ``results["prompt_search"]``."""
    from ..evaluation.runner import run_task

    record = search(lm, task, langs, cfg, evaluation)
    tpl = instruction_template(task, record["best"]["instruction"], evaluation.template,
                               {"selected_on": "dev", "dev_score": record["best"]["dev_score"]})
    res = run_task(lm, task, langs, None, evaluation.replace(template=tpl))
    res["prompt_search"] = record
    return res
