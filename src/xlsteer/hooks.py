"""The hook engine: the one place that installs hooks, and removes them.

``steer(model, interventions, ...)`` edits activations; ``record(model, sites, fn)`` reads them.
Both share one mechanism:

* A root forward pre-hook captures, once per forward call, what every site hook needs: which
  positions are real tokens (from the 2D attention mask; left or right padding), their
  absolute positions in the sequence (from ``cache_position``, the mask length or the KV-cache
  length), the prompt length (set at the first, uncached call) and the language of each row
  (:class:`~xlsteer.hook_session.HookSession`). It writes what the site hooks need into tensors
  that live for the whole block and are updated in place: one ``(batch, new_tokens)`` mask per
  position policy (real tokens it selects in rows not in the anchor language) and, per
  intervention, each row's language index and the strength (:class:`~xlsteer.hook_session.Rows`).
* Each site hook then does one traced tensor operation per intervention:
  ``out = where(mask, intervention.apply(act, rows), act)`` (``act + strength * v[row]``, a
  neuron scale, a neuron overwrite, a per-row linear map). Unselected positions are
  bit-identical. Nothing in a site hook branches on tensor values or on host ints that change
  per decode step, so under ``torch.compile(fullgraph=True)`` a steered decode step is one
  graph, and a new step, a new alpha or new row languages reuse it. (Eagerly, a site hook
  skips its work when the host already knows the policy selects nothing in this call.)

KV cache: during cached generation each forward call only carries the new tokens, so every
token passes a site exactly once: prompt tokens at prefill, each generated token at its own
decode step. Positions already in the cache are never steered again.

Placement: each intervention is prepared once, at install time, on its hooked module's
*execution* device and in its dtype (``models.placement.module_placement``: accelerate device
maps, offloaded layers whose weights rest on ``meta``); a pre-hook input that arrives from
another device is moved there first (where accelerate would move it anyway).

Compiled forwards: the root pre-hook stays eager; compile the model's ``forward`` (``steer``
runs the pre-hook in ``Module.__call__`` around it) or call :meth:`HookSession.begin_call`
before a compiled forward, as the engine's compiled decoding does. Readers (``record``) run
eagerly, outside compiled graphs (a graph break at each read site). ``steer`` makes dynamo
guard on module hooks, so a compiled forward follows hooks as they come and go.

Position policies:
  ``all``          every real (non-padding) token of the prompt and of the generation
  ``prompt``       only prompt tokens (positions < prompt length)
  ``generated``    only generated tokens (positions >= prompt length)
  ``last_prompt``  only each row's last real prompt token
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .errors import UsageError
from .hook_session import POSITION_POLICIES, ForwardContext, HookSession, MaskSlot, Positions, Rows
from .hook_session import _static
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

Reader = Callable[[Site, torch.Tensor, ForwardContext], None]


@dataclass(eq=False)
class _Edit:
    """One intervention at one site: its prepared tensors, its policy's mask and its rows."""

    intervention: Any
    prepared: Any
    mask: MaskSlot
    rows: Rows


