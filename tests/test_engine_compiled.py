"""The engine's compiled generation path: the same greedy tokens as eager decoding, steered or not,
from a static KV cache the engine keeps (reset, not reallocated) across calls.

The decode step is compiled with dynamo's "eager" backend here (tracing and guards exactly as
with inductor, no code generation), so the checks take seconds on a CPU.
"""

from __future__ import annotations

import pytest
import torch

from xlsteer.errors import UsageError
from xlsteer.evaluation.config import EvalConfig
from xlsteer.evaluation.engine import Engine
from xlsteer.evaluation.engine_compiled import compile_backend
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model

PROMPTS = ["hallo welt, wie geht es dir", "ein hund", "die katze schläft", "abc", "x y z", "guten morgen"]
LANGS = ["de", "en", "sw", "de", "en", "sw"]


def _vector(scale: float = 3.0) -> SteeringVector:
    g = torch.Generator().manual_seed(1)
    return SteeringVector(sites=[Site(1, "resid_post")], tensors={vector_key(1): scale * torch.randn(2, 64, generator=g)},
                          params={"normalize": "none"}, languages=["de", "sw"], anchor="en")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_compiled_generation_gives_the_eager_tokens(arch):
    lm = tiny_model(arch)
    eager, compiled = Engine(lm, batch_size=4, compile=False), Engine(lm, batch_size=4, compile="eager")
    iv = _vector()
    for ivs, positions in ((None, "all"), (iv, "all"), (iv, "generated"), (iv, "last_prompt")):
        want = eager.generate(PROMPTS, LANGS, 10, interventions=ivs, positions=positions)
        got = compiled.generate(PROMPTS, LANGS, 10, interventions=ivs, positions=positions)
        assert got == want, (arch, positions)
    steered = eager.generate(PROMPTS, LANGS, 10, interventions=iv)
    assert steered != eager.generate(PROMPTS, LANGS, 10)  # the vector changes something
    assert [s for s, lang in zip(steered, LANGS) if lang == "en"] == \
        [s for s, lang in zip(eager.generate(PROMPTS, LANGS, 10), LANGS) if lang == "en"]


def test_one_static_cache_is_reset_and_reused_across_calls_and_batches():
    """Batches of 2 and 1 rows (a batch never mixes languages) share one cache, padded with a copy
    of the first row; later calls reset it in place: the same tensors, so CUDA graphs stay valid."""
    lm = tiny_model("llama")
    engine = Engine(lm, batch_size=2, compile="eager")
    first = engine.generate(PROMPTS, LANGS, 6, stop=["\n"])
    (key, cache), = engine._decoder.caches.items()
    ptr = cache.layers[0].keys.data_ptr()
    assert key[0] == 2 and key[1] % 64 == 0
    again = engine.generate(PROMPTS[:3], LANGS[:3], 6, stop=["\n"], interventions=_vector())
    assert len(engine._decoder.caches) == 1 and cache.layers[0].keys.data_ptr() == ptr
    assert engine.generate(PROMPTS, LANGS, 6, stop=["\n"]) == first
    assert again == Engine(lm, batch_size=2, compile=False).generate(PROMPTS[:3], LANGS[:3], 6, stop=["\n"],
                                                                     interventions=_vector())


def test_compiled_sampling_draws_the_same_tokens_as_eager():
    """Nucleus sampling: each row's stream is its own, so the padded compiled batch samples alike."""
    from xlsteer.evaluation.sampling import Sampling

    lm = tiny_model("llama")
    hot = Sampling(temperature=0.9, top_p=0.9, seed=3)
    eager = Engine(lm, batch_size=4, compile=False).generate(PROMPTS, LANGS, 8, sampling=hot, interventions=_vector())
    compiled = Engine(lm, batch_size=4, compile="eager").generate(PROMPTS, LANGS, 8, sampling=hot,
                                                                   interventions=_vector())
    assert compiled == eager
    assert eager != Engine(lm, batch_size=4).generate(PROMPTS, LANGS, 8, interventions=_vector())  # not greedy


def test_compile_setting_auto_compiles_on_cuda_only():
    assert compile_backend("auto", torch.device("cpu")) is None
    assert compile_backend("auto", torch.device("cuda", 0)) == "inductor"
    assert compile_backend(True, torch.device("cpu")) == "inductor"
    assert compile_backend(False, torch.device("cuda", 0)) is None
    assert compile_backend("aot_eager", torch.device("cpu")) == "aot_eager"
    with pytest.raises(UsageError, match="compile must be"):
        compile_backend("fast", torch.device("cpu"))
    with pytest.raises(UsageError, match="compile must be"):
        EvalConfig(compile="fast")
    assert EvalConfig().compile == "auto"


def test_generate_command_compiles_with_the_flag(tmp_path, capsys, monkeypatch):
    from xlsteer.cli import main
    from xlsteer.evaluation import engine_compiled

    calls = []
    real = engine_compiled.CompiledDecoder.generate
    monkeypatch.setattr(engine_compiled.CompiledDecoder, "generate",
                        lambda self, *a, **k: calls.append(self.backend) or real(self, *a, **k))

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path / "tiny")
    lm.tokenizer.save_pretrained(tmp_path / "tiny")
    vec = tmp_path / "vec.safetensors"
    _vector().save(vec)
    outs = []
    for flag in ([], ["--compile=eager"]):
        argv = ["generate", "--model", str(tmp_path / "tiny"), "--intervention", str(vec), "--lang", "de",
                "--max-new-tokens", "5", *flag, "hallo welt", "ein hund"]
        assert main(argv) == 0
        outs.append(capsys.readouterr().out)
        assert bool(calls) == bool(flag)  # unsteered and steered batches ran compiled only with the flag
    assert outs[0] == outs[1] and set(calls) == {"eager"}
