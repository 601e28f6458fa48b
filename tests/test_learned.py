"""Learned steering vectors: trained through steer() with the model frozen; the objective goes down."""

from __future__ import annotations

import pytest
import torch

from xlsteer.errors import UsageError
from xlsteer.hooks import steer
from xlsteer.interventions import fit
from xlsteer.interventions.learned import fit_learned
from xlsteer.interventions.training import TrainableSteeringVector
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model

from test_vector import check_truncated_and_foreign, parallel_texts, roundtrip


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _check_history(h: dict) -> None:
    losses = h["train"] + [x[1] for x in h["dev"]]
    assert all(x >= 0 for x in losses)  # a squared distance / a cross-entropy
    assert h["best_dev"] <= h["initial_dev"]


def test_trainable_vector_gets_gradients_only_through_steer(llama):
    model = llama.model
    v = torch.zeros(1, model.config.hidden_size, requires_grad=True)
    iv = TrainableSteeringVector(
        sites=[Site(0, "resid_post")], tensors={vector_key(0): v}, params={"normalize": "none"}, languages=["de"]
    )
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with steer(model, iv, langs="de"):
            model(ids).logits.float().pow(2).mean().backward()
        assert v.grad is not None and float(v.grad.abs().sum()) > 0
        with steer(model, iv, langs="en"):  # anchor rows: the vector is not used
            out = model(ids).logits
        assert not out.requires_grad
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_align_objective_goes_down_and_model_stays_frozen(llama):
    model = llama.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hooks = _hooks(model)
    texts = parallel_texts(20, langs=("en", "de"))
    v = fit_learned(llama, texts, [0], ["de"], objective="align", init="zero", target_layer=1,
                    steps=30, lr=0.1, eval_every=5, patience=3, batch_size=8, seed=0)
    assert isinstance(v, SteeringVector) and v.params["objective"] == "align"
    h = v.params["history"]["de"]
    _check_history(h)
    assert h["best_dev"] < 0.9 * h["initial_dev"]
    assert float(v.tensors[vector_key(0)].norm()) > 0
    for n, p in model.named_parameters():
        assert p.requires_grad and p.grad is None and torch.equal(p, before[n])
    assert _hooks(model) == hooks
    assert v.meta["model_fingerprint"] == llama.fingerprint and "fit_seconds" in v.meta
    assert v.params["n_train"] + v.params["n_dev"] == 20 and v.params["target_site"] == "resid_post@1"


def test_align_from_diffmean_never_ends_above_its_start(llama):
    texts = parallel_texts(16, langs=("en", "de", "sw"), seed=3)
    v = fit_learned(llama, texts, [0], ["de", "sw"], objective="align", init="diffmean", pooling="last",
                    steps=10, lr=0.05, eval_every=2, patience=2, seed=1)
    for lang in ("de", "sw"):
        _check_history(v.params["history"][lang])
    assert v.tensors[vector_key(0)].shape == (2, llama.model.config.hidden_size)


def test_task_objective_lowers_answer_cross_entropy(llama):
    texts = parallel_texts(16, langs=("de",), seed=7)["de"]
    examples = [(t, " xyz") for t in texts]  # a fixed answer the random model does not predict
    v = fit_learned(llama, examples, [1], ["de"], objective="task", init="zero",
                    steps=25, lr=0.2, eval_every=5, patience=3)
    h = v.params["history"]["de"]
    _check_history(h)
    assert h["best_dev"] < h["initial_dev"]


def test_learned_usage_errors(llama):
    texts = parallel_texts(6, langs=("en", "de"))
    with pytest.raises(UsageError, match="objective"):
        fit_learned(llama, texts, [0], ["de"], objective="nll")
    with pytest.raises(UsageError, match="target_layer"):
        fit_learned(llama, texts, [1], ["de"], target_layer=0)
    with pytest.raises(UsageError, match="parallel"):
        fit_learned(llama, [("a", "b")] * 4, [0], ["de"], objective="task", init="diffmean")


def test_learned_roundtrip_and_fingerprint(llama, tmp_path):
    texts = parallel_texts(10, langs=("en", "de"))
    v = fit("learned", llama, texts, ["de"], layers=[0], steps=4, eval_every=2, init="zero")
    assert "data_hash" in v.meta
    roundtrip(v, tmp_path)
    check_truncated_and_foreign(v, tmp_path, llama)
