"""The serving fast path: a static KV cache (and torch.compile) must apply interventions exactly.

With ``cache_implementation="static"`` generate() passes no 2D attention mask but a 4D mask
over the whole cache (a dict of them for models mixing sliding and full attention), and no
``cache_position``; the root hook must still find each call's positions, padding and prompt
length, so that steered generation is token-for-token the eager (dynamic cache) one.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from xlsteer.errors import UsageError
from xlsteer.hook_session import ForwardContext
from xlsteer.hooks import record, steer
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model

PROMPTS = ["hallo welt, wie geht es dir heute", "ein hund", "die katze schläft"]


def _vector(layer: int = 1, scale: float = 3.0) -> SteeringVector:
    g = torch.Generator().manual_seed(1)
    return SteeringVector(sites=[Site(layer, "resid_post")],
                          tensors={vector_key(layer): scale * torch.randn(1, 64, generator=g)},
                          params={"normalize": "none"}, languages=["de"], anchor="en")


def _generate(lm, static: bool, iv=None, positions="all", **extra):
    enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=12, do_sample=False, **extra)
    if static:
        kw["cache_implementation"] = "static"
    if iv is None:
        return lm.model.generate(**enc, **kw)
    with steer(lm.model, iv, langs="de", positions=positions):
        return lm.model.generate(**enc, **kw)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def lm(request):
    return tiny_model(request.param)


@pytest.mark.parametrize("positions", ["all", "generated", "prompt", "last_prompt"])
def test_static_cache_steered_generation_equals_eager_token_for_token(lm, positions):
    iv = _vector()
    eager = _generate(lm, static=False, iv=iv, positions=positions)
    static = _generate(lm, static=True, iv=iv, positions=positions)
    assert torch.equal(static, eager)
    if positions == "all":
        assert not torch.equal(eager, _generate(lm, static=False))  # the vector does change the output


def test_static_cache_generation_equals_recomputing_without_a_cache(lm):
    """Steering every position: greedy decoding by full recomputation gives the same tokens."""
    iv = _vector()
    static = _generate(lm, static=True, iv=iv)
    enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with steer(lm.model, iv, langs="de"):
        for _ in range(12):
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    # rows that hit EOS are padded by generate(); compare up to each row's first EOS
    eos = lm.tokenizer.eos_token_id
    for r in range(len(PROMPTS)):
        a, b = static[r].tolist(), ids[r].tolist()
        cut = next((i + 1 for i in range(enc["input_ids"].shape[1], len(a)) if a[i] == eos), len(a))
        assert a[:cut] == b[:cut]


def test_static_cache_context_matches_the_dynamic_one(lm):
    """Past length, positions, prompt length and padding seen by hooks are the same with both caches."""

    def contexts(static: bool) -> list[tuple]:
        seen: list[tuple] = []

        def reader(site: Site, act: torch.Tensor, ctx: ForwardContext) -> None:
            seen.append((ctx.past_len, ctx.new_len, ctx.prompt_len, ctx.positions.tolist(),
                         ctx.token_mask.tolist(), ctx.last_prompt_index.tolist()))

        enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
        kw = dict(max_new_tokens=5, do_sample=False, cache_implementation="static" if static else None)
        with record(lm.model, [Site(0, "resid_post")], reader):
            lm.model.generate(**enc, **kw)
        return seen

    dynamic, static = contexts(False), contexts(True)
    assert static == dynamic
    assert not all(all(row) for row in dynamic[0][4])  # the prompts are padded: padding is recognised


def test_steer_refuses_a_forward_compiled_blind_to_hooks():
    import torch._dynamo.config as dynamo_config

    lm = tiny_model("llama")
    with dynamo_config.patch(skip_nnmodule_hook_guards=True):  # restored on exit (monkeypatch would delete it)
        lm.model._compiled_call = object()  # what generate() leaves after compiling the forward
        with pytest.raises(UsageError, match="compiled"):
            with steer(lm.model, _vector(), langs="de"):
                pass
        del lm.model._compiled_call
        with steer(lm.model, _vector(), langs="de"):
            assert dynamo_config.skip_nnmodule_hook_guards is False  # steer turns the hook guards on


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compiled_static_cache_generation_applies_interventions_exactly():
    """torch.compile'd decoding (transformers' auto-compile, forced on CPU) equals eager, both ways round.

    Unsteered first, then steered, then unsteered again: the compiled forward must follow the
    hooks as they come and go (each compiled once). ~110 s on two CPU cores (compilation).
    """
    import torch._dynamo.config as dynamo_config

    from xlsteer.hooks import guard_hooks_for_compile

    with dynamo_config.patch(skip_nnmodule_hook_guards=True):
        guard_hooks_for_compile()
        assert dynamo_config.skip_nnmodule_hook_guards is False
        _compiled_equals_eager()


def _compiled_equals_eager() -> None:
    from transformers import CompileConfig

    lm = tiny_model("llama")
    iv = _vector()
    ref_plain = _generate(lm, static=False)
    ref_steered = _generate(lm, static=False, iv=iv)
    cc = CompileConfig(fullgraph=False, mode="default")
    cc._compile_all_devices = True  # transformers compiles only on accelerators unless told
    try:
        assert torch.equal(_generate(lm, static=True, compile_config=cc), ref_plain)
        assert getattr(lm.model, "_compiled_call", None) is not None  # the compiled forward was used
        assert torch.equal(_generate(lm, static=True, iv=iv, compile_config=cc), ref_steered)
        assert torch.equal(_generate(lm, static=True, compile_config=cc), ref_plain)
        assert torch.equal(_generate(lm, static=True, iv=iv, compile_config=cc), ref_steered)
    finally:
        torch._dynamo.reset()


def test_steer_leaves_dynamo_room_for_a_graph_per_hooked_layer():
    """Each set of hooked sites is its own compiled graph (a layer sweep installs one per layer):
    the recompile limits must cover that, or dynamo silently runs later sets eagerly."""
    import torch._dynamo.config as dynamo_config

    lm = tiny_model("llama", layers=16)
    with dynamo_config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        with steer(lm.model, _vector(), langs="de"):
            assert dynamo_config.recompile_limit >= 8 * 16
            assert dynamo_config.accumulated_recompile_limit >= 64 * 16
