"""The engine's model forwards: padding, out-of-memory halving and the greedy decoding loop.

Why a module of its own: :class:`~xlsteer.evaluation.engine.Engine` decides *what* to compute
(requests, their order, the cache, steering); the methods here (:class:`_ForwardPasses`, a mixin
of the engine) decide *how* a batch goes through the model: left padding, the out-of-memory
halving, and the KV-cached decoding loop (eager here; compiled in :mod:`.engine_compiled`;
log-likelihoods in :mod:`.engine_scoring`). Both decoding loops choose tokens with
:func:`choose_tokens` (greedy, or :class:`~.sampling.RowDecoding`'s choice). Which device inputs
go to and how expensive a continuation token is relative to a context token are helpers of the
same kind.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from ..errors import XlsteerError
from ..stats import positions_from_mask
from .sampling import RowDecoding


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


class _ForwardPasses:
    """The :class:`~xlsteer.evaluation.engine.Engine` methods that run batches through the model.

    A mixin: it uses the engine's ``model``, ``tokenizer``, ``device``, ``pad_id``, ``eos_id``,
    ``oom_batch_size``/``oom_retries`` and the head-path flags ``_head_path``/``_keep_none``.
    """

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
    def _gen_batch(self, session: Any, enc: list[list[int]], langs: list[str], max_new: int,
                   stops: list[str], decoding: RowDecoding | None = None) -> list[str]:
        """KV-cached decoding of one batch (the compiled path when the engine compiles, else eager);
        ``decoding`` picks each step's tokens (None: greedy)."""
        if self.compile_backend is not None:
            return self._compiled_decoder().generate(self, session, (enc, langs), max_new, stops, decoding)
        session.set_langs(langs)
        ids, mask = self._left_pad(enc)
        b = len(enc)
        out = self._forward(ids, mask, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        rows = _Generation(self, b, stops)
        pos = positions_from_mask(mask)[:, -1]
        for step in range(max_new):
            nxt = choose_tokens(out.logits[:, -1, :], decoding)
            if rows.take(nxt.tolist()) or step == max_new - 1:
                break
            feed = torch.tensor(rows.feed(), device=self.device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=self.device)], dim=1)
            pos = pos + 1
            out = self.model(input_ids=feed, attention_mask=mask, position_ids=pos.unsqueeze(1),
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
        return rows.texts


def choose_tokens(logits: torch.Tensor, decoding: RowDecoding | None) -> torch.Tensor:
    """The token each row continues with, from its last logits ``(rows, vocab)``: ``decoding``'s
    choice (:func:`~.sampling.next_tokens`: sampling, the script gate), greedy when None.

    The one call the eager and the compiled decoding loops both make.
    """
    return decoding.choose(logits) if decoding is not None else logits.argmax(-1)


class _Generation:
    """Per-row bookkeeping of a decoding loop (eager or compiled): tokens, texts, stops, EOS.

    Without stop sequences a row's text is decoded once, at the end, not at every step (the
    host work per step then stays constant in the batch size). ``engine.step_stamps``, when a
    list, gets the time each step's tokens reached the host (benchmarks: no extra sync).
    """

    def __init__(self, engine: Any, rows: int, stops: list[str]):
        self.engine = engine
        self.stops = stops
        self.gen: list[list[int]] = [[] for _ in range(rows)]
        self._texts = [""] * rows
        self.done = [False] * rows
        self.last: list[int] = [0] * rows

    def take(self, tokens: list[int]) -> bool:
        """Record one new token per row (rows already stopped ignore theirs); True when all stopped."""
        stamps = getattr(self.engine, "step_stamps", None)
        if stamps is not None:
            stamps.append(time.perf_counter())
        eos = self.engine.eos_id
        self.last = [int(t) for t in tokens]
        for r, tok in enumerate(self.last[: len(self.done)]):
            if self.done[r]:
                continue
            if eos is not None and tok == eos:
                self.done[r] = True
                continue
            self.gen[r].append(tok)
            if self.stops:
                text = self.engine.tokenizer.decode(self.gen[r], skip_special_tokens=True)
                cut = min((p for p in (text.find(s) for s in self.stops) if p >= 0), default=-1)
                self._texts[r], self.done[r] = (text[:cut], True) if cut >= 0 else (text, False)
        return all(self.done)

    @property
    def texts(self) -> list[str]:
        if self.stops:
            return self._texts
        return [self.engine.tokenizer.decode(g, skip_special_tokens=True) for g in self.gen]

    def feed(self) -> list[int]:
        """The next input token per row: its last token, or padding once it has stopped."""
        pad = self.engine.pad_id
        return [pad if r < len(self.done) and self.done[r] else t for r, t in enumerate(self.last)]
