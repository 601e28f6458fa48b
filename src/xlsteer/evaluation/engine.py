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

:meth:`Engine.generate`  batched greedy decoding with the KV cache and left padding; a row stops
    at EOS or when its text contains a stop sequence (the text is cut at the first one); the
    batch stops when every row has stopped or after ``max_new_tokens``. Deterministic.

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
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..distributed import current as current_dist
from ..errors import UsageError, XlsteerError, XlsteerWarning
from ..hooks import POSITION_POLICIES, steer
from ..io import dumps_json
from ..progress import bar
from ..stats import positions_from_mask

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

#: Intervention metadata keys that change between identical fits (left out of the hash).
VOLATILE_META = frozenset({"strength", "provenance", "fit_seconds", "fitted_at", "created"})


def _as_list(interventions: Any) -> list[Any]:
    if interventions is None:
        return []
    if isinstance(interventions, (list, tuple)):
        return list(interventions)
    return [interventions]


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.numpy().tobytes()


def intervention_hash(interventions: Any) -> str | None:
    """sha256 of the interventions' tensors and metadata (strength excluded: it is keyed apart)."""
    items = _as_list(interventions)
    if not items:
        return None
    h = hashlib.sha256()
    for iv in items:
        meta = {k: v for k, v in iv.metadata().items() if k not in VOLATILE_META}
        h.update(dumps_json(meta).encode("utf-8"))
        for name in sorted(iv.tensors):
            t = iv.tensors[name]
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode("utf-8"))
            h.update(_tensor_bytes(t))
    return h.hexdigest()


def intervention_info(interventions: Any, positions: str = "all") -> dict[str, Any] | None:
    """What results record about the interventions (method, params, sites, layers, strength, hash)."""
    items = _as_list(interventions)
    if not items:
        return None
    per = []
    for iv in items:
        per.append({
            "method": iv.method,
            "fit": iv.params.get("fit"),
            "params": iv.params,
            "sites": [str(s) for s in iv.sites],
            "layers": iv.layers,
            "strength": iv.strength,
            "languages": list(iv.languages),
            "anchor": iv.anchor,
        })
    out: dict[str, Any] = {"hash": intervention_hash(items), "positions": positions, "interventions": per}
    if len(per) == 1:
        out.update({k: per[0][k] for k in ("method", "params", "layers", "sites", "strength")})
    return out


# --------------------------------------------------------------------------------------------
# the JSONL cache


def _cache_error(folder: Path, e: OSError) -> XlsteerError:
    return XlsteerError(f"cannot use the evaluation cache in {folder} ({e.strerror or e}); pass --cache-dir with a "
                        "writable folder, or --no-cache")


