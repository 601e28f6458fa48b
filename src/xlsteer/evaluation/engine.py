"""Batched scoring and generation, steered or not through the same code path, with a per-item disk cache.

Three request types (what lm-eval calls loglikelihood / generate_until, plus next-token labels):

:meth:`Engine.loglikelihood`  ``(context, [continuation, ...])`` -> per continuation
    ``(sum_logprob, n_tokens, n_chars, is_greedy)``. The shared context is run once: the
    left-padded contexts go through the model with ``use_cache=True``; the KV cache is then
    repeated per continuation (``Cache.batch_select_indices`` with repeated row indices, i.e.
    ``batch_repeat_interleave`` generalised to a varying number of choices) and the
    right-padded continuations are scored against it with the concatenated attention mask and
    position ids from that mask (:func:`xlsteer.stats.positions_from_mask`). The first
    continuation token is scored from the context's last logits; the last continuation token
    is never fed (nothing is scored from it). This equals scoring each full sequence alone
    (tests/test_engine.py, fp32, atol 1e-4).

    Tokenisation follows lm-eval: trailing whitespace of the context moves to the
    continuation, then ``whole = encode(context + continuation)``, ``ctx = encode(context)``
    and the continuation tokens are ``whole[len(ctx):]``, i.e. the full-string tokenisation
    split at the context boundary. Where a tokenizer merges characters across that boundary,
    ``whole[:len(ctx)]`` differs from ``ctx``; like lm-eval the model then sees ``ctx`` +
    tail (``Engine.boundary_mismatches`` counts such requests). Over-long inputs lose
    context tokens from the left (``Engine.truncated`` counts them).

:meth:`Engine.label_logits`  next-token log-probs (over the whole vocabulary) of a few single-token
    labels after each prompt: one forward, logits only at the last position.

:meth:`Engine.generate`  batched decoding with the KV cache and left padding, greedy by default or
    nucleus sampling (:class:`~xlsteer.evaluation.sampling.Sampling`: each row draws from its own
    random stream seeded by its cache key, so its text does not depend on its batch); a row stops
    at EOS or when its text contains a stop sequence (the text is cut at the first one); the
    batch stops when every row has stopped or after ``max_new_tokens``. Deterministic. With
    ``compile`` (``True``, a backend name, or ``"auto"``: on CUDA) decode steps run compiled on a
    static KV cache the engine keeps across calls (:mod:`.engine_compiled`), with the same tokens.

Steering: every call runs inside one ``steer(model, interventions, anchor=...)`` context
(interventions=None installs only the root hook, so steered and unsteered runs share every
line of code); each forward call gets its rows' languages via ``session.set_langs``. In
:meth:`loglikelihood` the context is the *prompt* and continuation tokens count as *generated*
for the position policies (as if the model produced the answer): ``last_prompt`` steers the
last context token, ``prompt`` leaves the continuation alone.

Cache: with ``cache_dir`` and per-request ``keys``, each result is appended (per batch, with
flush + fsync) to a JSONL file under ``cache_dir`` whose name is a hash of the scope: model
fingerprint, the caller's scope (task, template name/version/options), request kind and its
parameters, intervention hash (tensors + metadata without strength, creation times or fit
durations), strengths, position policy and anchor; each line holds one key (e.g. language +
item id). An interrupted run resumes where it stopped, a re-run reads everything back, a torn
last line (a kill during a write) is dropped. Pending requests are batched in a fixed order
(most expensive first: for log-likelihoods the context length plus the choices' longest
continuation weighted by :func:`_continuation_weight`) and per language (a batch never mixes
languages), so a resumed run forms the same batches as an uninterrupted one, and a language's
results do not depend on which other rows are computed or served from the cache. The batch
size is not part of the key (it changes scores only at float rounding level). One writer per
cache file at a time.

Out of memory: a batch that raises ``torch.OutOfMemoryError`` (or ``MemoryError``) is run
again in halves, down to single requests, and later batches keep the reduced size
(``Engine.oom_batch_size``); only a single request that does not fit is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..distributed import current as current_dist
from ..errors import UsageError, XlsteerError
from ..hook_session import POSITION_POLICIES
from ..hooks import steer
from ..progress import bar
from ..settings import Settings
from .engine_cache import _as_list, _CacheLookup
from .engine_compiled import CompiledDecoder, compile_backend
from .engine_forward import _continuation_weight, _ForwardPasses, _input_device
from .engine_scoring import _LogLikelihood
from .sampling import GREEDY, RowDecoding, Sampling
from .scoring_strategy import STRATEGIES, ForwardCost

LLResult = tuple[float, int, int, bool]


def _label_logprobs(value: Any, n: int) -> list[float]:
    """A cached labels result: one log-probability (not NaN or +inf) per label."""
    out = [float(x) for x in value]
    if len(out) != n or any(x != x or x == float("inf") for x in out):
        raise ValueError(f"not {n} label log-probabilities")
    return out


def _check_fresh(decode: Callable[[Any, int], Any], value: Any, i: int, kind: str) -> None:
    """A fresh result passes the checks a cached one must pass (so NaN is never cached or saved)."""
    try:
        decode(json.loads(json.dumps(value)), i)
    except (TypeError, ValueError) as e:
        raise XlsteerError(f"the model produced non-finite {kind} results ({e}); the steering strength may be "
                           "too large (try a smaller --alpha), or the model's weights are broken") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a generation is a string")
    return value


@dataclass(frozen=True)
class EngineCall(Settings):
    """How one engine call is steered and cached: the ``interventions`` (None: the unsteered
    model), their position policy (None: the policy each stores), the ``anchor`` (its rows are
    never steered; None steers every row), and the per-item cache ``keys`` and ``scope``."""

    interventions: Any = None
    positions: str | None = None
    anchor: str | None = "en"
    keys: Sequence[str] | None = None
    scope: dict[str, Any] | None = None

    _what = "engine call setting"
    _none_is_a_value = frozenset({"interventions", "positions", "anchor", "keys", "scope"})


class Engine(_CacheLookup, _ForwardPasses, _LogLikelihood):
    """Batched log-likelihood, label and generation requests on a :class:`LoadedModel`."""

    def __init__(
        self,
        lm: Any,
        batch_size: int = 8,
        cache_dir: str | os.PathLike | None = None,
        max_length: int = 2048,
        progress_desc: str = "eval",
        compile: bool | str = "auto",
        scoring: str = "auto",
    ):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
        if not isinstance(max_length, int) or max_length < 2:
            raise UsageError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.lm = lm
        self.model = lm.model
        self.tokenizer = lm.tokenizer
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_length = max_length
        self.progress_desc = progress_desc
        self.device = _input_device(self.model)
        self.compile_backend = compile_backend(compile, self.device)  # None: eager generation
        self._decoder: CompiledDecoder | None = None
        if scoring not in ("auto", *STRATEGIES):
            raise UsageError(f"scoring must be auto or one of {', '.join(STRATEGIES)}, got {scoring!r}")
        self.scoring = scoring
        self._cost: ForwardCost | None = None  # the device's forward cost model, made when first needed
        #: log-likelihood requests by the strategy that scored them (cache hits: as recorded there)
        self.scored_by: Counter[str] = Counter()
        self._how: dict[int, str] = {}  # request index -> strategy, for the batch just computed
        self.step_stamps: list[float] | None = None  # benchmarks: a list gets each decode step's time
        tok = self.tokenizer
        pad = tok.pad_token_id
        if pad is None:
            pad = tok.eos_token_id if tok.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.eos_id = tok.eos_token_id
        self.prefix_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.truncated = 0
        self.boundary_mismatches = 0
        self.computed = 0  # requests actually run through the model (not read from the cache)
        self.oom_batch_size: int | None = None  # the reduced batch size after an out-of-memory error
        self.oom_retries = 0  # batches re-run in smaller chunks after an out-of-memory error
        fp = json.dumps(lm.fingerprint, sort_keys=True, default=str)
        self.model_hash = hashlib.sha256(fp.encode("utf-8")).hexdigest()
        self.continuation_weight = _continuation_weight(self.model)
        self._head_path: bool | None = None  # real-position unembedding verified (None: not yet)
        self._keep_none: bool | None = None  # the model takes an empty logits_to_keep tensor (None: not tried)

    @classmethod
    def for_config(cls, lm: Any, cfg: Any, progress_desc: str = "eval") -> "Engine":
        """The engine an :class:`~xlsteer.evaluation.config.EvalConfig` describes."""
        return cls(lm, batch_size=cfg.batch_size, cache_dir=cfg.cache_dir, max_length=cfg.max_length,
                   progress_desc=progress_desc, compile=cfg.compile, scoring=cfg.scoring)

    # ---- shared machinery ---------------------------------------------------------------

    def _compiled_decoder(self) -> CompiledDecoder:
        """The compiled decode step and its static caches, made at the first generation call."""
        if self._decoder is None:
            self._decoder = CompiledDecoder(self.model, self.compile_backend, self.device)  # type: ignore[arg-type]
        return self._decoder

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _run(
        self,
        kind: str,
        n: int,
        langs: Sequence[str],
        interventions: Any,
        positions: str,
        anchor: str | None,
        keys: Sequence[str] | None,
        scope: dict[str, Any] | None,
        params: dict[str, Any],
        order: Callable[[int], Any],
        batch_fn: Callable[[Any, list[int]], list[Any]],
        decode: Callable[[Any, int], Any],
    ) -> list[Any]:
        from ..interventions.base import default_positions

        positions = default_positions(interventions, positions)  # None: the policy the interventions store
        if positions not in POSITION_POLICIES:
            raise UsageError(f"unknown position policy '{positions}'; choose one of {', '.join(POSITION_POLICIES)}")
        if len(langs) != n:
            raise UsageError(f"got {len(langs)} languages for {n} requests; give one language per request")
        if keys is not None:
            if len(keys) != n:
                raise UsageError(f"got {len(keys)} cache keys for {n} requests; give one key per request")
            if len(set(keys)) != n:
                raise UsageError("cache keys must be unique (e.g. language + item id)")
        ivs = _as_list(interventions)
        self._how = {}
        results, universe, store = self._cached(kind, params, scope, ivs, positions, anchor, langs, keys, decode)
        dist = current_dist()
        if store is not None:
            dist.barrier()  # every process has read the cache before any of them appends to it
        todo = sorted((i for i in universe if results[i] is None), key=order)
        if not todo:
            self._count_strategies(kind, n)
            return results
        # Batches never mix languages: a row's result depends (in the last float bits) on the rows
        # it is batched and padded with, so a language gets the same batches whichever other rows
        # run -- anchor rows served from the unsteered cache, other languages requested or not --
        # and its results are bit-identical. All processes form the same batches as one process;
        # this one runs batch k when k % world == rank.
        batches = []
        for lang in dict.fromkeys(langs):
            rows = [i for i in todo if langs[i] == lang]
            batches += [rows[s:s + self.batch_size] for s in range(0, len(rows), self.batch_size)]
        mine = [b for k, b in enumerate(batches) if dist.owns(k)]
        fresh: dict[int, Any] = {}
        with steer(self.model, ivs, anchor=anchor, positions=positions) as session, torch.inference_mode(), \
                bar(sum(len(b) for b in mine), f"{self.progress_desc} {kind}", "item") as pbar:
            for idx in mine:
                out = self._run_batch(batch_fn, session, idx)
                for i, v in zip(idx, out):
                    _check_fresh(decode, v, i, kind)
                for i, v in zip(idx, out):
                    results[i] = v
                    fresh[i] = v
                self.computed += len(idx)
                if store is not None:
                    store.put([(keys[i], v) for i, v in zip(idx, out)], [self._how.get(i) for i in idx])  # type: ignore[index]
                pbar.update(len(idx))
        if dist.active:
            shards = dist.gather((fresh, len(fresh), {i: self._how.get(i) for i in fresh}))
            self.computed += sum(c for _, c, _ in shards) - len(fresh)
            for part, _, how in shards:
                for i, v in part.items():
                    results[i] = v
                self._how.update(how)
        self._count_strategies(kind, n)
        # values round-trip through JSON in the cache: decode fresh ones too, so a cached and a
        # fresh run return exactly the same Python objects
        return [decode(json.loads(json.dumps(r)), i) for i, r in enumerate(results)]

    def _count_strategies(self, kind: str, n: int) -> None:
        """Count the call's log-likelihood requests by strategy (computed now or as the cache records)."""
        if kind == "loglikelihood":
            self.scored_by.update(self._how.get(i) or "unrecorded" for i in range(n))

    # ---- log-likelihood ------------------------------------------------------------------

    def _encode_request(self, context: str, continuations: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        if not continuations:
            raise UsageError("a log-likelihood request needs at least one continuation")
        n_space = len(context) - len(context.rstrip())
        moved = context[len(context) - n_space:] if n_space else ""
        ctx_text = context[: len(context) - n_space]
        ctx = self._encode(ctx_text) if ctx_text else []
        if not ctx:
            if self.prefix_id is None:
                raise UsageError("empty context and the tokenizer has no BOS/EOS token to start from; give a context")
            ctx = [int(self.prefix_id)]
        conts: list[list[int]] = []
        mismatch = False
        for c in continuations:
            if ctx_text:
                whole = self._encode(ctx_text + moved + c)
                tail = whole[len(ctx):]
                mismatch |= whole[: len(ctx)] != ctx
            else:
                tail = list(self.tokenizer(moved + c, add_special_tokens=False)["input_ids"])
            if not tail:
                raise UsageError(f"continuation {c!r} has no tokens after the context; give a non-empty continuation")
            conts.append(tail)
        self.boundary_mismatches += int(mismatch)
        longest = max(len(t) for t in conts)
        if longest >= self.max_length:
            raise UsageError(f"a continuation has {longest} tokens, more than max_length {self.max_length}; raise max_length")
        if len(ctx) + longest > self.max_length:
            ctx = ctx[len(ctx) + longest - self.max_length:]
            self.truncated += 1
        return ctx, conts

    def loglikelihood(
        self,
        requests: Sequence[tuple[str, Sequence[str]]],
        langs: Sequence[str],
        interventions: Any = None,
        positions: str | None = None,
        *,
        anchor: str | None = "en",
        keys: Sequence[str] | None = None,
        scope: dict[str, Any] | None = None,
    ) -> list[list[LLResult]]:
        """For each ``(context, continuations)``: ``[(sum_logprob, n_tokens, n_chars, is_greedy), ...]``."""
        encoded = [self._encode_request(ctx, conts) for ctx, conts in requests]

        def batch(session: Any, idx: list[int]) -> list[Any]:
            how, out = self._ll_any(session, [encoded[i] for i in idx], [requests[i][1] for i in idx],
                                    [langs[i] for i in idx])
            self._how.update((i, how) for i in idx)
            return out

        w = self.continuation_weight

        def order(i: int) -> Any:  # most expensive first, so a batch pads little where it costs most
            ctx, conts = encoded[i]
            return (-(len(ctx) + w * len(conts) * max(len(c) for c in conts)), i)

        def decode(v: Any, i: int) -> list[LLResult]:
            out = [(float(a), int(b), int(c), bool(d)) for a, b, c, d in v]
            if len(out) != len(requests[i][1]) or any(a != a or a == float("inf") or b < 1 or c < 0 for a, b, c, _ in out):
                raise ValueError("not one (log-prob, tokens >= 1, chars, greedy) per continuation")
            return out

        return self._run("loglikelihood", len(requests), langs, interventions, positions, anchor, keys, scope,
                         {}, order, batch, decode)
    # ---- next-token labels ---------------------------------------------------------------

    def label_ids(self, labels: Sequence[str]) -> list[int]:
        """The token id of each label; each label must be exactly one token."""
        ids = []
        for label in labels:
            enc = list(self.tokenizer(label, add_special_tokens=False)["input_ids"])
            if len(enc) != 1:
                raise UsageError(f"label {label!r} is {len(enc)} tokens for this tokenizer; labels must be single tokens")
            ids.append(int(enc[0]))
        if len(set(ids)) != len(ids):
            raise UsageError(f"labels {list(labels)} map to the same token; give distinct labels")
        return ids

    def label_logits(
        self,
        prompts: Sequence[str],
        label_tokens: Sequence[str],
        langs: Sequence[str],
        interventions: Any = None,
        positions: str | None = None,
        *,
        anchor: str | None = "en",
        keys: Sequence[str] | None = None,
        scope: dict[str, Any] | None = None,
    ) -> list[list[float]]:
        """Next-token log-probs (normalised over the vocabulary) of each label after each prompt."""
        ids = self.label_ids(label_tokens)
        enc = []
        for p in prompts:
            e = self._encode(p) or ([int(self.prefix_id)] if self.prefix_id is not None else [])
            if not e:
                raise UsageError("empty prompt and the tokenizer has no BOS/EOS token; give a prompt")
            if len(e) > self.max_length:
                e = e[len(e) - self.max_length:]
                self.truncated += 1
            enc.append(e)
        label_index = torch.tensor(ids, device=self.device)

        def batch(session: Any, idx: list[int]) -> list[Any]:
            session.set_langs([langs[i] for i in idx])
            x, m = self._left_pad([enc[i] for i in idx])
            out = self._forward(x, m, logits_to_keep=1)
            lp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)[:, label_index].cpu()
            return [[float(v) for v in row] for row in lp]

        return self._run("labels", len(prompts), langs, interventions, positions, anchor, keys, scope,
                         {"labels": list(label_tokens), "label_ids": ids}, lambda i: (-len(enc[i]), i), batch,
                         lambda v, i: _label_logprobs(v, len(ids)))

    # ---- generation ----------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], langs: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (),
                 call: EngineCall | None = None, *, sampling: Sampling | None = None, **settings: Any) -> list[str]:
        """Continuations of ``prompts``, each cut at its first stop sequence.

        ``call`` (:class:`EngineCall`; keyword ``settings`` -- ``interventions``, ``positions``,
        ``anchor``, ``keys``, ``scope`` -- override its fields): the steering and the cache
        identity, as for :meth:`loglikelihood`. ``sampling`` (default greedy): see
        :mod:`xlsteer.evaluation.sampling`. Each row samples from its own stream seeded by the
        sampling seed and its cache key (its prompt without keys), so its text does not depend on
        its batch; the settings enter the cache key.
        """
        call = EngineCall.of(call, **settings)
        interventions, positions, anchor, keys, scope = call.interventions, call.positions, call.anchor, call.keys, call.scope
        sampling = sampling if sampling is not None else GREEDY
        if not isinstance(sampling, Sampling):
            raise UsageError(f"sampling must be a Sampling record, got {type(sampling).__name__}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if max_new_tokens >= self.max_length:
            raise UsageError(f"max_new_tokens {max_new_tokens} must be below max_length {self.max_length}")
        stops = [s for s in stop if s]
        room = self.max_length - max_new_tokens
        enc = []
        for p in prompts:
            e = self._encode(p) or ([int(self.prefix_id)] if self.prefix_id is not None else [])
            if not e:
                raise UsageError("empty prompt and the tokenizer has no BOS/EOS token; give a prompt")
            if len(e) > room:
                e = e[len(e) - room:]
                self.truncated += 1
            enc.append(e)

        stream_keys = list(keys) if keys is not None else list(prompts)

        def batch(session: Any, idx: list[int]) -> list[Any]:
            decoding = RowDecoding(sampling, [stream_keys[i] for i in idx], [langs[i] for i in idx], self.tokenizer)
            return self._gen_batch(session, [enc[i] for i in idx], [langs[i] for i in idx], max_new_tokens, stops,
                                   decoding)

        params: dict[str, Any] = {"max_new_tokens": max_new_tokens, "stop": stops}
        if sampling.cache_params() is not None:  # plain greedy keeps the keys of caches written before sampling
            params["sampling"] = sampling.cache_params()
        return self._run("generate", len(prompts), langs, interventions, positions, anchor, keys, scope,
                         params, lambda i: (-len(enc[i]), i), batch, lambda v, i: _text(v))
