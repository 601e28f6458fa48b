"""Where each intervention site computes when a model is spread over devices (accelerate device maps).

Why: with ``device_map="auto"`` (or any accelerate ``hf_device_map``), ``model.device`` is only
the first device; each decoder layer may live on another GPU, in another dtype, or be offloaded
(its weights on the ``meta`` device at rest and moved to an *execution device* at each call).
The hook engine casts every intervention once, at install time, to the device and dtype of the
module it hooks. This module states that rule in one place and reports it per site, so users
(and tests) can see where every vector will live before running anything.

The rule (:func:`module_placement`):

* device: the accelerate execution device when the module (or, failing that, its first
  descendant with one) carries an accelerate hook (``_hf_hook.execution_device``); otherwise the
  device of its first parameter; otherwise its first buffer; otherwise the CPU. Offloaded
  weights sit on ``meta``, which is never where the computation happens, so ``meta`` is never
  reported while an execution device is known.
* dtype: the dtype of its first floating-point parameter (meta tensors keep theirs), else float32.

Pre-hook sites (``resid_pre``, ``mlp_act``) see their activation *before* accelerate moves it to
the module's device: the input arrives on the device of the module that produced it (the previous
layer, the embedding, or the MLP). :attr:`Placement.input_device` reports that device and
:attr:`Placement.crosses_device` flags the sites where it differs from the module's own: at a
device boundary a ``resid_pre@L`` vector must be moved to the previous layer's device (or, the
same point in the residual stream, be fitted at ``resid_post@L-1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from .sites import Site, num_layers, placement_module, producer_module, resolve, site_names
from ..errors import SiteError


def _as_device(dev: Any) -> torch.device | None:
    """accelerate writes execution devices as int (GPU index), str or torch.device."""
    if dev is None:
        return None
    if isinstance(dev, torch.device):
        return dev
    if isinstance(dev, int) and not isinstance(dev, bool):
        return torch.device("cuda", dev)
    try:
        return torch.device(str(dev))
    except (RuntimeError, TypeError):
        return None


def _hook_execution_device(module: nn.Module) -> torch.device | None:
    """The execution device of the accelerate hook on ``module`` itself (SequentialHook included)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return None
    hooks = getattr(hook, "hooks", None) or [hook]  # SequentialHook keeps a list
    for h in hooks:
        dev = _as_device(getattr(h, "execution_device", None))
        if dev is not None:
            return dev
    return None


def execution_device(module: nn.Module) -> torch.device | None:
    """The accelerate execution device of ``module``, or of its first hooked descendant."""
    dev = _hook_execution_device(module)
    if dev is not None:
        return dev
    for sub in module.modules():
        dev = _hook_execution_device(sub)
        if dev is not None:
            return dev
    return None


def module_placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) an intervention at ``module`` must be prepared in (see the module doc)."""
    params = list(module.parameters())
    floating = next((p for p in params if p.is_floating_point()), None)
    dtype = floating.dtype if floating is not None else torch.float32
    dev = execution_device(module)
    if dev is None:
        tensors = params or list(module.buffers())
        on = next((t.device for t in tensors if t.device.type != "meta"), None)
        dev = on if on is not None else (tensors[0].device if tensors else torch.device("cpu"))
    return dev, dtype


@dataclass(frozen=True)
class Placement:
    """Where one site's hooked module computes, and where its activation arrives."""

    site: Site
    module: str  # module path of the hooked module
    hook: str  # "pre" (input of the module) or "post" (output)
    device: torch.device  # where the module computes (the engine prepares interventions here)
    dtype: torch.dtype
    mapped_to: str | None  # the hf_device_map entry covering the module ("0", "cpu", "disk", ...)
    input_device: torch.device  # where the activation is when the hook fires
    input_dtype: torch.dtype

    @property
    def crosses_device(self) -> bool:
        """True when the activation arrives on another device than the module's (pre hooks at a boundary)."""
        return self.input_device != self.device

    @property
    def at_boundary(self) -> bool:
        """True when the activation arrives in another device or dtype than the module's."""
        return self.crosses_device or self.input_dtype != self.dtype


def device_map_entry(device_map: Mapping[str, Any] | None, module_name: str) -> str | None:
    """The value of the longest ``hf_device_map`` key that is ``module_name`` or one of its parents."""
    if not device_map:
        return None
    best: str | None = None
    for key in device_map:
        if key == "" or module_name == key or module_name.startswith(key + "."):
            if best is None or len(key) > len(best):
                best = key
    return None if best is None else str(device_map[best])


def _unwrap(model: nn.Module | Any) -> nn.Module:
    """The torch module of a ``LoadedModel`` (or the module itself)."""
    return model if isinstance(model, nn.Module) else model.model


def site_placements(model: nn.Module | Any, sites: Iterable[Site] | None = None) -> list[Placement]:
    """Placement of every given site (default: every site of every layer the architecture has)."""
    model = _unwrap(model)
    if sites is None:
        wanted: Sequence[Site] = [Site(layer, name) for layer in range(num_layers(model)) for name in site_names()]
        skip_missing = True
    else:
        wanted = sorted(set(sites))
        skip_missing = False
    names = {id(m): n for n, m in model.named_modules()}
    device_map = getattr(model, "hf_device_map", None)
    out: list[Placement] = []
    for site in wanted:
        try:
            module, kind = resolve(model, site)
        except SiteError:
            if skip_missing:
                continue
            raise
        device, dtype = module_placement(placement_module(model, site))
        if kind == "pre":
            in_device, in_dtype = module_placement(producer_module(model, site, module, names))
        else:
            in_device, in_dtype = device, dtype
        name = names.get(id(module), "?")
        out.append(
            Placement(
                site=site,
                module=name,
                hook=kind,
                device=device,
                dtype=dtype,
                mapped_to=device_map_entry(device_map, name),
                input_device=in_device,
                input_dtype=in_dtype,
            )
        )
    return out
