"""What the hook engine knows about the forward call in progress, and the tensors it hands to site hooks.

Why a module of its own: the site hooks must be *traceable* (torch.compile turns a steered
decode step into one graph), so everything that is Python bookkeeping -- reading the attention
mask and the cache length, the prompt length, the languages of the rows, which position policy
selects what -- happens here, once per forward call, in the root pre-hook (or in
:meth:`HookSession.begin_call`, called directly by a compiled decoding loop). It ends in a few
tensors that live for the whole ``steer`` block and are updated in place:

* per position policy and device, a ``(batch, new_tokens)`` bool mask: real tokens the policy
  selects in rows that are not in the anchor language (:class:`MaskSlot`);
* per intervention and device, :class:`Rows`: each row's index into the intervention's languages
  (``-1``: leave the row alone) and the intervention's strength as a 0-dim float32 tensor.

A site hook then reads only these tensors and does one tensor operation; no Python branching
on tensor values or on host ints that change per decode step happens inside compiled code,
so a new decode step, a new alpha or new row languages reuse the same graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from .errors import UsageError

Positions = Literal["all", "prompt", "generated", "last_prompt"]
POSITION_POLICIES: tuple[str, ...] = ("all", "prompt", "generated", "last_prompt")


@dataclass
class ForwardContext:
    """What readers (and the masks) know about the forward call in progress (host ints + tensors)."""

    batch: int
    new_len: int
    past_len: int
    token_mask: torch.Tensor  # (batch, new_len) bool: real tokens (False = padding)
    positions: torch.Tensor  # (new_len,) absolute index of each new token in the padded sequence
    prompt_len: int
    last_prompt_index: torch.Tensor  # (batch,) index of each row's last real prompt token
    langs: list[str] | None
    anchor: str | None
    steer_rows: torch.Tensor | None = None  # (batch,) bool: rows not in the anchor language

    def __post_init__(self) -> None:
        if self.steer_rows is None:
            flags = [True] * self.batch if self.langs is None or self.anchor is None else \
                [lang != self.anchor for lang in self.langs]
            self.steer_rows = torch.tensor(flags, dtype=torch.bool).to(self.token_mask.device)

    @property
    def first_token(self) -> torch.Tensor:
        """(batch, new_len) bool: each row's first real token, where this call holds it (uncached calls)."""
        if self.past_len > 0:
            return torch.zeros_like(self.token_mask)
        return self.token_mask & (self.token_mask.long().cumsum(dim=1) == 1)

    def may_steer(self, policy: str) -> bool:
        """False when ``policy`` surely selects nothing in this call, decided on the host.

        Why: testing ``steer_mask(policy).any()`` would copy a device tensor to the host at every
        call, stalling a GPU's queue; this uses only Python ints and the row languages. Eager
        site hooks skip their work when it is False; compiled ones always run (their mask is then
        all False, which leaves every activation untouched).
        """
        if self.langs is not None and self.anchor is not None and all(x == self.anchor for x in self.langs):
            return False
        lo, hi = self.past_len, self.past_len + self.new_len  # positions of this call: [lo, hi)
        if policy in ("prompt", "last_prompt"):
            return lo < self.prompt_len
        if policy == "generated":
            return hi > self.prompt_len
        return hi > lo

    def position_mask(self, policy: str) -> torch.Tensor:
        """(batch, new_len) bool: where the policy selects real tokens (routing not included)."""
        pos = self.positions.unsqueeze(0)
        if policy == "all":
            return self.token_mask
        if policy == "prompt":
            return self.token_mask & (pos < self.prompt_len)
        if policy == "generated":
            return self.token_mask & (pos >= self.prompt_len)
        if policy == "last_prompt":
            return self.token_mask & (pos == self.last_prompt_index.unsqueeze(1))
        raise UsageError(f"unknown position policy '{policy}'; choose one of {', '.join(POSITION_POLICIES)}")

    def steer_mask(self, policy: str) -> torch.Tensor:
        """(batch, new_len) bool: where an intervention with ``policy`` edits (routing included)."""
        return self.position_mask(policy) & self.steer_rows.unsqueeze(1)