def _edit(site: Site, edits: list[_Edit], act: torch.Tensor, device: torch.device | None) -> torch.Tensor | None:
    """Apply ``edits`` where their masks select; ``None`` when nothing changed (eager only).

    Traceable: only tensors are read while compiling (``MaskSlot.active``, a host bool that
    changes per call, is read only when running eagerly, to skip work the host knows is void).
    ``device`` is where the edits were prepared (the hooked module's execution device). A pre
    hook at a device boundary sees its input still on the producing module's device (accelerate
    moves it only inside the module's forward); it is moved to ``device`` first, which is where
    accelerate would send it next anyway, so the prepared tensors never change device per call.
    """
    compiling = torch.compiler.is_compiling()
    out = act
    changed = False
    for e in edits:
        mask = e.mask.value
        # (the shape test runs eagerly only: traced, it would pin a symbolic batch size to one value)
        if mask is None or (not compiling and (act.dim() != 3 or tuple(mask.shape) != tuple(act.shape[:2]))):
            raise UsageError(
                f"cannot steer at {site}: the activation has shape {tuple(act.shape)} but the forward call "
                "was not seen by the root hook; call the model object that was passed to steer()"
            )
        if not compiling and not e.mask.active:
            continue
        if device is not None and device.type != "meta" and out.device != device:
            out = out.to(device)
        new = e.intervention.apply(site, out, e.rows, e.prepared)
        out = torch.where(mask.unsqueeze(-1), new.to(out.dtype), out)
        changed = True
    return out if changed or compiling else None


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
        by_site: dict[Site, list[_Edit]] = {}
        devices: dict[Site, torch.device] = {}
        for editor, policy in editors:
            if policy not in POSITION_POLICIES:
                raise UsageError(f"unknown position policy '{policy}'; choose one of {', '.join(POSITION_POLICIES)}")
            for site in editor.sites:
                resolve(model, site)
                # the module's *execution* device (accelerate device maps, offloaded layers whose
                # weights rest on 'meta') and its own dtype: never the model's first device
                device, dtype = module_placement(placement_module(model, site))
                prepared = _static_tensors(editor.prepare(site, device, dtype))
                by_site.setdefault(site, []).append(
                    _Edit(editor, prepared, session.mask_slot(policy, device), session.rows_slot(editor, device)))
                devices.setdefault(site, device)
        read_by_site: dict[Site, list[Reader]] = {}
        for sites, fn in readers:
            for site in sites:
                resolve(model, site)
                read_by_site.setdefault(site, []).append(fn)

        for site in sorted(set(by_site) | set(read_by_site)):
            module, kind = resolve(model, site)
            handles.append(_make_hook(module, kind, site, by_site.get(site, []), _reader(site, read_by_site.get(site, []),
                                                                                         session), devices.get(site)))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


def _static_tensors(prepared: Any) -> Any:
    """Mark the tensors of a prepared intervention as fixed-address inputs of CUDA graphs."""
    items = prepared.values() if isinstance(prepared, dict) else prepared if isinstance(prepared, (tuple, list)) \
        else [prepared]
    for t in items:
        if isinstance(t, torch.Tensor):
            _static(t)
    return prepared


def _eager(fn: Callable) -> Callable:
    """Run a hook body outside torch.compile graphs: the root pre-hook and readers.

    Why: both are host-side work on Python values (cache length, prompt length, row languages;
    a reader's own bookkeeping); traced, every decode step would specialise on a new length and
    recompile. The root pre-hook runs in ``Module.__call__`` around a compiled ``forward``; a
    reader costs a graph break at its site. Without torch.compile this is a plain call.
    """
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


def _reader(site: Site, fns: list[Reader], session: HookSession) -> Callable[[torch.Tensor], None] | None:
    """The eager body calling a site's readers with the activation and the current context."""
    if not fns:
        return None

    @_eager
    def read(act: torch.Tensor) -> None:
        ctx = session.ctx
        if ctx is None or act.dim() != 3 or act.shape[0] != ctx.batch or act.shape[1] != ctx.new_len:
            return
        for fn in fns:
            fn(site, act, ctx)

    return read


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
    """Raise dynamo's recompile limits so that a compiled forward never falls back to eager.

    Why: each set of hooked sites is a different program, so a compiled forward gets one graph
    per hook set and batch shape: a layer sweep installs one set per layer (and the unsteered
    run none). dynamo's default limit (8 per frame) would silently run later sets eagerly. The
    limits only bound compile work; a new alpha or new row languages never recompile.
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


def _make_hook(module: nn.Module, kind: str, site: Site, edits: list[_Edit],
               read: Callable[[torch.Tensor], None] | None, device: torch.device | None):
    def run(act: torch.Tensor) -> torch.Tensor | None:
        new = _edit(site, edits, act, device) if edits else None
        if read is not None:
            read(new if new is not None else act)
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
        session.close()


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
