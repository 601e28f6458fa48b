"""The engine's log-likelihood forwards: the two scoring strategies and the verified unembedding shortcut.

Why a module of its own: :mod:`.scoring_strategy` says which strategy a batch should use on this
device; the methods here (:class:`_LogLikelihood`, a mixin of the engine) run it. Both end in the
same per-continuation record ``[sum log-prob, tokens, characters, is greedy]`` and both score a
continuation's tokens from the same positions, with the context as the *prompt* and the
continuation as *generated* for the position policies, so steered scores agree as well.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..stats import positions_from_mask
from .scoring_strategy import ForwardCost, choose, forward_cost


class _HeadMismatch(Exception):
    """The captured final-norm output did not reproduce the model's logits: redo the batch in full."""


def _per_request(lp: torch.Tensor, ok: torch.Tensor, n_tok: torch.Tensor, counts: list[int],
                 texts: list[Sequence[str]]) -> list[list[list[Any]]]:
    """Per request, per continuation: ``[sum log-prob, tokens, characters, is greedy]``."""
    lp, ok, n_tok = lp.cpu(), ok.cpu(), n_tok.cpu()
    flat_texts = [t for ts in texts for t in ts]
    res: list[list[list[Any]]] = []
    k = 0
    for cnt in counts:
        res.append([[float(lp[k + j]), int(n_tok[k + j]), len(flat_texts[k + j]), bool(ok[k + j])]
                    for j in range(cnt)])
        k += cnt
    return res


class _LogLikelihood:
    """The :class:`~xlsteer.evaluation.engine.Engine` methods that score log-likelihood batches.

    A mixin: it uses the engine's ``model``, ``device``, ``pad_id``, ``_left_pad``, ``scoring``
    (a strategy, or ``"auto"``), ``lm.fingerprint`` and the head-path flags ``_head_path``/``_keep_none``.
    """

    def _forward_cost(self) -> ForwardCost:
        """The device's cost model (measured once on an accelerator; see :mod:`.scoring_strategy`)."""
        if self._cost is None:
            self._cost = forward_cost(self.model, self.lm.fingerprint, self.device)
        return self._cost

    def _ll_strategy(self, enc: list[tuple[list[int], list[list[int]]]]) -> str:
        return self.scoring if self.scoring != "auto" else choose(enc, self._forward_cost())

    def _ll_any(self, session: Any, enc: list[tuple[list[int], list[list[int]]]],
                texts: list[Sequence[str]], langs: list[str]) -> tuple[str, list[list[list[Any]]]]:
        """(strategy, results) of one batch, by the strategy the cost model chooses for it."""
        how = self._ll_strategy(enc)
        fn = self._ll_batch if how == "shared_prefix" else self._ll_batch_full
        try:
            return how, fn(session, enc, texts, langs)
        except _HeadMismatch:  # first batch only; the head path is now off, so this runs in full
            return how, fn(session, enc, texts, langs)

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
        lp = torch.where(tmask, lp, torch.zeros_like(lp)).sum(1)
        return _per_request(lp, (greedy | ~tmask).all(1), tmask.sum(1), counts, texts)

    def _ll_batch_full(self, session: Any, enc: list[tuple[list[int], list[list[int]]]],
                       texts: list[Sequence[str]], langs: list[str]) -> list[list[list[Any]]]:
        """One batch of log-likelihood requests in one forward: every (context, continuation) pair.

        Contexts are left-padded to one width ``P`` and the continuation (its last token is never
        fed) follows at ``P``: the prompt length is ``P`` for the hooks, as in the shared-prefix
        path, and position ``P - 1 + j`` predicts continuation token ``j``.
        """
        counts = [len(conts) for _, conts in enc]
        pairs = [(ctx, cont, r) for r, (ctx, conts) in enumerate(enc) for cont in conts]
        width = max(len(ctx) for ctx, _ in enc)
        longest = max(len(cont) for _, cont, _ in pairs)
        ids = torch.full((len(pairs), width + longest - 1), self.pad_id, dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.long)
        tgt = torch.full((len(pairs), longest), self.pad_id, dtype=torch.long)
        tmask = torch.zeros((len(pairs), longest), dtype=torch.bool)
        for j, (ctx, cont, _) in enumerate(pairs):
            seq = ctx + cont[:-1]
            ids[j, width - len(ctx): width - len(ctx) + len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[j, width - len(ctx): width - len(ctx) + len(seq)] = 1
            tgt[j, : len(cont)] = torch.tensor(cont, dtype=torch.long)
            tmask[j, : len(cont)] = True
        ids, mask, tgt, tmask = ids.to(self.device), mask.to(self.device), tgt.to(self.device), tmask.to(self.device)
        session.set_langs([langs[r] for _, _, r in pairs])
        session.set_prompt_length(width)
        try:
            hidden, out = self._ll_forward(ids, mask, positions_from_mask(mask), None, all_logits=True)
        finally:
            session.set_prompt_length(None)
        where = tmask.nonzero()  # (real (pair, j)) in row-major order
        at = (where[:, 0], width - 1 + where[:, 1])
        if hidden is None:
            logits = out.logits[at].float().to(self.device)
        else:
            verify = self._head_path is None  # the model's own last-position logits check our unembedding
            rows = torch.cat([hidden[:, -1], hidden[at]]) if verify else hidden[at]
            logits = self._head_rows(rows, out)[len(pairs) if verify else 0:]
        del out, hidden
        best = logits.argmax(-1)
        token_lp = torch.log_softmax(logits, dim=-1).gather(1, tgt[tmask].unsqueeze(1)).squeeze(1)
        lp = torch.zeros(len(pairs), dtype=torch.float32, device=self.device).index_add_(0, where[:, 0], token_lp)
        wrong = torch.zeros(len(pairs), dtype=torch.long, device=self.device).index_add_(
            0, where[:, 0], (best != tgt[tmask]).long())
        return _per_request(lp, wrong == 0, tmask.sum(1), counts, texts)

    def _ll_forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                    cache: Any, all_logits: bool = False) -> tuple[torch.Tensor | None, Any]:
        """One forward of :meth:`_ll_batch`: ``(final-normed hidden states or None, output)``.

        With the head path (not yet refuted), the final norm's output is captured and the model
        projects no position once the path is verified (``logits_to_keep`` = an empty index
        tensor); until then it projects its last position, which :meth:`_head_rows` checks
        against. Without it (no final norm found, or refuted), the model projects every position
        of a continuation (or ``all_logits``) forward and the last one of a context forward (``hidden`` is None).
        """
        from ..models.sites import final_norm_and_head

        kw = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "past_key_values": cache,
              "use_cache": True}
        norm = final_norm_and_head(self.model)[0] if self._head_path is not False else None
        if norm is None:
            self._head_path = False
            return None, self.model(**kw, logits_to_keep=0 if cache is not None or all_logits else 1)
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
