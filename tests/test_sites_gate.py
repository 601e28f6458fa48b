"""The ``mlp_gate`` site (activation-function output) on every registered architecture."""

from __future__ import annotations

import pytest
import torch

from xlsteer.hooks import record
from xlsteer.models.sites import Site, arch_spec, get_layers, resolve, site_width
from xlsteer.testing import ARCHS, tiny_model

GATED = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "olmo2"}


def _gate_and_up(mlp: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """act(gate) and up computed by hand from the MLP's own weights (None up for non-gated MLPs)."""
    if hasattr(mlp, "gate_proj"):
        return mlp.act_fn(mlp.gate_proj(x)), mlp.up_proj(x)
    if hasattr(mlp, "gate_up_proj"):  # phi3: one fused projection, gate first
        gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
        return mlp.activation_fn(gate), up
    fc_in = getattr(mlp, "c_fc", None) or mlp.dense_h_to_4h
    return mlp.act(fc_in(x)), None


@pytest.mark.parametrize("arch", ARCHS)
def test_mlp_gate_is_the_activation_of_the_gate(arch):
    model = tiny_model(arch).model
    layer = 1
    mlp_in: list[torch.Tensor] = []
    got: dict[str, torch.Tensor] = {}
    mlp = getattr(get_layers(model)[layer], "mlp")
    handle = mlp.register_forward_pre_hook(lambda m, args: mlp_in.append(args[0]))
    try:
        with record(model, [Site(layer, "mlp_gate"), Site(layer, "mlp_act")], lambda s, a, c: got.update({s.name: a})):
            model(torch.randint(4, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0)))
    finally:
        handle.remove()
    gate, up = _gate_and_up(mlp, mlp_in[0])
    assert got["mlp_gate"].shape[-1] == site_width(model, "mlp_gate") == site_width(model, "mlp_act")
    torch.testing.assert_close(got["mlp_gate"], gate)
    if arch in GATED:
        torch.testing.assert_close(got["mlp_gate"] * up, got["mlp_act"])
        assert not torch.allclose(got["mlp_gate"], got["mlp_act"])  # the product is another statistic
    else:
        torch.testing.assert_close(got["mlp_gate"], got["mlp_act"])


@pytest.mark.parametrize("arch", ARCHS)
def test_each_layer_has_its_own_activation_module(arch):
    """A hook on one layer's activation must not fire in another layer."""
    model = tiny_model(arch).model
    assert arch_spec(model).mlp_gate
    m0, kind = resolve(model, Site(0, "mlp_gate"))
    m1, _ = resolve(model, Site(1, "mlp_gate"))
    assert kind == "post" and m0 is not m1


def test_editing_mlp_gate_changes_the_output():
    from xlsteer.hooks import steer
    from xlsteer.interventions.neurons import LapeIntervention, mask_key

    lm = tiny_model("gemma3")
    d_ff = site_width(lm.model, "mlp_gate")
    mask = torch.zeros(1, d_ff, dtype=torch.bool)
    mask[0, : d_ff // 2] = True
    iv = LapeIntervention(sites=[Site(0, "mlp_gate")], tensors={mask_key(0): mask},
                          params={"mode": "deactivate", "neuron_lang": None, "neuron_langs": ["de"]},
                          languages=["de"], anchor="en")
    ids = torch.randint(4, 100, (1, 5), generator=torch.Generator().manual_seed(1))
    base = lm.model(ids).logits
    with steer(lm.model, iv, langs="de"):
        steered = lm.model(ids).logits
    assert not torch.allclose(base, steered)
