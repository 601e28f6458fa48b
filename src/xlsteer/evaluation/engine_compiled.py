"""The engine's compiled generation path: a static KV cache reused across calls and a compiled decode step.

Why: eager decoding of a large model on a GPU is bound by the host (Python per layer and per
kernel launch); a static cache gives every decode step the same shapes, so the step compiles
once and (with CUDA graphs, ``mode="reduce-overhead"``) replays as a recorded graph. Steering
stays inside that graph: the hook engine's site hooks are one traced tensor operation each, and
this loop hands them the call's facts on the host (:meth:`HookSession.begin_call`), so no
device-to-host copy is needed to learn the cache length.

Shapes, chosen so that graphs and CUDA-graph recordings are made once: the engine's batches
are sorted longest first, so the first batch fixes a cache (batch rows, length rounded up to a
multiple of :data:`LENGTH_STEP`) that later batches reuse after a ``reset()`` (zeroing in
place, not reallocating); a smaller batch is padded with copies of its first row (their output
is dropped), a longer one gets a cache of its own. Prefill runs eagerly (its length changes per
batch); every decode step goes through the compiled forward.

Outputs equal the eager path's (greedy: the same tokens; tested on the tiny models), up to
float reordering in the attention over the longer static cache and in generated code.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..errors import UsageError
from ..stats import positions_from_mask
from .engine_forward import _Generation, choose_tokens
from .sampling import RowDecoding

#: static cache lengths are multiples of this (fewer distinct shapes, so fewer compilations)
LENGTH_STEP = 64
BACKENDS = ("inductor", "aot_eager", "eager")


def compile_backend(setting: Any, device: torch.device) -> str | None:
    """The torch.compile backend the engine's generation uses, or None for eager decoding.

    ``False``/``None``: eager. ``True``: inductor. ``"auto"``: inductor on CUDA, where compiled
    decoding wins (the GPU check measures it), eager elsewhere (compiling on a CPU costs minutes
    and gains little for the models run there). A backend name (``"inductor"``, ``"aot_eager"``,
    ``"eager"``: no code generation, for tests) selects it.
    """
    if setting is None or setting is False:
        return None
    if setting is True:
        return "inductor"
    if setting == "auto":
        return "inductor" if device.type == "cuda" else None
    if setting in BACKENDS:
        return str(setting)
    raise UsageError(f"compile must be true, false, auto or one of {', '.join(BACKENDS)}; got {setting!r}")


class CompiledDecoder:
    """One engine's compiled decode step and its static caches (kept across calls)."""

    def __init__(self, model: Any, backend: str, device: torch.device):
        mode = "reduce-overhead" if backend == "inductor" and device.type == "cuda" else None
        self.model = model
        self.backend = backend
        self.forward = torch.compile(model.forward, backend=backend, mode=mode)
        self.caches: dict[tuple[int, int], Any] = {}

    def _cache(self, batch: int, length: int) -> tuple[Any, int, int]:
        """(cache, its batch rows, its length): the smallest kept one that fits, reset; else a new one."""
        from transformers import StaticCache

        fits = [(b, n) for (b, n) in self.caches if b >= batch and n >= length]
        if fits:
            key = min(fits, key=lambda k: (k[0] * k[1], k))
            cache = self.caches[key]
            cache.reset()  # zeroed in place: the same addresses, so recorded graphs stay valid
            return cache, key[0], key[1]
        size = -(-length // LENGTH_STEP) * LENGTH_STEP
        cache = StaticCache(config=self.model.config, max_cache_len=size)
        self.caches[(batch, size)] = cache
        return cache, batch, size

    def generate(self, engine: Any, session: Any, batch: tuple[list[list[int]], list[str]], max_new: int,
                 stops: list[str], decoding: RowDecoding | None = None) -> list[str]:
        """Continuations of one batch (``(token ids, row languages)``), as the engine's eager loop
        decodes them (the same token choice), through the compiled step."""
        enc, langs = batch
        b, width = len(enc), max(len(e) for e in enc)
        cache, rows, length = self._cache(b, width + max_new)
        pad_rows = rows - b
        ids, prompt_mask = engine._left_pad(list(enc) + [enc[0]] * pad_rows)
        session.set_langs(list(langs) + [langs[0]] * pad_rows)
        device = ids.device
        mask = torch.ones(rows, length, dtype=prompt_mask.dtype, device=device)
        mask[:, :width] = prompt_mask  # later positions become real as they are generated
        out = self.model(input_ids=ids, attention_mask=prompt_mask, position_ids=positions_from_mask(prompt_mask),
                         past_key_values=cache, cache_position=torch.arange(width, device=device), use_cache=True,
                         logits_to_keep=1)
        gen = _Generation(engine, b, stops)
        pos = positions_from_mask(prompt_mask)[:, -1:]
        cache_position = torch.tensor([width], device=device)
        with _row_tensors_may_be_dynamic():
            return self._decode(gen, session, out, (mask, pos, cache_position), cache, (max_new, width, decoding))

    def _decode(self, gen: _Generation, session: Any, out: Any, inputs: tuple[torch.Tensor, ...], cache: Any,
                plan: tuple[int, int, RowDecoding | None]) -> list[str]:
        """The decode steps: the step's tokens chosen for the real rows (padding rows are fed padding)."""
        (mask, pos, cache_position), (max_new, width, decoding) = inputs, plan
        rows, device, b = mask.shape[0], mask.device, len(gen.done)
        real = torch.ones(rows, 1, dtype=torch.bool, device=device)
        for step in range(max_new):
            nxt = choose_tokens(out.logits[:b, -1, :], decoding)
            if gen.take(nxt.tolist()) or step == max_new - 1:
                break
            feed = torch.tensor(gen.feed() + [gen.engine.pad_id] * (rows - b), device=device).unsqueeze(1)
            pos = pos + 1
            session.begin_call(rows, 1, width + step, real)  # the root hook's work, from host ints
            out = self.forward(input_ids=feed, attention_mask=mask, position_ids=pos, cache_position=cache_position,
                               past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache_position = cache_position + 1
        return gen.texts


@contextlib.contextmanager
def _row_tensors_may_be_dynamic() -> Iterator[None]:
    """Let dynamo keep the batch dimension of the hook engine's per-row tensors symbolic.

    Why: they reach the graph through module hooks, whose tensors dynamo treats as fixed-shape
    by default (``force_nn_module_property_static_shapes``); a graph would then pin the batch
    size, and every batch size would compile again. Set only while this loop's compiled step runs.
    """
    import torch._dynamo.config as dynamo_config

    with dynamo_config.patch(force_nn_module_property_static_shapes=False):
        yield
