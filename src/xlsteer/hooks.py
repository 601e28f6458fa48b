"""The hook engine: the one place that installs hooks, and removes them.

``steer(model, interventions, ...)`` edits activations; ``record(model, sites, fn)`` reads them.
Both share one mechanism:

* A root forward pre-hook captures, once per forward call, what every site hook needs: which
  positions are real tokens (from the 2D attention mask; left or right padding), their
  absolute positions in the sequence (from ``cache_position``, the mask length or the KV-cache
  length), the prompt length (set at the first, uncached call) and the language of each row.
* Site hooks then turn the position policy and per-row routing into one boolean mask
  ``(batch, new_tokens)`` and apply an intervention only there:
  ``out = where(mask, intervention(act), act)``. Unselected positions are bit-identical.

KV cache: during cached generation each forward call only carries the new tokens, so every
token passes a site exactly once: prompt tokens at prefill, each generated token at its own
decode step. Positions already in the cache are never steered again.

Placement: each intervention is prepared once, at install time, on its hooked module's
*execution* device and in its dtype (``models.placement.module_placement``: accelerate device
maps, offloaded layers whose weights rest on ``meta``); a pre-hook input that arrives from
another device is moved there first (where accelerate would move it anyway).

Serving fast path: with a static KV cache generate() passes a 4D mask over the whole cache and
no ``cache_position``; the root hook then takes the past length from the cache and real tokens
from the mask's diagonal, so steering is token-for-token the dynamic-cache one. Hook bodies run
outside torch.compile graphs (one graph break per hooked site), and ``steer`` makes dynamo guard
on module hooks, so a compiled forward follows hooks as they come and go. Deciding whether a
call needs editing uses host-side values only (no device -> host copy per call).

Position policies:
  ``all``          every real (non-padding) token of the prompt and of the generation
  ``prompt``       only prompt tokens (positions < prompt length)
  ``generated``    only generated tokens (positions >= prompt length)
  ``last_prompt``  only each row's last real prompt token
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol, Sequence

import torch
from torch import nn

from .errors import UsageError
from .models.placement import module_placement
from .models.sites import (
    Site,
    get_tensor,
    pre_hook_replace,
    placement_module,
    pre_hook_tensor,
    replace_tensor,
    resolve,
)

Positions = Literal["all", "prompt", "generated", "last_prompt"]
POSITION_POLICIES: tuple[str, ...] = ("all", "prompt", "generated", "last_prompt")


@dataclass
class ForwardContext:
    """What site hooks know about the forward call in progress (shared by all of them)."""

    batch: int
    new_len: int
    past_len: int
    token_mask: torch.Tensor  # (batch, new_len) bool: real tokens (False = padding)
    positions: torch.Tensor  # (new_len,) absolute index of each new token in the padded sequence
    prompt_len: int
    last_prompt_index: torch.Tensor  # (batch,) index of each row's last real prompt token
    langs: list[str] | None
    anchor: str | None
    _cache: dict[Any, Any] = field(default_factory=dict)  # this forward call only
    #: kept for the whole ``steer`` block (e.g. row tensors, built once per batch of languages
    #: instead of copied host -> device at every decode step, which would synchronise a GPU)
    shared: dict[Any, Any] = field(default_factory=dict)

    @property
    def steer_rows(self) -> torch.Tensor:
        """Rows not in the anchor language (all rows when languages are unknown)."""
        key = "steer_rows"
        if key not in self._cache:
            device = self.token_mask.device
            if self.langs is None or self.anchor is None:
                rows = torch.ones(self.batch, dtype=torch.bool, device=device)
            else:
                skey = ("steer_rows", tuple(self.langs), self.anchor, str(device))
                if skey not in self.shared:
                    flags = [lang != self.anchor for lang in self.langs]
                    self.shared[skey] = torch.tensor(flags, dtype=torch.bool).to(device)
                rows = self.shared[skey]
            self._cache[key] = rows
        return self._cache[key]

    def may_steer(self, policy: str) -> bool:
        """False when ``policy`` surely selects nothing in this call, decided on the host.

        Why: testing ``steer_mask(policy).any()`` would copy a device tensor to the host at every
        hooked site of every forward call, stalling a GPU's queue; this test uses only Python
        ints and the row languages. It may say True where the mask is empty (rows that are all
        padding); the engine then applies ``where(mask, new, act)``, which leaves them untouched.
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
        key = ("pos", policy)
        if key not in self._cache:
            pos = self.positions.unsqueeze(0)
            if policy == "all":
                m = self.token_mask
            elif policy == "prompt":
                m = self.token_mask & (pos < self.prompt_len)
            elif policy == "generated":
                m = self.token_mask & (pos >= self.prompt_len)
            elif policy == "last_prompt":
                m = self.token_mask & (pos == self.last_prompt_index.unsqueeze(1))
            else:  # validated at install time
                raise UsageError(f"unknown position policy '{policy}'; choose one of {', '.join(POSITION_POLICIES)}")
            self._cache[key] = m
        return self._cache[key]

    def steer_mask(self, policy: str) -> torch.Tensor:
        key = ("steer", policy)
        if key not in self._cache:
            self._cache[key] = self.position_mask(policy) & self.steer_rows.unsqueeze(1)
        return self._cache[key]


