"""The engine's model forwards: padding, batched log-likelihood and greedy generation passes.

Why a module of its own: :class:`~xlsteer.evaluation.engine.Engine` decides *what* to compute
(requests, their order, the cache, steering); the methods here (:class:`_ForwardPasses`, a mixin
of the engine) decide *how* a batch goes through the model: left padding, the shared-context
log-likelihood forward with its verified unembedding shortcut, the out-of-memory halving, and
the KV-cached decoding loop (its token choice: :func:`xlsteer.evaluation.sampling.next_tokens`). Which device inputs go to and how expensive a continuation
token is relative to a context token are helpers of the same kind.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

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


class _HeadMismatch(Exception):
    """The captured final-norm output did not reproduce the model's logits: redo the batch in full."""


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
    def _cut(self, text: str, stops: list[str]) -> tuple[str, bool]:
        cut = min((p for p in (text.find(s) for s in stops) if p >= 0), default=-1)
        return (text[:cut], True) if cut >= 0 else (text, False)

    def _gen_batch(self, enc: list[list[int]], max_new: int, stops: list[str],
                   decoding: RowDecoding | None = None) -> list[str]:
        """KV-cached decoding of one batch; ``decoding`` picks each step's tokens (None: greedy)."""
        ids, mask = self._left_pad(enc)
        b = len(enc)
        out = self._forward(ids, mask, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        gen: list[list[int]] = [[] for _ in range(b)]
        texts = [""] * b
        done = [False] * b
        pos = positions_from_mask(mask)[:, -1]
        for step in range(max_new):
            last = out.logits[:, -1, :]
            nxt = (decoding.choose(last) if decoding is not None else last.argmax(-1)).tolist()
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