@dataclass(eq=False)
class Rows:
    """An intervention's view of the rows of the current call: tensors only, so ``apply`` traces.

    ``index``: (batch,) int64, each row's position in the intervention's ``languages``; ``-1``
    for rows it must leave alone (the anchor language). ``strength``: a 0-dim float32 tensor,
    the intervention's strength (data, not a Python constant: a new alpha needs no new graph).
    ``first``: (batch, new tokens) bool, each row's first real token of its sequence where it is
    in this call (at the uncached call; all False after), for methods that leave it alone.
    """

    index: torch.Tensor
    strength: torch.Tensor
    first: torch.Tensor | None = None
    intervention: Any = field(default=None, repr=False)
    key: Any = field(default=None, repr=False)  # (row languages, batch) the index was built for


def rows_for(intervention: Any, langs: Sequence[str] | str | None, batch: int | None = None,
             device: torch.device | str | None = None) -> Rows:
    """The :class:`Rows` of ``intervention`` for rows in ``langs`` (to call ``apply`` outside the engine)."""
    n = batch if batch is not None else (1 if langs is None or isinstance(langs, str) else len(langs))
    row_langs = [langs] * n if isinstance(langs, str) else (None if langs is None else list(langs))
    index = torch.tensor(intervention.row_index(row_langs, n), dtype=torch.long, device=device)
    return Rows(index=index, strength=torch.tensor(float(intervention.strength), dtype=torch.float32, device=device),
                first=torch.zeros(n, 1, dtype=torch.bool, device=device), intervention=intervention)


@dataclass(eq=False)
class MaskSlot:
    """The current ``(batch, new_len)`` steer mask of one position policy on one device."""

    policy: str
    device: torch.device
    value: torch.Tensor | None = None
    active: bool = False  # host-side: may the policy select anything in this call (eager hooks skip if not)


def _static(t: torch.Tensor) -> torch.Tensor:
    """Tell CUDA graphs that ``t`` keeps its address (no copy per replay; a new address re-records)."""
    if t.is_cuda:
        torch._dynamo.mark_static_address(t)  # unguarded: never a recompile
    return t


def _row_buffer(t: torch.Tensor) -> torch.Tensor:
    """A per-row buffer (dim 0 = batch): static address, and a batch dimension dynamo may keep
    symbolic, so that a graph compiled for one batch size > 1 serves the others (as the model's
    own inputs become dynamic after a second size; size 1 is always its own graph)."""
    if t.dim() > 0 and t.shape[0] > 1:
        torch._dynamo.maybe_mark_dynamic(t, 0)
    return _static(t)