class Editor(Protocol):
    """What the engine needs from an intervention (see ``interventions.base.Intervention``)."""

    sites: Sequence[Site]

    def prepare(self, site: Site, device: torch.device, dtype: torch.dtype) -> Any: ...

    def apply(self, site: Site, act: torch.Tensor, ctx: ForwardContext, prepared: Any) -> torch.Tensor: ...


Reader = Callable[[Site, torch.Tensor, ForwardContext], None]


class HookSession:
    """Per-context state: the current forward context and the languages for the next calls."""

    def __init__(self, anchor: str | None, langs: str | Sequence[str] | None, prompt_length: int | None):
        self.anchor = anchor
        self._langs = langs
        self.fixed_prompt_length = prompt_length
        self.ctx: ForwardContext | None = None
        self._prompt_len = 0
        self._last_prompt_index: torch.Tensor | None = None
        self.calls = 0
        self.shared: dict[Any, Any] = {}  # see ForwardContext.shared

    def set_langs(self, langs: str | Sequence[str] | None) -> None:
        """Languages of the rows of the next forward calls (one code, or one per row)."""
        self._langs = langs

    def set_prompt_length(self, prompt_length: int | None) -> None:
        self.fixed_prompt_length = prompt_length

    def _row_langs(self, batch: int) -> list[str] | None:
        if self._langs is None:
            return None
        if isinstance(self._langs, str):
            return [self._langs] * batch
        langs = list(self._langs)
        if len(langs) != batch:
            raise UsageError(f"got {len(langs)} row languages for a batch of {batch}; give one language per row")
        return langs

    def root_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = input_ids if isinstance(input_ids, torch.Tensor) else embeds
        if ref is None:
            raise UsageError("the model was called without input_ids or inputs_embeds")
        batch, new_len = int(ref.shape[0]), int(ref.shape[1])
        device = ref.device
        mask = kwargs.get("attention_mask")
        cache_position = kwargs.get("cache_position")
        past = kwargs.get("past_key_values")
        if isinstance(cache_position, torch.Tensor) and cache_position.numel() > 0:
            past_len = int(cache_position.reshape(-1)[0])
        elif isinstance(mask, torch.Tensor) and mask.dim() == 2:
            past_len = int(mask.shape[1]) - new_len
        elif past is not None and hasattr(past, "get_seq_length"):
            past_len = int(past.get_seq_length())
        else:
            past_len = 0
        mask4 = _absolute_4d_mask(mask)
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] >= past_len + new_len:
            token_mask = mask[:, past_len : past_len + new_len].to(device=device, dtype=torch.bool)
        elif mask4 is not None and mask4.shape[2] == new_len and mask4.shape[3] >= past_len + new_len:
            # static (compileable) caches get a 4D mask over the whole cache from generate(): a new
            # token is real iff it may attend to its own position (padding keys are masked out)
            q = torch.arange(new_len, device=mask4.device)
            token_mask = _allowed(mask4[:, 0, q, past_len + q]).to(device)
            if token_mask.shape[0] != batch:
                token_mask = token_mask.expand(batch, new_len)
        else:
            token_mask = torch.ones(batch, new_len, dtype=torch.bool, device=device)
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
        self.ctx = ForwardContext(
            batch=batch,
            new_len=new_len,
            past_len=past_len,
            token_mask=token_mask,
            positions=positions,
            prompt_len=self._prompt_len,
            last_prompt_index=self._last_prompt_index.to(device),
            langs=self._row_langs(batch),
            anchor=self.anchor,
            shared=self.shared,
        )
        self.calls += 1


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


