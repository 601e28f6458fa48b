"""The evaluation engine: shared-prefix scoring, batching, generation, the per-item cache."""

from __future__ import annotations

import json

import pytest
import torch

from xlsteer.errors import UsageError
from xlsteer.evaluation.engine import Engine
from xlsteer.evaluation.engine_cache import intervention_hash
from xlsteer.evaluation.scoring_strategy import STRATEGIES
from xlsteer.hooks import steer
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import TINY_SLIDING_WINDOW, tiny_model

REQUESTS = [
    ("The quick brown fox jumps over the lazy dog, and then", [" runs away", " sleeps", " eats a sandwich"]),
    ("Hi", [" there", " you all"]),
    ("A long context that goes well beyond the sliding window of the tiny Gemma models, surely", [" ok", " no"]),
    ("Short one ", ["a", "bb"]),  # trailing space moves to the continuation (lm-eval)
    ("Tea", [" x"]),
]
LANGS = ["de", "sw", "de", "en", "sw"]


@pytest.fixture(scope="module")
def models():
    return {arch: tiny_model(arch) for arch in ("llama", "gemma3", "gpt2", "gemma2")}


def _vector(lm, layer=0, strength=3.0):
    d = lm.model.config.hidden_size
    g = torch.Generator().manual_seed(5)
    return SteeringVector(
        sites=[Site(layer, "resid_post")],
        tensors={vector_key(layer): torch.randn(2, d, generator=g)},
        params={"normalize": "none"},
        languages=["de", "sw"],
        anchor="en",
        strength=strength,
    )


def _full_sequence_scores(lm, requests, langs, iv=None, positions="all", with_greedy=False):
    """Oracle: each (context + continuation) alone, no padding, no cache; split as lm-eval does
    (with ``with_greedy``, each score is ``(log-prob, is_greedy)``)."""
    tok, model = lm.tokenizer, lm.model
    out = []
    for (ctx, conts), lang in zip(requests, langs):
        n_space = len(ctx) - len(ctx.rstrip())
        c_text, moved = ctx[: len(ctx) - n_space], ctx[len(ctx) - n_space:]
        c_ids = tok(c_text)["input_ids"]
        row = []
        for cont in conts:
            whole = tok(c_text + moved + cont)["input_ids"]
            ids = torch.tensor([c_ids + whole[len(c_ids):]])
            with steer(model, [iv] if iv else [], langs=lang, anchor="en", positions=positions,
                       prompt_length=len(c_ids)), torch.inference_mode():
                lp = torch.log_softmax(model(ids).logits[0].float(), -1)
            tgt = ids[0, len(c_ids):]
            at = lp[len(c_ids) - 1: ids.shape[1] - 1]
            row.append(float(at.gather(1, tgt[:, None]).sum()))
            if with_greedy:
                row[-1] = (row[-1], bool((at.argmax(-1) == tgt).all()))
        out.append(row)
    return out


def test_tiny_gemma_contexts_cross_the_sliding_window(models):
    tok = models["gemma3"].tokenizer
    assert len(tok(REQUESTS[2][0])["input_ids"]) > TINY_SLIDING_WINDOW


@pytest.mark.parametrize("scoring", STRATEGIES)
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "gemma2"])  # gemma2: final logit softcapping
def test_each_scoring_strategy_equals_full_sequence_scoring(models, arch, scoring):
    lm = models[arch]
    engine = Engine(lm, batch_size=4, scoring=scoring)
    got = engine.loglikelihood(REQUESTS, LANGS)
    ref = _full_sequence_scores(lm, REQUESTS, LANGS)
    for g_row, r_row in zip(got, ref):
        assert len(g_row) == len(r_row)
        for (lp, n_tok, n_chars, greedy), r in zip(g_row, r_row):
            assert lp == pytest.approx(r, abs=1e-4)
            assert n_tok >= 1 and isinstance(greedy, bool)
    assert engine._head_path is True  # only real continuation positions went through the head
    assert engine._keep_none is True  # after the first batch, the forwards projected no position
    assert engine.scored_by == {scoring: len(REQUESTS)}


def _greedy_continuation(lm, context: str, n: int = 3) -> str:
    ids = lm.tokenizer(context)["input_ids"]
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(lm.model(torch.tensor([ids])).logits[0, -1].argmax()))
    return lm.tokenizer.decode(ids[len(lm.tokenizer(context)["input_ids"]):])


