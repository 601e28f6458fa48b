"""Sites and architectures are data: a new site or a new architecture is one declaration, and
every consumer (hooks, placement, widths, ``xlsteer sites``, the docs' tables) follows it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from xlsteer.errors import SiteError
from xlsteer.hooks import record, steer
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.archs import ARCHS, ArchSpec, register_arch
from xlsteer.models.placement import site_placements
from xlsteer.models.sites import (SITE_NAMES, SITES, Site, SiteSpec, describe_sites, final_norm_and_head, get_layers,
                                  resolve, site_width, sites_markdown)
from xlsteer.testing import tiny_model

ROOT = Path(__file__).resolve().parents[1]
XGLM_ROWS = {"attn_out": "self_attn", "mlp_out": "fc2", "mlp_act": ("fc2", "pre"), "mlp_gate": "activation_fn"}
ATTN_IN = SiteSpec("attn_in", "input of the attention block", hook="pre", paths=("self_attn", "attn", "attention"))


def _xglm() -> torch.nn.Module:
    """A tiny random XGLM: a layout without a built-in table (its layers have no ``mlp`` module)."""
    import transformers as tf

    cfg = tf.XGLMConfig(vocab_size=64, d_model=32, ffn_dim=48, num_layers=2, attention_heads=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return tf.AutoModelForCausalLM.from_config(cfg).eval()


def _ids(vocab: int = 64) -> torch.Tensor:
    return torch.randint(4, vocab, (2, 5), generator=torch.Generator().manual_seed(0))


def _recorded(model: torch.nn.Module, sites: list[Site]) -> dict[str, torch.Tensor]:
    got: dict[str, torch.Tensor] = {}
    with record(model, sites, lambda s, a, c: got.update({s.name: a.detach().clone()})):
        model(_ids(model.config.vocab_size))
    return got


def test_an_unknown_layout_gains_its_mlp_sites_from_one_declaration():
    model = _xglm()
    with pytest.raises(SiteError, match="mlp_out is not available"):
        resolve(model, Site(0, "mlp_out"))
    spec = ArchSpec("model.layers", XGLM_ROWS, final_norm="model.layer_norm")
    with ARCHS.temporarily("xglm", spec):
        layer = get_layers(model)[1]
        fc1_out: list[torch.Tensor] = []
        handle = layer.fc1.register_forward_hook(lambda m, a, out: fc1_out.append(out))
        try:
            got = _recorded(model, [Site(1, n) for n in ("mlp_act", "mlp_gate", "mlp_out")])
        finally:
            handle.remove()
        torch.testing.assert_close(got["mlp_gate"], layer.activation_fn(fc1_out[0]))
        torch.testing.assert_close(got["mlp_act"], got["mlp_gate"])  # XGLM's MLP is not gated
        torch.testing.assert_close(got["mlp_out"], layer.fc2(got["mlp_act"]))
        assert site_width(model, "mlp_gate") == 48 and site_width(model, "attn_out") == 32
        assert {r["site"] for r in describe_sites(model)} == set(SITE_NAMES)
        assert final_norm_and_head(model)[0] is model.model.layer_norm
    with pytest.raises(SiteError):  # the declaration was temporary
        resolve(model, Site(0, "mlp_out"))


def _same_modules(model: torch.nn.Module) -> list[tuple[int, str]]:
    return [(id(resolve(model, Site(layer, n))[0]), resolve(model, Site(layer, n))[1])
            for layer in range(2) for n in SITE_NAMES]


@pytest.mark.parametrize("matcher", ["model.layers.{layer}", lambda model, i: f"model.layers.{i}"],
                         ids=["template", "callable"])
def test_a_layer_matcher_names_the_same_layers_as_the_module_list(matcher):
    model = tiny_model("llama").model
    before = _same_modules(model)
    with ARCHS.temporarily("llama", dataclasses.replace(ARCHS.get("llama"), layers=matcher), replace=True):
        assert [id(m) for m in get_layers(model)] == [id(m) for m in model.model.layers]
        assert _same_modules(model) == before
    assert ARCHS.get("llama").layers == "model.layers"


def test_register_arch_like_copies_a_table():
    try:
        spec = register_arch("tiny_renamed", like="gemma2", layers="model.blocks", sites={"mlp_out": "mlp"})
        assert spec.layers == "model.blocks" and spec.mlp_out == "mlp"
        assert spec.attn_out == "post_attention_layernorm" and spec.final_norm == "model.norm"
        with pytest.raises(Exception, match="already registered"):
            register_arch("tiny_renamed", like="llama")
    finally:
        ARCHS.unregister("tiny_renamed")
    assert "tiny_renamed" not in ARCHS


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_a_new_site_is_one_declaration(arch):
    model = tiny_model(arch).model
    with SITES.temporarily("attn_in", ATTN_IN):
        module, kind = resolve(model, Site(1, "attn_in"))
        seen: list[torch.Tensor] = []

        def by_hand(mod, args, kwargs):
            seen.append(args[0] if args else kwargs["hidden_states"])

        handle = module.register_forward_pre_hook(by_hand, with_kwargs=True)
        try:
            got = _recorded(model, [Site(1, "attn_in")])
        finally:
            handle.remove()
        assert kind == "pre" and type(module).__name__.lower().endswith("attention")
        torch.testing.assert_close(got["attn_in"], seen[0])
        placed = {p.site: p for p in site_placements(model)}
        assert Site(1, "attn_in") in placed and placed[Site(1, "attn_in")].hook == "pre"
        assert site_width(model, "attn_in") == 64
        assert sum(r["site"] == "attn_in" for r in describe_sites(model)) == 2

        vec = SteeringVector(sites=[Site(1, "attn_in")], tensors={vector_key(1): torch.ones(1, 64)},
                             params={"normalize": "none"}, languages=["de"], anchor="en")
        ids = _ids(model.config.vocab_size)
        base = model(ids).logits
        with steer(model, vec, langs="de"):
            steered = model(ids).logits
        with steer(model, vec.with_strength(0.0), langs="de"):
            unchanged = model(ids).logits
        assert not torch.allclose(base, steered) and torch.equal(base, unchanged)
    with pytest.raises(SiteError, match="unknown site 'attn_in'"):
        Site(0, "attn_in")


def test_a_site_row_declared_with_the_site_applies_to_that_model_type_only():
    spec = dataclasses.replace(ATTN_IN, paths=(), archs={"llama": "self_attn.o_proj"})
    with SITES.temporarily("attn_in", spec):
        llama = tiny_model("llama").model
        assert resolve(llama, Site(0, "attn_in"))[0] is llama.model.layers[0].self_attn.o_proj
        with pytest.raises(SiteError, match="attn_in is not available"):
            resolve(tiny_model("qwen2").model, Site(0, "attn_in"))


def test_docs_site_tables_are_the_registries():
    text = (ROOT / "docs" / "sites.md").read_text(encoding="utf-8")
    shown = text.split("<!-- sites_markdown: begin -->\n", 1)[1].split("\n<!-- sites_markdown: end -->", 1)[0]
    assert shown == sites_markdown(), "regenerate docs/sites.md's tables with xlsteer.models.sites.sites_markdown()"


@pytest.mark.parametrize("doc, pattern", [
    ("README.md", r"\*\*(\w+) named sites\*\* per layer — (.*?) —"),
    ("CONVENTIONS.md", r"Site\(layer, name\)`; names (.*?)\.\n"),
    ("docs/methods.md", r"\| sites \| `xlsteer/models/sites.py` \| (.*?) \|\n"),
])
def test_docs_name_every_built_in_site(doc, pattern):
    match = re.search(pattern, (ROOT / doc).read_text(encoding="utf-8"), flags=re.S)
    assert match is not None, f"{doc} no longer lists the sites where this test looks"
    named = [n for n in re.findall(r"`(\w+)`", match.group(match.lastindex)) if n in SITES]
    assert named == list(SITE_NAMES)
    if match.lastindex == 2:
        assert match.group(1).lower() == ["one", "two", "three", "four", "five", "six", "seven", "eight"][len(named) - 1]
