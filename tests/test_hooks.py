"""Invariants of the hook engine, on tiny random models built from real configs."""

from __future__ import annotations

import pytest
import torch

from xlsteer.errors import LanguageError, UsageError
from xlsteer.hooks import record, steer
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site, get_layers
from xlsteer.testing import tiny_model


def _vector(model, layer=0, langs=("de", "sw"), site="resid_post", seed=1, strength=1.0):
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(
        sites=[Site(layer, site)],
        tensors={vector_key(layer): torch.randn(len(langs), d, generator=g)},
        params={"normalize": "none"},
        languages=list(langs),
        anchor="en",
        strength=strength,
    )


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama").model


@pytest.fixture(scope="module")
def gemma():
    return tiny_model("gemma3").model


def _ids(model, batch=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=g)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_alpha_zero_is_identity(arch):
    model = tiny_model(arch).model
    ids = _ids(model)
    base = model(ids).logits
    with steer(model, _vector(model, strength=0.0), langs="de"):
        steered = model(ids).logits
    assert torch.equal(base, steered)


def test_nonzero_alpha_changes_logits(llama):
    ids = _ids(llama)
    base = llama(ids).logits
    with steer(llama, _vector(llama, strength=4.0), langs="de"):
        steered = llama(ids).logits
    assert not torch.allclose(base, steered)


def test_hooks_removed_after_exception(llama):
    before = _hook_count(llama)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(llama, _vector(llama), langs="de"):
            assert _hook_count(llama) > before
            raise RuntimeError("boom")
    assert _hook_count(llama) == before
    ids = _ids(llama)
    assert torch.equal(llama(ids).logits, llama(ids).logits)


def test_failed_install_leaves_no_hooks(llama):
    before = _hook_count(llama)
    bad = _vector(llama)
    bad.sites = [Site(0, "resid_post"), Site(99, "resid_post")]
    with pytest.raises(UsageError, match="out of range"):
        with steer(llama, bad, langs="de"):
            pass
    assert _hook_count(llama) == before


def test_anchor_rows_bit_identical_in_mixed_batch(gemma):
    ids = _ids(gemma, batch=4)
    base = gemma(ids).logits
    with steer(gemma, _vector(gemma, strength=5.0), langs=["en", "de", "en", "sw"]):
        mixed = gemma(ids).logits
    assert torch.equal(mixed[0], base[0]) and torch.equal(mixed[2], base[2])
    assert not torch.allclose(mixed[1], base[1]) and not torch.allclose(mixed[3], base[3])


def test_rows_get_their_own_language_vector(llama):
    ids = _ids(llama, batch=2)
    vec = _vector(llama, strength=3.0)
    with steer(llama, vec, langs=["de", "sw"]):
        mixed = llama(ids).logits
    with steer(llama, vec, langs="de"):
        only_de = llama(ids).logits
    with steer(llama, vec, langs="sw"):
        only_sw = llama(ids).logits
    torch.testing.assert_close(mixed[0], only_de[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], only_sw[1], rtol=0, atol=1e-6)


def test_language_without_vector_is_refused(llama):
    with pytest.raises(LanguageError, match="no statistics for language"):
        with steer(llama, _vector(llama), langs="zh"):
            llama(_ids(llama))


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
def test_batched_left_padding_equals_one_by_one(arch):
    model = tiny_model(arch).model
    pad = 0
    seqs = [_ids(model, 1, n, seed=n)[0] for n in (5, 8, 3)]
    width = max(len(s) for s in seqs)
    ids = torch.full((3, width), pad)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = s
        mask[i, width - len(s) :] = 1
    vec = _vector(model, strength=2.0)
    for policy in ("all", "last_prompt"):
        with steer(model, vec, langs="de", positions=policy):
            batched = model(ids, attention_mask=mask, position_ids=_positions(mask)).logits
            for i, s in enumerate(seqs):
                single = model(s.unsqueeze(0)).logits[0]
                torch.testing.assert_close(batched[i, width - len(s) :], single, rtol=0, atol=1e-5)