class _Store:
    """One JSONL file of ``{"k": key, "v": value}`` lines (after a header line with the scope).

    In a data-parallel launch process ``r`` appends to ``<name>.rank<r>.jsonl`` (one writer per
    file); every process, distributed or not, also reads the ``.rank*`` siblings, so a cache
    filled by a distributed run serves a later single-process run and the other way round.
    """

    def __init__(self, path: Path, scope: dict[str, Any], rank: int | None = None):
        self.path = path if rank is None else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")
        self.data: dict[str, Any] = {}
        try:
            self._open(path, scope)
        except OSError as e:
            raise _cache_error(path.parent, e) from None

    def _open(self, base: Path, scope: dict[str, Any]) -> None:
        base.parent.mkdir(parents=True, exist_ok=True)
        for other in [base, *sorted(base.parent.glob(f"{base.stem}.rank*{base.suffix}"))]:
            if other != self.path and other.exists():
                self._read(other.read_bytes())
        if self.path.exists():
            self._load()
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append([{"scope": scope}])

    def _load(self) -> None:
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a torn last line (killed mid-write): drop it so appends start clean
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
            raw = raw[:end]
        self._read(raw)

    def _read(self, raw: bytes) -> None:
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict) and "k" in rec and "v" in rec:
                self.data[str(rec["k"])] = rec["v"]

    def _append(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n" for r in records)
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _cache_error(self.path.parent, e) from None

    def put(self, pairs: list[tuple[str, Any]]) -> None:
        self._append([{"k": k, "v": v} for k, v in pairs])
        for k, v in pairs:
            self.data[k] = v


# --------------------------------------------------------------------------------------------
# the engine


def _input_device(model: Any) -> torch.device:
    """Where input ids go: the input embedding's execution device (not 'meta' when it is offloaded)."""
    from ..models.placement import module_placement

    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        return module_placement(emb)[0]
    return next(model.parameters()).device


def _continuation_weight(model: Any) -> float:
    """Cost of a continuation token relative to a context token in :meth:`Engine.loglikelihood`.

    Why: the context forward keeps the logits of its last position only, the continuation
    forward projects every (padded) position onto the vocabulary; for small models with large
    vocabularies (Gemma-3-270M: 168M of its 268M parameters) that projection dominates, so
    batches should be formed by continuation length first. Per-token cost ~ parameters used.
    """
    try:
        out, inp = model.get_output_embeddings(), model.get_input_embeddings()
        n_out = int(out.weight.numel())
        skip = {id(out.weight), id(inp.weight)}
        body = sum(int(p.numel()) for p in model.parameters() if id(p) not in skip)
    except (AttributeError, TypeError):
        return 1.0
    return 1.0 + n_out / body if body > 0 else 1.0


class _HeadMismatch(Exception):
    """The captured final-norm output did not reproduce the model's logits: redo the batch in full."""


class Engine:
    """Batched log-likelihood, label and generation requests on a :class:`LoadedModel`."""

    def __init__(
        self,
        lm: Any,
        batch_size: int = 8,
        cache_dir: str | os.PathLike | None = None,
        max_length: int = 2048,
        progress_desc: str = "eval",
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

    # ---- shared machinery ---------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _store(self, kind: str, params: dict[str, Any], scope: dict[str, Any] | None,
               interventions: list[Any], positions: str, anchor: str | None, create: bool = True) -> _Store | None:
        if self.cache_dir is None:
            return None
        full = {
            "format": "xlsteer.eval-cache/1",
            "kind": kind,
            "params": params,
            "scope": scope or {},
            "model": {"name": self.lm.name, "fingerprint_sha256": self.model_hash},
            "intervention_hash": intervention_hash(interventions),
            "strength": [iv.strength for iv in interventions],
            "positions": positions if interventions else None,
            "anchor": anchor if interventions else None,
            "max_length": self.max_length,
        }
        digest = hashlib.sha256(dumps_json(full).encode("utf-8")).hexdigest()
        dist = current_dist()
        path = self.cache_dir / f"{kind}-{digest[:24]}.jsonl"
        if not create and not (path.exists() or any(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))):
            return None
        return _Store(path, full, dist.rank if dist.active else None)

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
        results, universe, store = self._cached(kind, params, scope, ivs, positions, anchor, langs, keys, decode)
        dist = current_dist()
        if store is not None:
            dist.barrier()  # every process has read the cache before any of them appends to it
        todo = sorted((i for i in universe if results[i] is None), key=order)
        if not todo:
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
                    store.put([(keys[i], v) for i, v in zip(idx, out)])  # type: ignore[index]
                pbar.update(len(idx))
        if dist.active:
            shards = dist.gather((fresh, len(fresh)))
            self.computed += sum(c for _, c in shards) - len(fresh)
            for part, _ in shards:
                for i, v in part.items():
                    results[i] = v
        # values round-trip through JSON in the cache: decode fresh ones too, so a cached and a
        # fresh run return exactly the same Python objects
        return [decode(json.loads(json.dumps(r)), i) for i, r in enumerate(results)]

    def _cached(self, kind: str, params: dict[str, Any], scope: dict[str, Any] | None, ivs: list[Any],
                positions: str, anchor: str | None, langs: Sequence[str], keys: Sequence[str] | None,
                decode: Callable[[Any, int], Any]) -> tuple[list[Any], set[int], _Store | None]:
        """Results served from the cache, the rows not served by the unsteered anchor cache, and the store.

        A line whose value does not decode (or fails the kind's checks) is skipped, so that row is
        computed again; one warning says how many.
        """
        n = len(langs)
        results: list[Any] = [None] * n
        universe = set(range(n))
        poisoned: list[str] = []

        def cached(i: int, raw: Any) -> Any:
            try:
                return decode(raw, i)
            except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError):
                poisoned.append(str(keys[i]))  # type: ignore[index]
                return None

        if ivs and anchor is not None and keys is not None and self.cache_dir is not None:
            # Anchor rows are never steered: where the unsteered run of the same requests is in
            # the cache, its results are the anchor rows' results (exactly, bit for bit), and a
            # steered run (sweep grid point, method) does not compute them again.
            plain = self._store(kind, params, scope, [], positions, anchor, create=False)
            for i in range(n if plain is not None else 0):
                if langs[i] == anchor and keys[i] in plain.data:  # type: ignore[union-attr]
                    results[i] = cached(i, plain.data[keys[i]])  # type: ignore[union-attr]
                    if results[i] is not None:
                        universe.discard(i)
        store = self._store(kind, params, scope, ivs, positions, anchor) if keys is not None else None
        if store is not None:
            for i in universe:
                if keys[i] in store.data:  # type: ignore[index]
                    results[i] = cached(i, store.data[keys[i]])  # type: ignore[index]
        if poisoned:
            warnings.warn(f"{len(poisoned)} malformed line(s) of the evaluation cache in {self.cache_dir} "
                          f"(e.g. item {poisoned[0]}) were skipped and are computed again", XlsteerWarning,
                          stacklevel=3)
        return results, universe, store

    def _run_batch(self, batch_fn: Callable[[Any, list[int]], list[Any]], session: Any, idx: list[int]) -> list[Any]:
        """One batch, in chunks of at most ``oom_batch_size`` rows; halved again on out-of-memory.

        Why: a batch size that fits most batches can run out of memory on the longest ones;
        halving (down to one request) finishes the run instead of losing it. Later batches keep
        the reduced size. Chunking changes padding only, i.e. scores at float-rounding level.
        """
        size = min(len(idx), self.oom_batch_size or len(idx))
        out: list[Any] = []
        start = 0
        while start < len(idx):
            chunk = idx[start:start + size]
            error = None
            try:
                out.extend(batch_fn(session, chunk))
            except (torch.OutOfMemoryError, MemoryError) as e:
                error = " ".join(str(e).split())[:160] or type(e).__name__
            if error is None:
                start += len(chunk)
                continue
            # outside the except block: the failed attempt's tensors are freed with its traceback
            if len(chunk) == 1:
                raise XlsteerError(
                    f"out of memory even with batch size 1 ({error}); use a shorter --max-length, "
                    "a smaller --dtype (bfloat16) or a device with more memory"
                )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            size = max(1, len(chunk) // 2)
            self.oom_batch_size = size
            self.oom_retries += 1
        return out

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            if s:
                ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[r, width - len(s):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, **kw: Any) -> Any:
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), **kw)

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
            args = (session, [encoded[i] for i in idx], [requests[i][1] for i in idx], [langs[i] for i in idx])
            try:
                return self._ll_batch(*args)
            except _HeadMismatch:  # first batch only; the head path is now off, so this runs in full
                return self._ll_batch(*args)

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

    def _ll_batch(self, session: Any, enc: list[tuple[list[int], list[list[int]]]],
                  texts: list[Sequence[str]], langs: list[str]) -> list[list[list[Any]]]:
        """One batch of log-likelihood requests: each context once, then all its continuations.

        Why this shape: on small models with large vocabularies the head dominates (Gemma-3-270M:
        168M of 268M parameters), and a head call with few rows is bound by reading the whole
        weight. So, once :meth:`_head_rows` is verified, neither forward projects anything and
        one head call takes every needed row: each context's last position (the first
        continuation token) and every real continuation position.
        """
        ctx_ids, ctx_mask = self._left_pad([c for c, _ in enc])
        counts = [len(conts) for _, conts in enc]
        rows = torch.repeat_interleave(torch.arange(len(enc)), torch.tensor(counts))
        conts = [c for _, cs in enc for c in cs]
        width = max(len(c) for c in conts)
        tgt = torch.full((len(conts), width), self.pad_id, dtype=torch.long)
        tmask = torch.zeros((len(conts), width), dtype=torch.bool)
        for r, c in enumerate(conts):
            tgt[r, : len(c)] = torch.tensor(c, dtype=torch.long)
            tmask[r, : len(c)] = True
        tgt, tmask, rows_d = tgt.to(self.device), tmask.to(self.device), rows.to(self.device)
        real = tmask[:, 1:]  # continuation feed position j predicts token j+1: needed where that token is real

        session.set_langs(langs)
        ctx_hidden, out = self._ll_forward(ctx_ids, ctx_mask, positions_from_mask(ctx_mask), None)
        cache = out.past_key_values
        cont_hidden = None
        if width > 1:
            if counts != [1] * len(counts):
                cache.batch_select_indices(rows_d)
            full_mask = torch.cat([ctx_mask[rows_d], tmask[:, :-1].long()], dim=1)
            session.set_langs([langs[int(r)] for r in rows])
            cont_hidden, cont_out = self._ll_forward(tgt[:, :-1], full_mask,
                                                     positions_from_mask(full_mask)[:, ctx_ids.shape[1]:], cache)
            if cont_hidden is None:  # no head path: the model projected every position
                cont_logits = cont_out.logits[real].float().to(self.device)
            del cont_out
        if ctx_hidden is None:
            first = out.logits[:, -1].float().to(self.device)
            logits = torch.cat([first, cont_logits]) if width > 1 else first
        else:
            parts = [ctx_hidden[:, -1]] + ([cont_hidden[real.to(cont_hidden.device)]] if width > 1 else [])
            logits = self._head_rows(torch.cat(parts) if len(parts) > 1 else parts[0], out)
        del out, cache, ctx_hidden, cont_hidden
        n_first = len(enc)
        best = logits.argmax(-1)
        logits = torch.log_softmax(logits, dim=-1)  # one fused pass over the vocabulary
        lp = torch.zeros(tgt.shape, dtype=torch.float32, device=self.device)
        greedy = torch.ones(tgt.shape, dtype=torch.bool, device=self.device)
        lp[:, 0] = logits[rows_d, tgt[:, 0]]
        greedy[:, 0] = best[rows_d] == tgt[:, 0]
        if width > 1:
            at = torch.arange(n_first, logits.shape[0], device=self.device)
            tgt_real = tgt[:, 1:][real]
            part, g = lp[:, 1:].clone(), greedy[:, 1:].clone()
            part[real] = logits[at, tgt_real]
            g[real] = best[at] == tgt_real
            lp[:, 1:], greedy[:, 1:] = part, g
        del logits
        lp = torch.where(tmask, lp, torch.zeros_like(lp)).sum(1).cpu()
        ok = (greedy | ~tmask).all(1).cpu()
        n_tok = tmask.sum(1).cpu()
        flat_texts = [t for ts in texts for t in ts]
        res: list[list[list[Any]]] = []
        k = 0
        for cnt in counts:
            res.append([[float(lp[k + j]), int(n_tok[k + j]), len(flat_texts[k + j]), bool(ok[k + j])]
                        for j in range(cnt)])
            k += cnt
        return res

    def _ll_forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                    cache: Any) -> tuple[torch.Tensor | None, Any]:
        """One forward of :meth:`_ll_batch`: ``(final-normed hidden states or None, output)``.

        With the head path (not yet refuted), the final norm's output is captured and the model
        projects no position once the path is verified (``logits_to_keep`` = an empty index
        tensor); until then it projects its last position, which :meth:`_head_rows` checks
        against. Without it (no final norm found, or refuted), the model projects every position
        of a continuation forward and the last one of a context forward (``hidden`` is None).
        """
        from ..models.sites import final_norm_and_head

        kw = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "past_key_values": cache,
              "use_cache": True}
        norm = final_norm_and_head(self.model)[0] if self._head_path is not False else None
        if norm is None:
            self._head_path = False
            return None, self.model(**kw, logits_to_keep=1 if cache is None else 0)
        captured: list[torch.Tensor] = []
        handle = norm.register_forward_hook(lambda _m, _i, o: captured.append(o))
        try:
            if self._head_path and self._keep_none is not False:
                try:
                    out = self.model(**kw, logits_to_keep=torch.empty(0, dtype=torch.long, device=ids.device))
                    self._keep_none = True
                except (TypeError, IndexError, ValueError):
                    if self._keep_none or cache is not None:  # worked before, or the cache is already extended
                        raise
                    self._keep_none = False  # this model's forward takes only an integer
                    captured.clear()
                    out = self.model(**kw, logits_to_keep=1)
            else:
                out = self.model(**kw, logits_to_keep=1)
        finally:
            handle.remove()
        return captured[-1], out

    def _head_rows(self, hidden: torch.Tensor, ctx_out: Any) -> torch.Tensor:
        """Logits ``(rows, V)`` (float32) of final-normed rows, the first ``B`` being the contexts' last positions.

        Why the check: :func:`~xlsteer.models.sites.unembed` reproduces the usual output
        transforms (head, softcapping, scaling). On the first batch its rows for the contexts'
        last positions are compared with the model's own logits there; a model it does not
        reproduce switches the engine to full projections, and the batch is redone.
        """
        from ..models.sites import unembed

        logits = unembed(self.model, hidden).float()
        if self._head_path is None:
            theirs = ctx_out.logits[:, -1].float()
            ours = logits[: theirs.shape[0]]
            tol = 1e-3 * max(1.0, float(theirs.abs().max()))
            self._head_path = bool(ours.shape == theirs.shape and (ours - theirs.to(ours.device)).abs().max() <= tol)
            if not self._head_path:
                raise _HeadMismatch()
        return logits.to(self.device)

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

    def generate(
        self,
        prompts: Sequence[str],
        langs: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        interventions: Any = None,
        positions: str | None = None,
        *,
        anchor: str | None = "en",
        keys: Sequence[str] | None = None,
        scope: dict[str, Any] | None = None,
    ) -> list[str]:
        """Greedy continuations of ``prompts``, each cut at its first stop sequence."""
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

        def batch(session: Any, idx: list[int]) -> list[Any]:
            session.set_langs([langs[i] for i in idx])
            return self._gen_batch([enc[i] for i in idx], max_new_tokens, stops)

        return self._run("generate", len(prompts), langs, interventions, positions, anchor, keys, scope,
                         {"max_new_tokens": max_new_tokens, "stop": stops}, lambda i: (-len(enc[i]), i), batch,
                         lambda v, i: _text(v))

    def _cut(self, text: str, stops: list[str]) -> tuple[str, bool]:
        cut = min((p for p in (text.find(s) for s in stops) if p >= 0), default=-1)
        return (text[:cut], True) if cut >= 0 else (text, False)

    def _gen_batch(self, enc: list[list[int]], max_new: int, stops: list[str]) -> list[str]:
        ids, mask = self._left_pad(enc)
        b = len(enc)
        out = self._forward(ids, mask, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        gen: list[list[int]] = [[] for _ in range(b)]
        texts = [""] * b
        done = [False] * b
        pos = positions_from_mask(mask)[:, -1]
        for step in range(max_new):
            nxt = out.logits[:, -1, :].argmax(-1).tolist()
            for r in range(b):
                if done[r]:
                    continue
                tok = int(nxt[r])
                if self.eos_id is not None and tok == self.eos_id:
                    done[r] = True
                    continue
                gen[r].append(tok)
                text = self.tokenizer.decode(gen[r], skip_special_tokens=True)
                texts[r], hit = self._cut(text, stops)
                done[r] = hit
            if all(done) or step == max_new - 1:
                break
            feed = torch.tensor([[self.pad_id if done[r] else int(nxt[r])] for r in range(b)], device=self.device)
            mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=self.device)], dim=1)
            pos = pos + 1
            out = self.model(input_ids=feed, attention_mask=mask, position_ids=pos.unsqueeze(1),
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
        return texts