def write(buffer: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """``value`` written into ``buffer`` in place when it can be (same shape, dtype and device);
    else a new buffer. Returns the buffer to keep.

    In place only for inference (no grad): autograd may have saved the old contents of a
    buffer (``where``'s condition), and an inference tensor cannot be written outside
    inference mode, nor a normal one inside it.
    """
    reuse = (buffer is not None and buffer.shape == value.shape and buffer.dtype == value.dtype
             and buffer.device == value.device and not torch.is_grad_enabled()
             and buffer.is_inference() == torch.is_inference_mode_enabled())
    if reuse:
        buffer.copy_(value)  # type: ignore[union-attr]
        return buffer  # type: ignore[return-value]
    return _row_buffer(value.clone())


class HookSession:
    """Per-``steer``-block state: languages, prompt length, the current call and its tensors."""

    def __init__(self, anchor: str | None, langs: str | Sequence[str] | None, prompt_length: int | None):
        self.anchor = anchor
        self._langs = langs
        self.fixed_prompt_length = prompt_length
        self.ctx: ForwardContext | None = None
        self._prompt_len = 0
        self._last_prompt_index: torch.Tensor | None = None
        self.calls = 0
        self.masks: dict[tuple[str, str], MaskSlot] = {}
        self.rows: dict[tuple[int, str], Rows] = {}
        self._steer_rows: dict[Any, torch.Tensor] = {}
        self._last: tuple[Any, Any] = (None, None)  # the previous call's token mask and rows (see _write_masks)

    def set_langs(self, langs: str | Sequence[str] | None) -> None:
        """Languages of the rows of the next forward calls (one code, or one per row)."""
        self._langs = langs

    def set_prompt_length(self, prompt_length: int | None) -> None:
        """Prompt length of the next uncached calls (None: the whole input is prompt).

        The engine scores a (context, continuation) pair in one forward with the contexts
        left-padded to one width: the context is the prompt, the continuation counts as generated.
        """
        self.fixed_prompt_length = prompt_length

    # ---- set-up (steer) ---------------------------------------------------------------------

    def mask_slot(self, policy: str, device: torch.device) -> MaskSlot:
        key = (policy, str(device))
        if key not in self.masks:
            self.masks[key] = MaskSlot(policy, device)
        return self.masks[key]

    def rows_slot(self, intervention: Any, device: torch.device) -> Rows:
        key = (id(intervention), str(device))
        if key not in self.rows:
            strength = torch.tensor(float(getattr(intervention, "strength", 1.0)), dtype=torch.float32, device=device)
            self.rows[key] = Rows(index=torch.empty(0, dtype=torch.long, device=device), strength=_static(strength),
                                  intervention=intervention)
        return self.rows[key]

    def close(self) -> None:
        self.ctx = None
        self._last = (None, None)
        for slot in self.masks.values():
            slot.value, slot.active = None, False

    # ---- each forward call ------------------------------------------------------------------

    def _row_langs(self, batch: int) -> list[str] | None:
        if self._langs is None:
            return None
        if isinstance(self._langs, str):
            return [self._langs] * batch
        langs = list(self._langs)
        if len(langs) != batch:
            raise UsageError(f"got {len(langs)} row languages for a batch of {batch}; give one language per row")
        return langs

    def root_pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Read this call's batch, length, cache length and padding from the model's inputs."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = input_ids if isinstance(input_ids, torch.Tensor) else embeds
        if ref is None:
            raise UsageError("the model was called without input_ids or inputs_embeds")
        batch, new_len = int(ref.shape[0]), int(ref.shape[1])
        mask = kwargs.get("attention_mask")
        past_len = _past_length(kwargs.get("cache_position"), mask, kwargs.get("past_key_values"), new_len)
        self.begin_call(batch, new_len, past_len, _token_mask(mask, batch, new_len, past_len, ref.device))

    def begin_call(self, batch: int, new_len: int, past_len: int, token_mask: torch.Tensor) -> ForwardContext:
        """Start a forward call of ``batch`` rows and ``new_len`` new tokens after ``past_len`` cached
        ones (``token_mask``: which new tokens are real): the context and every site tensor.

        The root pre-hook calls this; a compiled decoding loop that calls the model's forward
        directly calls it itself (it knows the cache length on the host: no device sync).
        """
        device = token_mask.device
        positions = torch.arange(past_len, past_len + new_len, device=device)
        if past_len == 0:
            self._prompt_len = self.fixed_prompt_length if self.fixed_prompt_length is not None else new_len
            in_prompt = token_mask & (positions.unsqueeze(0) < self._prompt_len)
            idx = torch.where(in_prompt, positions.unsqueeze(0), torch.full_like(positions.unsqueeze(0), -1))
            self._last_prompt_index = idx.max(dim=1).values
        elif self._last_prompt_index is None or self._last_prompt_index.shape[0] != batch:
            # a cached call without a prefill seen by this context: treat the cache as prompt
            self._prompt_len = past_len
            self._last_prompt_index = torch.full((batch,), past_len - 1, device=device)
        langs = self._row_langs(batch)
        ctx = ForwardContext(batch=batch, new_len=new_len, past_len=past_len, token_mask=token_mask,
                             positions=positions, prompt_len=self._prompt_len,
                             last_prompt_index=self._last_prompt_index.to(device), langs=langs,
                             anchor=self.anchor, steer_rows=self._rows_flags(langs, batch, device))
        self.ctx = ctx
        self.calls += 1
        self._write_masks(ctx)
        return ctx

    def _rows_flags(self, langs: list[str] | None, batch: int, device: torch.device) -> torch.Tensor:
        """Rows not in the anchor language, built once per batch of languages (not per decode step:
        a host -> device copy synchronises a GPU)."""
        key = (tuple(langs) if langs is not None and self.anchor is not None else batch, self.anchor, str(device))
        if key not in self._steer_rows:
            flags = [True] * batch if langs is None or self.anchor is None else [x != self.anchor for x in langs]
            self._steer_rows[key] = torch.tensor(flags, dtype=torch.bool).to(device)
        return self._steer_rows[key]

    def _write_masks(self, ctx: ForwardContext) -> None:
        # A decode step like the previous one (one token past the prompt, the same token-mask
        # tensor -- what a compiled loop passes -- and the same rows) selects exactly what that
        # one selected: keep the tensors, so the step costs no kernel launches outside its graph.
        decode_step = ctx.new_len == 1 and ctx.past_len >= ctx.prompt_len
        key = (ctx.batch, ctx.prompt_len, None if ctx.langs is None else tuple(ctx.langs), decode_step)
        same = (decode_step and ctx.token_mask is self._last[0] and self._last[1] == key
                and all(slot.value is not None for slot in self.masks.values()))
        self._last = (ctx.token_mask, key)
        if same:
            return
        any_active = False
        for slot in self.masks.values():
            slot.active = ctx.may_steer(slot.policy)
            any_active |= slot.active
            slot.value = write(slot.value, ctx.steer_mask(slot.policy).to(slot.device))
        first = ctx.first_token
        for slot in self.rows.values():
            self._write_rows(slot, ctx, validate=any_active)
            slot.first = write(slot.first, first.to(slot.strength.device))

    def _write_rows(self, slot: Rows, ctx: ForwardContext, validate: bool) -> None:
        """Each row's language index for ``slot``'s intervention, rebuilt only when the languages change.

        Unknown languages raise here, before the forward (``validate``); when no policy can
        select anything in this call the index is only shaped (-1 everywhere), not checked.
        """
        key = (tuple(ctx.langs) if ctx.langs is not None else None, ctx.batch)
        if slot.key == key or (not validate and slot.index.shape[0] == ctx.batch):
            return
        if validate:
            index = slot.intervention.row_index(ctx.langs, ctx.batch)
            slot.key = key
        else:
            index, slot.key = [-1] * ctx.batch, None
        slot.index = write(slot.index, torch.tensor(index, dtype=torch.long).to(slot.strength.device))


def _past_length(cache_position: Any, mask: Any, past: Any, new_len: int) -> int:
    """Tokens already in the KV cache: from ``cache_position``, the 2D mask's length, or the cache."""
    if isinstance(cache_position, torch.Tensor) and cache_position.numel() > 0:
        return int(cache_position.reshape(-1)[0])
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return int(mask.shape[1]) - new_len
    if past is not None and hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    return 0


def _token_mask(mask: Any, batch: int, new_len: int, past_len: int, device: torch.device) -> torch.Tensor:
    """(batch, new_len) bool: which new tokens are real (not padding)."""
    mask4 = _absolute_4d_mask(mask)
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] >= past_len + new_len:
        return mask[:, past_len: past_len + new_len].to(device=device, dtype=torch.bool)
    if mask4 is not None and mask4.shape[2] == new_len and mask4.shape[3] >= past_len + new_len:
        # static (compileable) caches get a 4D mask over the whole cache from generate(): a new
        # token is real iff it may attend to its own position (padding keys are masked out)
        q = torch.arange(new_len, device=mask4.device)
        token_mask = _allowed(mask4[:, 0, q, past_len + q]).to(device)
        return token_mask.expand(batch, new_len) if token_mask.shape[0] != batch else token_mask
    return torch.ones(batch, new_len, dtype=torch.bool, device=device)


def _absolute_4d_mask(mask: Any) -> torch.Tensor | None:
    """A 4D (batch, 1, query, key) mask whose key index is the absolute position, if there is one.

    generate() with a static cache passes a 4D mask (or, for models mixing sliding and full
    attention, a dict of them); the full-attention mask indexes keys by absolute position, a
    sliding-window one may not, so only a plain tensor or the ``full_attention`` entry is used
    (and the caller checks that the key dimension covers the positions of this call).
    """
    if isinstance(mask, dict):
        mask = mask.get("full_attention")
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        return mask
    return None


def _allowed(values: torch.Tensor) -> torch.Tensor:
    """Boolean 'may attend' from a boolean, 0/1 integer or additive (0 / large negative) mask."""
    if values.dtype == torch.bool:
        return values
    if values.is_floating_point():
        return values > torch.finfo(values.dtype).min / 2
    return values != 0
