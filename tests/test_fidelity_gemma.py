"""Language fidelity on the shipped Gemma-3-270M: language vectors and the script gate move the output language."""

from __future__ import annotations

import pytest
import regex

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    from xlsteer.models.loading import load_model

    return load_model("gemma3-270m")


def _prompts(n: int = 6) -> list[str]:
    """English prompts the vectors were not fitted on: the first words of NTREX validation lines."""
    from xlsteer.data.corpora import load_ntrex

    held = load_ntrex(None, ["en"], split="validation", limit=100 + n)
    return [" ".join(t.split()[:8]) for t in held.texts["en"][100:]]


def test_language_vectors_turn_english_prompts_chinese_and_leave_english_rows_alone(gemma):
    from xlsteer.data.corpora import load_ntrex
    from xlsteer.data.langs import identify_language
    from xlsteer.evaluation.engine import Engine
    from xlsteer.evaluation.guard import guard_scores
    from xlsteer.interventions import fit

    corpus = load_ntrex(None, ["en", "de", "zh", "ja"], split="fit", limit=24)
    iv = fit("langvec", gemma, corpus, ["en", "zh"], anchor="en", batch_size=8, max_length=64,
             scaling="relative").with_strength(0.02)
    assert iv.params["vector_langs"] == ["en", "zh", "de", "ja"] and len(iv.layers) == gemma.num_layers
    prompts = _prompts()
    eng = Engine(gemma, batch_size=12, max_length=256)
    langs = ["zh"] * len(prompts) + ["en"] * len(prompts)
    plain = eng.generate(prompts * 2, langs, 16)
    steered = eng.generate(prompts * 2, langs, 16, interventions=iv)
    assert steered[len(prompts):] == plain[len(prompts):]  # rows wanted in English: bit for bit
    before = sum(x == "zh" for x in identify_language(plain[:len(prompts)]))
    after = sum(x == "zh" for x in identify_language(steered[:len(prompts)]))
    assert before == 0 and after >= len(prompts) - 1, steered[:len(prompts)]
    guard = guard_scores(eng, prompts, steered[:len(prompts)], ["zh"] * len(prompts), [str(i) for i in range(6)], {})
    assert all(-15 < g["fluency"] < 0 and 0 <= g["degeneration"] <= 1 for g in guard)


def test_the_script_gate_keeps_chinese_rows_in_han_script(gemma):
    from xlsteer.evaluation.engine import Engine
    from xlsteer.evaluation.sampling import Sampling

    # news lines (several full of dates and figures) and requests that invite a Chinese answer
    prompts = _prompts(4) + [f"English: {text}\nChinese:" for text in ("Good morning.", "Thank you very much.")]
    eng = Engine(gemma, batch_size=8, max_length=256)
    zh = ["zh"] * len(prompts)
    plain = eng.generate(prompts, zh, 12)
    gated = eng.generate(prompts, zh, 12, sampling=Sampling(gate="script"))
    assert sum(bool(regex.search(r"\p{Latin}", t)) for t in plain) >= 4, plain  # ungated: English continuations
    assert all(regex.fullmatch(r"[\p{Han}\p{Common}\p{Inherited}]*", t) for t in gated), gated
    # the gate only removes tokens: where the model has Han to offer, it writes Han (digits and
    # punctuation stay allowed, so a line of figures may continue in figures)
    assert all(regex.search(r"\p{Han}", t) for t in gated[4:]), gated