@pytest.mark.parametrize("scoring", STRATEGIES)
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_is_greedy_equals_full_sequence_argmax(models, arch, scoring):
    """is_greedy (lm-eval's second value) from the merged head call equals the oracle's, on
    requests whose continuation is the model's own greedy text and on others."""
    lm = models[arch]
    requests = list(REQUESTS) + [(ctx, [_greedy_continuation(lm, ctx), " zz"]) for ctx in ("Hello world", "Tea")]
    langs = LANGS + ["sw", "de"]
    got = Engine(lm, batch_size=3, scoring=scoring).loglikelihood(requests, langs)
    ref = _full_sequence_scores(lm, requests, langs, with_greedy=True)
    flags = [g[3] for row in got for g in row]
    assert flags == [r[1] for row in ref for r in row]
    assert any(flags)  # at least one greedy continuation survived re-tokenisation: the check can fail


@pytest.mark.parametrize("scoring", STRATEGIES)
def test_a_forward_that_takes_only_an_integer_logits_to_keep_still_scores_exactly(models, monkeypatch, scoring):
    """Models whose forward rejects a tensor ``logits_to_keep`` fall back to projecting one position."""
    lm = models["llama"]
    forward = lm.model.forward

    def integer_only(*args, logits_to_keep=0, **kw):
        if not isinstance(logits_to_keep, int):
            raise TypeError("logits_to_keep must be an int")
        return forward(*args, logits_to_keep=logits_to_keep, **kw)

    monkeypatch.setattr(lm.model, "forward", integer_only)
    engine = Engine(lm, batch_size=2, scoring=scoring)
    got = engine.loglikelihood(REQUESTS, LANGS)
    assert engine._head_path is True and engine._keep_none is False
    for g_row, r_row in zip(got, _full_sequence_scores(lm, REQUESTS, LANGS)):
        for g, r in zip(g_row, r_row):
            assert g[0] == pytest.approx(r, abs=1e-4)


@pytest.mark.parametrize("scoring", STRATEGIES)
def test_an_unreproduced_output_transform_falls_back_to_the_full_projection(models, monkeypatch, scoring):
    """If unembed() does not give the model's own logits (an unknown output scaling), the
    first batch detects it and every batch projects all positions: scores stay exact."""
    import xlsteer.models.sites as sites

    lm = models["llama"]
    real = sites.unembed
    monkeypatch.setattr(sites, "unembed", lambda model, x: 2.0 * real(model, x))
    engine = Engine(lm, batch_size=2, scoring=scoring)
    got = engine.loglikelihood(REQUESTS, LANGS)
    assert engine._head_path is False
    ref = _full_sequence_scores(lm, REQUESTS, LANGS)
    for g_row, r_row in zip(got, ref):
        for g, r in zip(g_row, r_row):
            assert g[0] == pytest.approx(r, abs=1e-4)


@pytest.mark.parametrize("scoring", STRATEGIES)
@pytest.mark.parametrize("positions", ["all", "last_prompt", "prompt", "generated"])
def test_steered_scoring_equals_steered_full_sequence(models, positions, scoring):
    lm = models["gemma3"]
    iv = _vector(lm)
    got = Engine(lm, batch_size=3, scoring=scoring).loglikelihood(REQUESTS, LANGS, interventions=iv,
                                                                  positions=positions)
    ref = _full_sequence_scores(lm, REQUESTS, LANGS, iv=iv, positions=positions)
    plain = _full_sequence_scores(lm, REQUESTS, LANGS)
    for g_row, r_row in zip(got, ref):
        for g, r in zip(g_row, r_row):
            assert g[0] == pytest.approx(r, abs=1e-4)
    # the steering did something to non-anchor rows and nothing to the English row
    assert got[0][0][0] != pytest.approx(plain[0][0], abs=1e-3)
    assert [g[0] for g in got[3]] == pytest.approx(plain[3], abs=1e-4)


def test_continuation_tokens_are_the_full_string_tokens_after_the_context(models):
    lm = models["llama"]
    tok = lm.tokenizer
    res = Engine(lm).loglikelihood(REQUESTS, LANGS)
    for (ctx, conts), row in zip(REQUESTS, res):
        c = ctx.rstrip()
        for cont, (_, n_tok, n_chars, _) in zip(conts, row):
            assert n_tok == len(tok(ctx + cont)["input_ids"]) - len(tok(c)["input_ids"])
            assert n_chars == len(cont)


def test_batched_equals_unbatched(models):
    lm = models["gemma3"]
    iv = _vector(lm)
    one = Engine(lm, batch_size=1).loglikelihood(REQUESTS, LANGS, interventions=iv)
    many = Engine(lm, batch_size=5).loglikelihood(REQUESTS, LANGS, interventions=iv)
    for a_row, b_row in zip(one, many):
        for a, b in zip(a_row, b_row):
            assert a[0] == pytest.approx(b[0], abs=1e-4)
            assert a[1:] == b[1:]


