"""The quality guard of generation tasks: is the text still fluent, or did steering buy its score with loops?

Why: a language-fidelity pass rate (or any generation score) can rise while the text turns into
a loop of one phrase; a gain is only worth reporting next to what happened to the text. Two
per-item continuous scores, paired on the same items as the task's metrics (so every result
gets their CIs, the paired permutation test against the unsteered run, Holm, the tables and the report):

``fluency``       the mean log-likelihood per token (nats) of the generated output under the
                  *unsteered* model given the prompt: one :meth:`Engine.loglikelihood` pass with
                  no intervention, ``(prompt, [output])``, tokenised as lm-eval does (the
                  output's tokens are those of prompt + output after the prompt's). Cached like
                  every engine result: the key is the item's key plus a hash of the output, so
                  two methods that wrote the same text share it. An empty (or whitespace-only)
                  output (EOS or a stop sequence first) carries no evidence of fluency and scores ``-ln(V)``, the
                  per-token log-likelihood of a uniform guess over the vocabulary of V tokens:
                  silencing the model must not look fluent. Read it as "how plausible is this
                  text as an answer to this prompt for the unsteered model": when the prompt does
                  not itself ask for the wanted language, switching language lowers it too
                  (measured: English prompts continued in German, -1.38 -> -3.20 nats/token at
                  a seq-rep-4 of 0.01), so a fluency drop alone is not degeneration; the two
                  scores are read together.
``degeneration``  seq-rep-4 (Welleck et al., 2020, "Neural Text Generation with Unlikelihood
                  Training", ICLR 2020): the share of the output's 4-grams of model tokens that
                  repeat an earlier 4-gram of the same output, ``1 - |unique 4-grams| / |4-grams|``;
                  0 for an output of fewer than 4 tokens. 0 = no repetition, near 1 = a loop.
                  Model tokens rather than words, so that Chinese and Japanese count alike.

A generation task declares the guard (``TaskSpec.quality_guard``, e.g. ``lcb``); any generation
task gets it with ``EvalConfig(guard=True)`` (CLI ``--guard``): :func:`guarded` returns the task
spec with the two scores among its continuous ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Sequence

from ..errors import UsageError
from .tasks.spec import GUARD_CONTINUOUS, TaskSpec

FLUENCY, DEGENERATION = GUARD_CONTINUOUS
REP_N = 4
#: What the scores mean, for result files and docs (one line each).
DEFINITIONS = {
    FLUENCY: "mean log-likelihood per token (nats) of the output under the unsteered model given the prompt; "
             "empty output: -ln(vocabulary size)",
    DEGENERATION: f"seq-rep-{REP_N} (Welleck et al. 2020): share of repeated {REP_N}-grams of model tokens in the "
                  f"output; 0 below {REP_N} tokens",
}


def guarded(spec: TaskSpec, guard: bool | None) -> TaskSpec:
    """``spec`` with the guard on or off as ``guard`` says (None: as the task declares)."""
    if guard is None or bool(guard) == spec.quality_guard:
        return spec
    if guard and spec.kind != "generate":
        raise UsageError(f"the quality guard scores generated text; task {spec.name} is not a generation task "
                         "(drop --guard)")
    return dataclasses.replace(spec, quality_guard=bool(guard))


def seq_rep_n(tokens: Sequence[int], n: int = REP_N) -> float:
    """``1 - |unique n-grams| / |n-grams|`` of one token sequence (0 when it has no n-gram)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def _text_key(key: str, text: str) -> str:
    return f"{key}@{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


def guard_scores(engine: Any, prompts: Sequence[str], texts: Sequence[str], langs: Sequence[str],
                 keys: Sequence[str], scope: dict[str, Any]) -> list[dict[str, float]]:
    """Per output ``{"fluency", "degeneration"}`` (see the module docstring); one unsteered pass."""
    floor = -math.log(max(2, len(engine.tokenizer)))
    todo = [i for i, t in enumerate(texts) if t.strip()]  # whitespace only: no text, scored as empty
    lls = engine.loglikelihood([(prompts[i], [texts[i]]) for i in todo], [langs[i] for i in todo], None,
                               keys=[_text_key(keys[i], texts[i]) for i in todo],
                               scope={**scope, "guard": "fluency/1"}) if todo else []
    fluency = [floor] * len(texts)
    for i, res in zip(todo, lls):
        lp, n_tokens, _, _ = res[0]
        fluency[i] = lp / n_tokens
    out = []
    for text, flu in zip(texts, fluency):
        tokens = engine.tokenizer(text, add_special_tokens=False)["input_ids"] if text.strip() else []
        out.append({FLUENCY: float(flu), DEGENERATION: seq_rep_n(list(tokens))})
    return out
