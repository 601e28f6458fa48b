"""Device and dtype options of :func:`~xlsteer.models.loading.load_model`, checked before any slow work.

Why a module of its own: turning what a user typed (``--dtype bf16``, ``--device cuda:1``,
``--device-map auto`` or a JSON module -> device mapping) into what ``from_pretrained`` takes is
input validation with one-line errors, apart from loading itself. Where each intervention site
computes once the model is loaded is :mod:`xlsteer.models.placement`'s job.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import torch

from ..errors import UsageError


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """A torch dtype from its name ("float32", "bf16", ...); "auto" keeps the checkpoint's dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return "auto"
    if key not in _DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto")
    return _DTYPES[key]


def _check_device(device: str | int | torch.device, in_map: bool = False) -> str:
    """Validate one device name and return it as a string; GPU requests need a GPU.

    ``disk`` (accelerate's offload) only makes sense for parts of a model, inside a device map.
    """
    if isinstance(device, int):
        device = f"cuda:{device}"
    dev = str(device).strip().lower()
    if dev == "cpu" or (in_map and dev == "disk"):
        return dev
    if dev == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError("--device mps requested but MPS is not available; use --device cpu")
        return dev
    m = re.fullmatch(r"cuda(?::(\d+))?", dev)
    if not m:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda or cuda:N" + (" (or disk)" if in_map else ""))
    if not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise UsageError(
            f"--device {dev} requested but only {torch.cuda.device_count()} CUDA GPU(s) exist; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )
    return dev


_PLACEMENT_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def resolve_device_map(device_map: str | Mapping[str, Any] | None = None, device: str | None = "cpu") -> str | dict | None:
    """What to pass as ``device_map`` to ``from_pretrained`` (None: load on the CPU as usual).

    - ``None``: the whole model on ``device`` (loaded straight there when it is not the CPU).
    - ``"auto"`` / ``"balanced"`` / ``"balanced_low_0"`` / ``"sequential"``: accelerate places
      the layers over the available GPUs (and the CPU when they are full).
    - a dict (or its JSON text, as given on a command line) of module name -> device, e.g.
      ``{"model.embed_tokens": 0, "model.layers": 0, "lm_head": "cpu"}``; devices are checked.
    - another string is one device for the whole model, like ``device``.
    """
    if device_map is None:
        dev = _check_device(device or "cpu")
        return None if dev == "cpu" else {"": dev}
    if device not in (None, "cpu"):
        raise UsageError("give either --device or --device-map, not both")
    if isinstance(device_map, str):
        text = device_map.strip()
        if text.startswith("{"):
            try:
                device_map = json.loads(text)
            except json.JSONDecodeError as e:
                raise UsageError(f"--device-map is not valid JSON ({e.msg}); give e.g. '{{\"\": 0}}' or auto") from None
        elif text.lower() in _PLACEMENT_STRATEGIES:
            return text.lower()
        else:
            dev = _check_device(text)
            return None if dev == "cpu" else {"": dev}
    if not isinstance(device_map, Mapping) or not device_map:
        raise UsageError("--device-map must be auto, balanced, sequential, a device, or a non-empty module -> device mapping")
    out: dict[str, Any] = {}
    for module, dev in device_map.items():
        if isinstance(dev, bool) or not isinstance(dev, (int, str, torch.device)):
            raise UsageError(f"--device-map entry {module!r}: {dev!r} is not a device; use cpu, disk, an int or cuda:N")
        checked = _check_device(dev, in_map=True)
        out[str(module)] = dev if isinstance(dev, int) else checked
    return out
