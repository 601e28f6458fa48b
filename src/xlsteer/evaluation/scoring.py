"""From rendered requests to per-item records, one function per request kind.

Why here and not in each task: every task of a kind is scored the same way (the same
log-likelihood rule as lm-eval for choices, argmax over label tokens for labels), so a new
task declares its kind and never re-implements scoring; generation tasks bring their own
``TaskSpec.score`` (a number, an exact string, SQuAD F1...).

Each record holds: id, lang, gold, prediction, correct, ``scores`` (the per-item value of every
metric and continuous score of the task) and what the model produced (per-choice log-probs,
the label log-probs, or the generated text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UsageError
from . import metrics as M
from .guard import guard_scores
from .sampling import Sampling
from .tasks.spec import TaskSpec


@dataclass(frozen=True)
class ScoringCall:
    """What every engine call of one evaluation shares: the edit and the cache scope."""

    interventions: Any
    positions: str | None
    anchor: str | None
    scope: dict[str, Any]
    #: changes to the requests' decoding settings (``EvalConfig.sampling``; empty: as the template says)
    sampling: Mapping[str, Any] = field(default_factory=dict)

    def decoding(self, req: Any) -> Sampling:
        """The decoding settings of a generation request after this call's changes."""
        return Sampling.of(req.sampling, self.sampling)

    def kwargs(self, keys: Sequence[str]) -> dict[str, Any]:
        return dict(interventions=self.interventions, positions=self.positions, anchor=self.anchor,
                    keys=list(keys), scope=self.scope)


def softmax(lp: Sequence[float]) -> list[float]:
    a = np.asarray(lp, dtype=np.float64)
    e = np.exp(a - a.max())
    return (e / e.sum()).tolist()


def _json_gold(answer: Any) -> Any:
    if isinstance(answer, (list, tuple)):
        return list(answer)
    if isinstance(answer, (bool, np.bool_)):
        return bool(answer)
    if isinstance(answer, (int, np.integer)):
        return int(answer)
    return answer


def _choice_results(engine: Any, reqs: Sequence[Any], langs: Sequence[str], keys: Sequence[str],
                    call: ScoringCall) -> list[list[tuple]]:
    """Per request, one (logprob, n_tokens, n_chars, is_greedy) per choice; "multiple input"
    requests (one context per choice) are scored as one single-continuation request per context."""
    flat: list[tuple[str, list[str]]] = []
    flat_langs: list[str] = []
    flat_keys: list[str] = []
    spans: list[tuple[int, int, bool]] = []
    for req, lang, key in zip(reqs, langs, keys):
        start = len(flat)
        if req.contexts:
            for i, ctx in enumerate(req.contexts):
                flat.append((ctx, [req.choices[0]]))
                flat_langs.append(lang)
                flat_keys.append(f"{key}#{i}")
        else:
            flat.append((req.context, list(req.choices)))
            flat_langs.append(lang)
            flat_keys.append(key)
        spans.append((start, len(flat), bool(req.contexts)))
    out = engine.loglikelihood(flat, flat_langs, **call.kwargs(flat_keys))
    return [[r[0] for r in out[a:b]] if multi else list(out[a]) for a, b, multi in spans]


def choice_records(engine: Any, items: Sequence[Any], reqs: Sequence[Any], keys: Sequence[str],
                   call: ScoringCall) -> list[dict[str, Any]]:
    """Summed log-likelihood of each choice (acc), per character (acc_norm), margin and p_correct.

    With a single continuation (lm-eval's ``loglikelihood`` tasks) correct means the
    continuation is the model's greedy one, and p_correct is its probability.
    """
    results = _choice_results(engine, reqs, [it.lang for it in items], keys, call)
    records = []
    for it, res in zip(items, results):
        lp = [x[0] for x in res]
        gold = int(it.answer)
        if len(lp) == 1:
            ok = bool(res[0][3])
            margin, p_correct, pred, pred_norm = float(lp[0]), float(np.exp(lp[0])), 0 if ok else -1, 0 if ok else -1
        else:
            sc = M.choice_scores(np.asarray([lp]), np.asarray([gold]))
            pred = int(sc["pred"][0])
            pred_norm = int(np.argmax([x[0] / max(x[2], 1) for x in res]))
            ok, margin, p_correct = bool(sc["correct"][0]), float(sc["margin"][0]), float(sc["p_correct"][0])
        records.append({
            "id": it.id, "lang": it.lang, "gold": gold, "prediction": pred, "prediction_norm": pred_norm,
            "correct": ok, "logprobs": lp, "n_tokens": [x[1] for x in res], "n_chars": [x[2] for x in res],
            "is_greedy": [x[3] for x in res], "margin": margin, "p_correct": p_correct, "probs": softmax(lp),
            "scores": {"acc": float(ok), "acc_norm": float(pred_norm == gold) if len(lp) > 1 else float(ok),
                       "margin": margin, "p_correct": p_correct},
        })
    return records