def test_label_logits_equal_last_position_log_softmax(models):
    lm = models["llama"]
    prompts = ["Premise: x\nAnswer:", "A longer prompt here\nAnswer:"]
    got = Engine(lm, batch_size=2).label_logits(prompts, ["0", "1", "2"], ["de", "sw"])
    ids = [lm.tokenizer(s, add_special_tokens=False)["input_ids"][0] for s in "012"]
    for p, row in zip(prompts, got):
        with torch.inference_mode():
            lp = torch.log_softmax(lm.model(torch.tensor([lm.tokenizer(p)["input_ids"]])).logits[0, -1].float(), -1)
        assert row == pytest.approx([float(lp[i]) for i in ids], abs=1e-4)


def test_multi_token_label_is_a_usage_error(models):
    with pytest.raises(UsageError, match="single tokens"):
        Engine(models["llama"]).label_logits(["x"], ["01"], ["de"])


def test_generation_matches_transformers_greedy_and_is_deterministic(models):
    lm = models["llama"]
    prompts = ["Hello world", "abc", "Question: 2+2?\nAnswer:"]
    eng = Engine(lm, batch_size=3)
    got = eng.generate(prompts, ["de", "sw", "en"], 8)
    assert got == eng.generate(prompts, ["de", "sw", "en"], 8)
    assert got == Engine(lm, batch_size=1).generate(prompts, ["de", "sw", "en"], 8)
    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        hf = lm.model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert got == lm.tokenizer.batch_decode(hf[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_generation_stops_at_stop_sequences_and_truncates(models):
    lm = models["llama"]
    prompts = ["Hello world", "abc"]
    eng = Engine(lm, batch_size=2)
    free = eng.generate(prompts, ["de", "de"], 12)
    stop = free[0][3:5]  # a piece of row 0's own output
    got = eng.generate(prompts, ["de", "de"], 12, stop=[stop])
    assert got[0] == free[0][: free[0].find(stop)]
    assert stop not in got[1]
    assert free[1].startswith(got[1])


def test_generation_stops_early_when_every_row_has_stopped(models):
    lm = models["llama"]
    eng = Engine(lm, batch_size=2)
    free = eng.generate(["Hello world"], ["de"], 10)
    calls = []
    hook = lm.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        eng.generate(["Hello world"], ["de"], 10, stop=[free[0][0]])
    finally:
        hook.remove()
    assert len(calls) == 1  # the prefill only: the first token already hit the stop


def _cached_engine(lm, path, batch_size=2):
    return Engine(lm, batch_size=batch_size, cache_dir=path)


def _keys(n):
    return [f"k{i}" for i in range(n)]


def test_cache_resume_after_interruption_gives_identical_results(models, tmp_path):
    lm = models["gemma3"]
    reqs = REQUESTS * 2
    langs = LANGS * 2
    keys = _keys(len(reqs))
    plain = _cached_engine(lm, None).loglikelihood(reqs, langs, keys=None)

    eng = _cached_engine(lm, tmp_path)
    real = eng._ll_batch
    calls = {"n": 0}

    def failing(*args, **kwargs):
        if calls["n"] == 2:
            raise RuntimeError("killed")
        calls["n"] += 1
        return real(*args, **kwargs)

    eng._ll_batch = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="killed"):
        eng.loglikelihood(reqs, langs, keys=keys, scope={"task": "t"})
    assert eng.computed == 4

    resumed = _cached_engine(lm, tmp_path)
    got = resumed.loglikelihood(reqs, langs, keys=keys, scope={"task": "t"})
    assert resumed.computed == len(reqs) - 4  # finished items are not recomputed
    assert got == plain  # same batches as an uninterrupted run: bit-identical

    again = _cached_engine(lm, tmp_path)
    assert again.loglikelihood(reqs, langs, keys=keys, scope={"task": "t"}) == got
    assert again.computed == 0


def test_cache_ignores_a_torn_last_line(models, tmp_path):
    lm = models["llama"]
    prompts = ["ab", "cd", "ef"]
    first = _cached_engine(lm, tmp_path).generate(prompts, ["de"] * 3, 4, keys=_keys(3))
    (path,) = list(tmp_path.glob("generate-*.jsonl"))
    lines = path.read_text(encoding="utf-8").splitlines()
    # drop the last record and leave half of it behind, as a kill during the write would
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")
    eng = _cached_engine(lm, tmp_path)
    assert eng.generate(prompts, ["de"] * 3, 4, keys=_keys(3)) == first
    assert eng.computed == 1
    for line in path.read_text(encoding="utf-8").splitlines():
        json.loads(line)  # every line parses again


def test_cache_keys_separate_steered_from_unsteered_and_strengths(models, tmp_path):
    lm = models["llama"]
    iv = _vector(lm)
    reqs, langs, keys = REQUESTS[:2], LANGS[:2], _keys(2)
    base = _cached_engine(lm, tmp_path).loglikelihood(reqs, langs, keys=keys)
    eng = _cached_engine(lm, tmp_path)
    steered = eng.loglikelihood(reqs, langs, interventions=iv, keys=keys)
    assert eng.computed == 2 and steered != base
    eng2 = _cached_engine(lm, tmp_path)
    eng2.loglikelihood(reqs, langs, interventions=iv.with_strength(1.0), keys=keys)
    assert eng2.computed == 2
    assert intervention_hash(iv) == intervention_hash(iv.with_strength(1.0))


def test_duplicate_cache_keys_are_refused(models, tmp_path):
    with pytest.raises(UsageError, match="unique"):
        _cached_engine(models["llama"], tmp_path).generate(["a", "b"], ["de", "de"], 2, keys=["x", "x"])


def test_rerun_writes_an_identical_results_file(models, tmp_path):
    from xlsteer.evaluation.runner import run_task
    from xlsteer.io import dumps_json

    lm = models["llama"]
    kw = dict(split="dev", limit=4, cache_dir=tmp_path / "cache", n_boot=200)
    a = dumps_json(run_task(lm, "xcopa", ["en", "sw"], **kw))
    eng = Engine(lm, cache_dir=tmp_path / "cache")
    b = dumps_json(run_task(lm, "xcopa", ["en", "sw"], engine=eng, **{k: v for k, v in kw.items() if k != "cache_dir"}))
    assert eng.computed == 0
    assert a == b


def test_steered_run_reuses_the_unsteered_anchor_rows_from_the_cache(tmp_path):
    """Anchor rows are never steered, so a steered run reads them from the unsteered run's cache."""
    from xlsteer.interventions.vector import SteeringVector
    from xlsteer.models.sites import Site
    from xlsteer.testing import tiny_model

    lm = tiny_model("llama")
    eng = Engine(lm, batch_size=2, cache_dir=tmp_path)
    reqs = [("The cat", [" sat", " ran"]), ("Die Katze", [" sass", " lief"]), ("A dog", [" barked"])]
    langs, keys = ["en", "de", "en"], ["en/1", "de/1", "en/2"]
    plain = eng.loglikelihood(reqs, langs, keys=keys)
    d = lm.model.config.hidden_size
    iv = SteeringVector(sites=[Site(1, "resid_post")], tensors={"vectors@1": torch.ones(1, d) * 3.0},
                        params={"normalize": "none"}, languages=["de"], anchor="en")
    before = eng.computed
    steered = eng.loglikelihood(reqs, langs, interventions=iv, keys=keys)
    assert eng.computed - before == 1  # only the German request ran
    assert steered[0] == plain[0] and steered[2] == plain[2]
    assert steered[1] != plain[1]



def test_a_languages_batches_do_not_depend_on_the_other_rows(models, tmp_path, monkeypatch):
    """Batches never mix languages, so the German rows run in the same batches (hence give the
    same bits) alone, with other languages, or with the anchor rows served from the cache."""
    lm = models["llama"]
    calls: list[list[list[int]]] = []  # per engine call: the batches, as request indices
    original = Engine._run_batch

    def recording(self, batch_fn, session, idx):
        calls[-1].append(list(idx))
        return original(self, batch_fn, session, idx)

    monkeypatch.setattr(Engine, "_run_batch", recording)
    reqs = REQUESTS + [(ctx + " and more" * (k + 1), conts) for k, (ctx, conts) in enumerate(REQUESTS)]
    langs = LANGS + ["sw", "de", "sw", "de", "en"]
    keys = [f"{lang}/{i}" for i, lang in enumerate(langs)]
    iv = _vector(lm)

    def run(sel: list[int], cache_dir=None) -> tuple[list, list[list[str]]]:
        calls.append([])
        out = Engine(lm, batch_size=2, cache_dir=cache_dir).loglikelihood(
            [reqs[i] for i in sel], [langs[i] for i in sel], interventions=iv, keys=[keys[i] for i in sel])
        return out, [sorted(keys[sel[j]] for j in b) for b in calls[-1]]

    everything = list(range(len(reqs)))
    german = [i for i in everything if langs[i] == "de"]
    all_rows, all_batches = run(everything)
    de_rows, de_batches = run(german)
    assert all(len({k.split("/")[0] for k in b}) == 1 for b in all_batches)  # one language per batch
    assert [b for b in all_batches if b[0].startswith("de/")] == de_batches
    assert [all_rows[i] for i in german] == de_rows
    # with the unsteered anchor rows in the cache, the steered run skips them: same batches, same bits
    Engine(lm, batch_size=2, cache_dir=tmp_path).loglikelihood(reqs, langs, keys=keys)
    cached, cached_batches = run(everything, cache_dir=tmp_path)
    assert cached_batches == [b for b in all_batches if not b[0].startswith("en/")]
    assert cached == all_rows