def _ctx_for(session: HookSession, act: torch.Tensor) -> ForwardContext | None:
    ctx = session.ctx
    if ctx is None or act.dim() != 3 or act.shape[0] != ctx.batch or act.shape[1] != ctx.new_len:
        return None
    return ctx


def _edit(
    site: Site,
    editors: list[tuple[Any, Any, str]],
    session: HookSession,
    act: torch.Tensor,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Apply ``editors`` where their masks select; ``None`` when nothing changed.

    ``device`` is where the editors were prepared (the hooked module's execution device). A pre
    hook at a device boundary sees its input still on the producing module's device (accelerate
    moves it only inside the module's forward); it is moved to ``device`` first, which is where
    accelerate would send it next anyway, so the prepared tensors never change device per call.
    """
    ctx = _ctx_for(session, act)
    if ctx is None:
        raise UsageError(
            f"cannot steer at {site}: the activation has shape {tuple(act.shape)} but the forward call "
            "was not seen by the root hook; call the model object that was passed to steer()"
        )
    out = act
    changed = False
    for editor, prepared, policy in editors:
        if not ctx.may_steer(policy):  # host-side test: no device -> host copy per call
            continue
        mask = ctx.steer_mask(policy)
        if device is not None and device.type != "meta" and out.device != device:
            out = out.to(device)
        if mask.device != out.device:
            mask = mask.to(out.device)
        new = editor.apply(site, out, ctx, prepared)
        out = torch.where(mask.unsqueeze(-1), new.to(out.dtype), out)
        changed = True
    return out if changed else None


def _install(
    model: nn.Module,
    session: HookSession,
    editors: Sequence[tuple[Any, str]],
    readers: Sequence[tuple[Sequence[Site], Reader]],
) -> list[torch.utils.hooks.RemovableHandle]:
    """Install every hook before any forward runs; on any failure remove those already installed."""
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        handles.append(model.register_forward_pre_hook(_eager(session.root_pre_hook), with_kwargs=True))
        by_site: dict[Site, list[tuple[Any, Any, str]]] = {}
        devices: dict[Site, torch.device] = {}
        for editor, policy in editors:
            if policy not in POSITION_POLICIES:
                raise UsageError(f"unknown position policy '{policy}'; choose one of {', '.join(POSITION_POLICIES)}")
            for site in editor.sites:
                module, _ = resolve(model, site)
                # the module's *execution* device (accelerate device maps, offloaded layers whose
                # weights rest on 'meta') and its own dtype: never the model's first device
                device, dtype = module_placement(placement_module(model, site))
                by_site.setdefault(site, []).append((editor, editor.prepare(site, device, dtype), policy))
                devices.setdefault(site, device)
        read_by_site: dict[Site, list[Reader]] = {}
        for sites, fn in readers:
            for site in sites:
                resolve(model, site)
                read_by_site.setdefault(site, []).append(fn)

        for site in sorted(set(by_site) | set(read_by_site)):
            module, kind = resolve(model, site)
            site_editors = by_site.get(site, [])
            site_readers = read_by_site.get(site, [])
            handles.append(
                _make_hook(module, kind, site, site_editors, site_readers, session, devices.get(site))
            )
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


def _eager(fn: Callable) -> Callable:
    """Run a hook body outside torch.compile graphs (a graph break around each hooked site).

    Why: the hook logic is host-side bookkeeping on Python ints (cache length, prompt length,
    row languages); traced, every decode step would specialise on a new length and recompile
    until dynamo gives up. Kept eager, the compiled pieces between sites see only tensors of
    fixed shapes (static cache) and compile once. Without torch.compile this is a plain call.
    """
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


def _guard_compiled(model: nn.Module) -> None:
    """Make torch.compile notice hooks that come and go, or refuse a forward compiled blind to them.

    torch._dynamo by default does not guard on module hooks (``skip_nnmodule_hook_guards``):
    a forward compiled before ``steer`` would keep running without the interventions, one
    compiled inside it would keep running them after. Turning the guard on (process-wide, it
    only adds guards) makes each compiled forward valid for its own set of hooks.
    transformers' ``generate`` caches its compiled forward on the model (``_compiled_call``):
    one compiled while the guard was off cannot be trusted, so it is refused.
    """
    config = getattr(getattr(torch, "_dynamo", None), "config", None)
    if config is None or not hasattr(config, "skip_nnmodule_hook_guards"):
        return
    if config.skip_nnmodule_hook_guards and getattr(model, "_compiled_call", None) is not None:
        raise UsageError(
            "this model's forward was compiled by generate() before hooks were guarded, so steering "
            "would be silently ignored; call xlsteer.hooks.guard_hooks_for_compile() before the first "
            "compiled generate() (or steer once before it), or reload the model"
        )
    config.skip_nnmodule_hook_guards = False
    _room_for_layer_graphs(config, model)


def _room_for_layer_graphs(config: Any, model: nn.Module) -> None:
    """Raise dynamo's recompile limits so that a steered compiled forward never falls back to eager.

    Why: a hooked site breaks the graph inside the decoder-layer loop, so dynamo compiles each
    decoder layer's forward as a frame of its own, once per layer (transformers' layers differ
    in an integer attribute, ``layer_idx``), per hook set and per batch shape. Measured on an
    H200 with a Llama-3.1-8B-shaped model (32 layers): a limit raised to 64 was still hit at
    batch 8, after which the remaining layers ran eagerly. The limits only bound compile work.
    """
    layers = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0)
    if hasattr(config, "recompile_limit"):
        config.recompile_limit = max(int(config.recompile_limit), 8 * layers)
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(int(config.accumulated_recompile_limit), 64 * layers)


def guard_hooks_for_compile() -> None:
    """Make torch.compile guard on module hooks (what ``steer`` does on entry); call before compiling."""
    config = getattr(getattr(torch, "_dynamo", None), "config", None)
    if config is not None and hasattr(config, "skip_nnmodule_hook_guards"):
        config.skip_nnmodule_hook_guards = False


def _make_hook(module, kind, site, site_editors, site_readers, session, device=None):
    @_eager
    def run(act: torch.Tensor) -> torch.Tensor | None:
        new = _edit(site, site_editors, session, act, device) if site_editors else None
        if site_readers:
            seen = new if new is not None else act
            ctx = _ctx_for(session, seen)
            if ctx is not None:
                for fn in site_readers:
                    fn(site, seen, ctx)
        return new

    if kind == "pre":

        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict):
            new = run(pre_hook_tensor(args, kwargs))
            return None if new is None else pre_hook_replace(args, kwargs, new)

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(mod: nn.Module, args: tuple, output: Any):
        new = run(get_tensor(output))
        return None if new is None else replace_tensor(output, new)

    return module.register_forward_hook(post_hook)


def _as_list(interventions: Any) -> list[Any]:
    if interventions is None:
        return []
    if isinstance(interventions, (list, tuple)):
        return list(interventions)
    return [interventions]


@contextlib.contextmanager
def steer(
    model: nn.Module | Any,
    interventions: Any,
    *,
    langs: str | Sequence[str] | None = None,
    anchor: str | None = "en",
    positions: Positions | Sequence[Positions] = "all",
    prompt_length: int | None = None,
    readers: Iterable[tuple[Sequence[Site], Reader]] = (),
) -> Iterator[HookSession]:
    """Apply interventions to ``model`` inside the block; hooks are removed on exit, also on errors.

    ``langs`` is the language of the inputs (one code for the whole batch, or one per row;
    ``session.set_langs`` changes it between calls). Rows in ``anchor`` are never steered;
    ``anchor=None`` steers every row (e.g. to test what steering the anchor does).
    ``positions`` is one policy for all interventions or one per intervention.
    """
    model = getattr(model, "model", model) if not isinstance(model, nn.Module) else model
    items = _as_list(interventions)
    policies = [positions] * len(items) if isinstance(positions, str) else list(positions)
    if len(policies) != len(items):
        raise UsageError(f"got {len(policies)} position policies for {len(items)} interventions")
    _guard_compiled(model)
    session = HookSession(anchor, langs, prompt_length)
    handles = _install(model, session, list(zip(items, policies)), list(readers))
    try:
        yield session
    finally:
        for h in handles:
            h.remove()
        session.ctx = None


@contextlib.contextmanager
def record(
    model: nn.Module | Any,
    sites: Sequence[Site],
    fn: Reader,
    *,
    langs: str | Sequence[str] | None = None,
) -> Iterator[HookSession]:
    """Call ``fn(site, activation, ctx)`` at each site on every forward call inside the block."""
    with steer(model, [], langs=langs, anchor=None, readers=[(list(sites), fn)]) as session:
        yield session
