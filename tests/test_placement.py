"""Placement of interventions on models spread over devices (accelerate device maps).

Without a second device, a decoder layer cast to float64 stands in for "a layer that lives
elsewhere": the engine must prepare each intervention with the hooked module's own dtype (and
device), never the model's first one, and steering must still equal a hand-written reference.
"""

from __future__ import annotations

import pytest
import torch

from xlsteer.hooks import steer
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.placement import device_map_entry, module_placement, site_placements
from xlsteer.models.sites import SITE_NAMES, Site, get_layers
from xlsteer.testing import tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _vector(d: int, sites: list[Site], seed: int = 3) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(
        sites=sites,
        tensors={vector_key(s.layer): torch.randn(1, d, generator=g) for s in sites},
        params={"normalize": "none"},
        languages=["de"],
        anchor="en",
    )


def _mixed_llama():
    """Tiny Llama whose layer 1, final norm and head run in float64 (a stand-in second device)."""
    model = tiny_model("llama").model
    get_layers(model)[1].to(torch.float64)
    model.model.norm.to(torch.float64)
    model.lm_head.to(torch.float64)
    return model


def _ids(batch: int = 2, length: int = 6) -> torch.Tensor:
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(0))


def _spy_prepare(iv: SteeringVector) -> dict[Site, tuple[torch.device, torch.dtype]]:
    """Record the (device, dtype) the engine asks each site to be prepared in (instance-local)."""
    calls: dict[Site, tuple[torch.device, torch.dtype]] = {}
    original = iv.prepare

    def prepare(site, device, dtype):
        calls[site] = (torch.device(device), dtype)
        return original(site, device, dtype)

    iv.prepare = prepare  # type: ignore[method-assign]
    return calls


def test_placement_reports_each_layers_own_dtype():
    model = _mixed_llama()
    by_site = {p.site: p for p in site_placements(model)}
    assert by_site[Site(0, "resid_post")].dtype == torch.float32
    assert by_site[Site(1, "resid_post")].dtype == torch.float64
    assert by_site[Site(1, "mlp_act")].dtype == torch.float64
    pre = by_site[Site(1, "resid_pre")]
    assert (pre.dtype, pre.input_dtype) == (torch.float64, torch.float32)  # arrives from layer 0
    assert pre.at_boundary and not pre.crosses_device
    assert not by_site[Site(1, "resid_post")].at_boundary
    # the activation module has no weights: it runs where (and in the dtype) its MLP's projections do
    assert by_site[Site(1, "mlp_gate")].dtype == torch.float64 and by_site[Site(0, "mlp_gate")].dtype == torch.float32
    assert len(by_site) == 2 * len(SITE_NAMES)  # every site of both layers


def test_steer_prepares_each_site_with_its_modules_device_and_dtype():
    model = _mixed_llama()
    sites = [Site(0, "resid_post"), Site(1, "resid_post")]
    iv = _vector(64, sites)
    calls = _spy_prepare(iv)
    with steer(model, iv, langs="de"):
        model(_ids())
    expected = {p.site: (p.device, p.dtype) for p in site_placements(model, sites)}
    assert calls == expected
    assert calls[Site(1, "resid_post")][1] == torch.float64


def test_steering_a_mixed_dtype_model_equals_the_reference():
    model = _mixed_llama()
    sites = [Site(0, "resid_post"), Site(1, "resid_post")]
    iv = _vector(64, sites)
    ids = _ids()
    with steer(model, iv, langs="de"):
        steered = model(ids).logits

    def adder(layer):
        def hook(mod, args, out):
            return out + iv.effective(layer)[0].to(out.dtype)

        return hook

    handles = [get_layers(model)[s.layer].register_forward_hook(adder(s.layer)) for s in sites]
    try:
        reference = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    assert steered.dtype == torch.float64
    assert torch.equal(steered, reference)
    # and the float32 model steered the same way agrees within float32 precision
    plain = tiny_model("llama").model
    with steer(plain, iv, langs="de"):
        single = plain(ids).logits
    torch.testing.assert_close(steered.float(), single, atol=1e-4, rtol=1e-4)


