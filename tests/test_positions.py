"""One place decides the position policy (``Intervention.default_positions``), and every entry point
(eval, sweep, compare, lm-eval, generate, export) applies an INCLINE intervention at the last
prompt token unless the caller chooses otherwise."""

from __future__ import annotations

import pytest
import torch

import xlsteer.evaluation.engine as engine_mod
import xlsteer.hooks as hooks_mod
from xlsteer.cli import main
from xlsteer.errors import UsageError
from xlsteer.interventions import fit
from xlsteer.interventions.base import default_positions
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model

from test_vector import parallel_texts


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def incline(lm):
    return fit("incline", lm, {**parallel_texts(8)}, ["en", "sw"], ridge=0.1)


@pytest.fixture
def policies(monkeypatch):
    """Every position policy a steer() context is opened with (the hook level, not the records)."""
    seen: list[str] = []
    real = hooks_mod.steer

    def spy(model, interventions, **kw):
        if interventions:
            seen.append(kw.get("positions", "all"))
        return real(model, interventions, **kw)

    monkeypatch.setattr(engine_mod, "steer", spy)
    monkeypatch.setattr(hooks_mod, "steer", spy)
    return seen


def test_the_policy_is_stored_once_and_read_by_the_resolver(incline):
    assert incline.default_positions == "last_prompt"
    assert default_positions(incline) == "last_prompt" and default_positions([incline], "all") == "all"
    plain = SteeringVector(sites=[Site(0, "resid_post")], tensors={vector_key(0): torch.zeros(1, 64)},
                           params={"normalize": "none"}, languages=["sw"])
    assert plain.default_positions == "all"
    with pytest.raises(UsageError, match="different position policies"):
        default_positions([incline, plain])


def test_eval_and_sweep_use_the_stored_policy(lm, incline, policies):
    from xlsteer.evaluation.runner import run_task
    from xlsteer.evaluation.sweep import sweep

    res = run_task(lm, "xcopa", ["en", "sw"], split="dev", interventions=incline, limit=2, n_boot=20)
    assert res["intervention"]["positions"] == "last_prompt" and set(policies) == {"last_prompt"}
    rec = sweep(lm, "xcopa", ["en", "sw"], intervention=incline, layers=[-1], alphas=[0.5], limit=2, n_boot=20)
    assert rec["positions"] == "last_prompt" and rec["results"][0]["intervention"]["positions"] == "last_prompt"
    assert set(policies) == {"last_prompt"}
    chosen = run_task(lm, "xcopa", ["en", "sw"], split="dev", interventions=incline, limit=2, n_boot=20,
                      positions="all")
    assert chosen["intervention"]["positions"] == "all"  # an explicit choice still wins


def test_compare_uses_the_stored_policy(lm, policies):
    from xlsteer.baselines.context import RunContext
    from xlsteer.baselines.methods import run_method

    ctx = RunContext(lm=lm, task="xcopa", langs=["en", "sw"], limit=2, dev_limit=2, fit_limit=8, n_boot=20,
                     options={"incline": {"alphas": [0.5], "layers": [1]}})
    run = run_method("incline", ctx)
    assert run.params["positions"] == "last_prompt" and set(policies) == {"last_prompt"}


def test_lm_eval_adapter_uses_the_stored_policy(lm, incline, tmp_path):
    pytest.importorskip("lm_eval")
    from xlsteer.lmeval.model import XlsteerLM

    path = incline.save(tmp_path / "incline.safetensors")
    assert XlsteerLM(pretrained=lm, intervention=str(path)).positions == "last_prompt"
    assert XlsteerLM(pretrained=lm, intervention=str(path), positions="all").positions == "all"


def test_generate_uses_the_stored_policy(lm, incline, tmp_path, capsys, policies):
    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    path = incline.save(tmp_path / "incline.safetensors")
    code = main(["-q", "generate", "--model", str(folder), "-i", str(path), "--lang", "sw",
                 "--max-new-tokens", "2", "ABC"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "positions last_prompt" in out and set(policies) == {"last_prompt"}


def test_export_refuses_what_llama_cpp_cannot_apply_at_the_stored_positions(incline, tmp_path, capsys):
    path = incline.save(tmp_path / "incline.safetensors")
    assert main(["-q", "export", "gguf", str(path), "-o", str(tmp_path / "x.gguf")]) == 2
    last = SteeringVector(sites=[Site(1, "resid_post")], tensors={vector_key(1): torch.ones(1, 64)},
                          params={"normalize": "none", "positions": "last_prompt"}, languages=["sw"])
    vec = last.save(tmp_path / "last.safetensors")
    assert main(["-q", "export", "gguf", str(vec), "-o", str(tmp_path / "y.gguf")]) == 2
    assert "every position" in capsys.readouterr().err
    assert not (tmp_path / "y.gguf").exists()