def test_padding_positions_are_never_steered_or_recorded(llama):
    ids = _ids(llama, batch=2, length=6)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    seen = []
    site = Site(0, "resid_post")
    with record(llama, [site], lambda s, act, ctx: seen.append(ctx.token_mask.clone())):
        llama(ids, attention_mask=mask)
    assert seen and torch.equal(seen[0], mask.bool())

    # observe the input of the next layer, i.e. what the steered layer passed on
    layer = get_layers(llama)[1]
    outs = []
    handle = layer.register_forward_pre_hook(lambda m, a, kw: outs.append((a[0] if a else kw["hidden_states"]).detach()),
                                             with_kwargs=True)
    try:
        llama(ids, attention_mask=mask)
        with steer(llama, _vector(llama, strength=3.0), langs="de"):
            llama(ids, attention_mask=mask)
    finally:
        handle.remove()
    base, steered = outs[-2], outs[-1]
    assert torch.equal(base[0, :3], steered[0, :3])
    assert not torch.allclose(base[0, 3:], steered[0, 3:])


def _greedy(model, ids, mask, n, **steer_kw):
    with steer(model, **steer_kw):
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0
        )
    return out


@pytest.mark.parametrize("policy", ["all", "generated", "prompt", "last_prompt"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cached_generation_matches_recompute(arch, policy):
    """Each generated token is steered once; the cache never re-steers prompt positions."""
    model = tiny_model(arch).model
    ids = _ids(model, batch=2, length=6, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    ids[1, :2] = 0
    vec = _vector(model, strength=3.0)
    n_new = 5
    out = _greedy(model, ids, mask, n_new, interventions=vec, langs="de", positions=policy)
    assert out.shape[1] == ids.shape[1] + n_new
    full_mask = torch.cat([mask, torch.ones(2, n_new, dtype=mask.dtype)], dim=1)
    with steer(model, vec, langs="de", positions=policy, prompt_length=ids.shape[1]):
        logits = model(out, attention_mask=full_mask, position_ids=_positions(full_mask), use_cache=False).logits
    recomputed = logits[:, ids.shape[1] - 1 : -1].argmax(-1)
    assert torch.equal(recomputed, out[:, ids.shape[1] :])


def test_generated_policy_leaves_prompt_logits_unchanged(llama):
    ids = _ids(llama, batch=1, length=6)
    vec = _vector(llama, strength=5.0)
    base = llama(ids).logits
    with steer(llama, vec, langs="de", positions="generated"):
        steered = llama(ids).logits
    assert torch.equal(base, steered)


def test_steer_counts_each_token_once_during_generation(llama):
    """The reader sees prompt tokens once at prefill and each new token once."""
    ids = _ids(llama, batch=1, length=4)
    counts = []
    with record(llama, [Site(1, "resid_post")], lambda s, act, ctx: counts.append(int(ctx.token_mask.sum()))):
        llama.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                       pad_token_id=0)
    assert counts == [4, 1, 1]


@pytest.mark.parametrize("site_name", ["resid_pre", "attn_out", "mlp_out"])
def test_every_residual_site_can_be_steered(llama, site_name):
    ids = _ids(llama)
    base = llama(ids).logits
    vec = _vector(llama, site=site_name, strength=3.0)
    with steer(llama, vec, langs="de"):
        steered = llama(ids).logits
    assert not torch.allclose(base, steered)
    assert torch.equal(llama(ids).logits, base)


def test_unknown_position_policy_is_refused(llama):
    with pytest.raises(UsageError, match="position policy"):
        with steer(llama, _vector(llama), langs="de", positions="middle"):
            pass


def test_nested_contexts_compose_and_unwind(llama):
    ids = _ids(llama)
    a, b = _vector(llama, seed=1, strength=1.0), _vector(llama, seed=2, strength=1.0)
    with steer(llama, a, langs="de"):
        with steer(llama, b, langs="de"):
            both = llama(ids).logits
        only_a = llama(ids).logits
    with steer(llama, [a, b], langs="de"):
        together = llama(ids).logits
    torch.testing.assert_close(both, together, rtol=0, atol=1e-5)
    assert not torch.allclose(only_a, both)