def test_resid_pre_at_a_dtype_boundary_is_added_in_the_modules_dtype():
    model = _mixed_llama()
    site = Site(1, "resid_pre")
    iv = _vector(64, [site])
    ids = _ids()
    with steer(model, iv, langs="de"):
        steered = model(ids).logits
    v = iv.effective(1)[0].to(torch.float64)

    def pre(mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        new = (h + v).to(h.dtype)  # what the engine does: add in the prepared dtype, keep the activation's
        return ((new,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

    handle = get_layers(model)[1].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        reference = model(ids).logits
    finally:
        handle.remove()
    assert torch.equal(steered, reference)


def test_device_map_entry_takes_the_longest_covering_key():
    dmap = {"model.layers": 0, "model.layers.1": "cpu", "lm_head": "disk"}
    assert device_map_entry(dmap, "model.layers.1.mlp.down_proj") == "cpu"
    assert device_map_entry(dmap, "model.layers.10") == "0"  # "model.layers.1" is no prefix of it
    assert device_map_entry(dmap, "model.norm") is None
    assert device_map_entry({"": 0}, "model.layers.3") == "0"
    assert device_map_entry(None, "model.layers.3") is None


def _offloaded_llama(tmp_path):
    from accelerate import dispatch_model

    model = tiny_model("llama").model
    dmap = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    return dispatch_model(model, device_map=dmap, main_device="cpu", offload_dir=str(tmp_path))


def test_offloaded_layer_is_placed_on_its_execution_device_not_meta(tmp_path):
    model = _offloaded_llama(tmp_path)
    layer1 = get_layers(model)[1]
    assert next(layer1.parameters()).device.type == "meta"  # weights live on disk between calls
    assert module_placement(layer1) == (torch.device("cpu"), torch.float32)
    p = {q.site: q for q in site_placements(model)}[Site(1, "resid_post")]
    assert (str(p.device), p.mapped_to) == ("cpu", "disk")


def test_steering_an_offloaded_layer_equals_the_plain_model(tmp_path):
    iv = _vector(64, [Site(1, "resid_post")])
    ids = _ids()
    plain = tiny_model("llama").model
    with steer(plain, iv, langs="de"):
        reference = plain(ids).logits
    model = _offloaded_llama(tmp_path)
    with steer(model, iv, langs="de"):
        steered = model(ids).logits
    torch.testing.assert_close(steered, reference)


@pytest.mark.cuda
@cuda
def test_device_map_auto_steered_logits_match_cpu_within_bf16(tmp_path):
    from xlsteer.models.loading import load_model

    tiny = tiny_model("llama")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    sites = [Site(0, "resid_post"), Site(1, "resid_post")]
    iv = _vector(64, sites)
    ids = _ids()
    cpu_base = tiny.model(ids).logits
    with steer(tiny.model, iv, langs="de"):
        cpu = tiny.model(ids).logits
    lm = load_model(str(tmp_path), dtype="bfloat16", device_map="auto")
    placements = site_placements(lm.model, sites)
    assert all(p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in placements)
    first = lm.model.get_input_embeddings().weight.device
    gpu_base = lm.model(ids.to(first)).logits.float().cpu()
    with steer(lm.model, iv, langs="de"):
        gpu = lm.model(ids.to(first)).logits.float().cpu()
    torch.testing.assert_close(gpu, cpu, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(gpu - gpu_base, cpu - cpu_base, atol=5e-2, rtol=5e-2)


def test_offloaded_layer_sites_are_prepared_on_the_execution_device(tmp_path):
    model = _offloaded_llama(tmp_path)
    sites = [Site(1, "resid_pre"), Site(1, "resid_post"), Site(1, "mlp_act")]
    ivs = [_vector(64 if s.name != "mlp_act" else 128, [s], seed=i) for i, s in enumerate(sites)]
    spies = [_spy_prepare(iv) for iv in ivs]
    with steer(model, ivs, langs="de"):
        model(_ids())
    calls = {site: placed for spy in spies for site, placed in spy.items()}
    assert calls == {s: (torch.device("cpu"), torch.float32) for s in sites}  # never 'meta'


def test_statistics_accumulate_in_float32_or_wider_on_a_bf16_model():
    """A bf16 model's activations are summed in float32 per batch and float64 across batches."""
    from xlsteer.hooks import record
    from xlsteer.stats import collect, positions_from_mask

    lm = tiny_model("llama")
    lm.model.to(torch.bfloat16)
    texts = {"en": ["the cat sat on the mat", "a dog", "hello world, again and again"],
             "de": ["die Katze", "ein Hund lief schnell nach Hause", "hallo Welt"]}
    sites = [Site(0, "resid_post"), Site(1, "mlp_act")]
    seen: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    with record(lm.model, sites, lambda site, act, ctx: seen[site].append(act.detach().clone())):
        stats = collect(lm, texts, sites, batch_size=8)  # one batch per language
    for k, (lang, items) in enumerate(texts.items()):
        enc = lm.tokenizer(items, return_tensors="pt", padding=True)
        m = (enc["attention_mask"].bool() & (enc["input_ids"] != lm.tokenizer.bos_token_id)).double()
        assert positions_from_mask(enc["attention_mask"]).shape == m.shape
        for site in sites:
            act = seen[site][k]
            assert act.dtype == torch.bfloat16
            x = act.double()  # exact: every bf16 value is a float64 value
            ref_sum = torch.einsum("bt,btd->d", m, x)
            ref_sumsq = torch.einsum("bt,btd->d", m, x * x)
            a = stats.acc[(lang, site)]
            assert a.tok_sum.dtype == torch.float64 and a.item_sum.dtype == torch.float64
            # float32 accumulation of bf16 values: ~1e-7 relative; a bf16 sum would be off by ~1e-2
            torch.testing.assert_close(a.tok_sum, ref_sum, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a.tok_sumsq, ref_sumsq, rtol=1e-5, atol=1e-5)
            pooled = torch.einsum("bt,btd->bd", m, x) / m.sum(1, keepdim=True)
            torch.testing.assert_close(a.item_sum, pooled.sum(0), rtol=1e-5, atol=1e-5)
            assert stats.mean(lang, site).dtype == torch.float32