def label_records(engine: Any, tpl: Any, items: Sequence[Any], reqs: Sequence[Any], keys: Sequence[str],
                  call: ScoringCall, calibrate: bool) -> list[dict[str, Any]]:
    """Argmax over the next-token log-probs of the label tokens (optionally content-free calibrated)."""
    labels = list(reqs[0].labels)
    row_langs = [it.lang for it in items]
    out = engine.label_logits([r.prompt for r in reqs], labels, row_langs, **call.kwargs(keys))
    cf: dict[str, list[float]] = {}
    if calibrate:
        cf_langs = sorted(set(row_langs), key=row_langs.index)
        cf_out = engine.label_logits([tpl.content_free(lang).prompt for lang in cf_langs], labels, cf_langs,
                                     **call.kwargs([f"{lang}/content-free" for lang in cf_langs]))
        cf = dict(zip(cf_langs, cf_out))
    records = []
    for it, lp in zip(items, out):
        score = [a - b for a, b in zip(lp, cf[it.lang])] if calibrate else list(lp)
        sc = M.choice_scores(np.asarray([score]), np.asarray([it.answer]))
        rec = {
            "id": it.id, "lang": it.lang, "gold": int(it.answer), "prediction": int(sc["pred"][0]),
            "correct": bool(sc["correct"][0]), "logprobs": list(lp),
            "margin": float(sc["margin"][0]), "p_correct": float(sc["p_correct"][0]), "probs": softmax(score),
            "scores": {"acc": float(sc["correct"][0]), "margin": float(sc["margin"][0]),
                       "p_correct": float(sc["p_correct"][0])},
        }
        if calibrate:
            rec["logprobs_calibrated"] = score
            rec["content_free_logprobs"] = list(cf[it.lang])
        records.append(rec)
    return records


def prompt_text(tokenizer: Any, req: Any) -> str:
    """The text a generate request sends: its prompt, or its conversation rendered with the
    tokenizer's chat template (with the generation prompt). The engine encodes prompts with the
    tokenizer's special tokens, so a BOS the template writes itself is left to the encoder:
    encoding the result gives exactly ``apply_chat_template(..., tokenize=True)``."""
    if not getattr(req, "messages", ()):
        return req.prompt
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("this template renders a conversation with the model's chat template, but the tokenizer "
                         "has none; choose a plain-text template (e.g. lcb-qa for a base model)")
    text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in req.messages], tokenize=False,
                                         add_generation_prompt=True)
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if bos and text.startswith(bos) and bos_id is not None:
        probe = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        if probe and probe[0] == bos_id:
            text = text[len(bos):]
    return text


def generation_records(engine: Any, spec: TaskSpec, items: Sequence[Any], reqs: Sequence[Any],
                       keys: Sequence[str], call: ScoringCall) -> list[dict[str, Any]]:
    """Generation (greedy, or as the requests' sampling settings say), scored by the task's ``score``.

    Each item's language is its row language: the language its answer is wanted in, which is
    what steering and the script gate route by. A task with the quality guard
    (``spec.quality_guard``) also gets each output's fluency and degeneration
    (:mod:`xlsteer.evaluation.guard`) among its scores.
    """
    assert spec.score is not None
    r0 = reqs[0]
    prompts = [prompt_text(engine.tokenizer, r) for r in reqs]
    out = engine.generate(prompts, [it.lang for it in items], r0.max_new_tokens, list(r0.stop), **call.kwargs(keys),
                          sampling=call.decoding(r0))
    guard = (guard_scores(engine, prompts, out, [it.lang for it in items], keys, call.scope)
             if spec.quality_guard else [{}] * len(items))
    records = []
    for it, text, g in zip(items, out, guard):
        s = spec.score(it, text)
        rec = {"id": it.id, "lang": it.lang, "gold": _json_gold(it.answer), "generated": text,
               "prediction": s.prediction, "correct": bool(s.correct),
               "scores": {**{k: float(v) for k, v in s.scores.items()}, **g}}
        if s.details is not None:
            rec["details"] = dict(s.details)
        records.append(rec)
    return records
