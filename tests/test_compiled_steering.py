"""Steering inside one compiled graph: dynamo's own accounting of a steered decode step.

For every registered method, fitted on synthetic parallel text with a tiny random Llama:
``torch.compile(model.forward, fullgraph=True)`` of a decode step with a static KV cache is
one graph with no graph break, and neither a new alpha (a new ``steer`` block) nor new row
languages (``session.set_langs``) recompiles it; its logits equal the eager hook path's; and
in eager mode the anchor rows of a mixed batch are bit-identical to the unsteered model.
Graphs are counted with a backend that runs the traced graph as is ("eager": no code
generation), so the checks take seconds; one inductor run is marked slow.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from xlsteer.hooks import record, steer
from xlsteer.interventions import fit
from xlsteer.interventions.registry import method_names
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model

from test_vector import parallel_texts

FIT_PARAMS = {"incline": {"ridge": 0.1}, "learned": {"steps": 2, "eval_every": 1}, "clas": {"layers": [0, 1]}}
BATCH, PROMPT, STEPS = 4, 6, 6
LANGS_A, LANGS_B = ["de", "en", "sw", "de"], ["sw", "en", "de", "en"]
#: (alpha, row languages, new steer block?) per decode step: a new alpha, then new languages
PLAN = [(1.0, LANGS_A, True), (1.0, LANGS_A, False), (0.5, LANGS_A, True), (0.5, LANGS_B, False),
        (-1.5, LANGS_B, True), (-1.5, LANGS_A, False)]


class GraphCounter:
    """A dynamo backend that counts the graphs it is given and runs each as traced."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def fitted(lm):
    texts = parallel_texts(16)
    return {m: fit(m, lm, texts, ["en", "de", "sw"], anchor="en", **FIT_PARAMS.get(m, {})) for m in method_names()}


def _decode(lm, iv, forward=None, plan=PLAN) -> list[torch.Tensor]:
    """Prefill eagerly into a static cache, then one decode step per ``plan`` entry (through
    ``forward`` when given: the root hook runs eagerly in ``Module.__call__`` around it)."""
    from transformers import StaticCache

    model = lm.model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, int(model.config.vocab_size), (BATCH, PROMPT), generator=g)
    total = PROMPT + len(plan)
    mask = torch.ones(BATCH, total, dtype=torch.long)
    mask[1, :2] = 0  # a left-padded row
    cache = StaticCache(config=model.config, max_cache_len=total)
    logits = []
    with torch.inference_mode(), steer(model, iv, langs=LANGS_A, anchor="en") as session:
        out = model(input_ids=ids, attention_mask=mask[:, :PROMPT], past_key_values=cache,
                    cache_position=torch.arange(PROMPT), use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
    blocks = []
    with torch.inference_mode():
        for step, (alpha, langs, new_block) in enumerate(plan):
            if new_block:
                blocks.append(steer(model, iv.with_strength(alpha) if iv else [], langs=langs, anchor="en"))
                if len(blocks) > 1:
                    blocks[-2].__exit__(None, None, None)
                session = blocks[-1].__enter__()
            session.set_langs(langs)
            pos = torch.tensor([PROMPT + step])
            if forward is not None:
                model.forward = forward
            try:
                out = model(input_ids=tok, attention_mask=mask, past_key_values=cache, cache_position=pos,
                            position_ids=pos.expand(BATCH, 1), use_cache=True)
            finally:
                if forward is not None:
                    del model.forward
            logits.append(out.logits[:, -1].clone())
            tok = out.logits[:, -1:].argmax(-1)
        blocks[-1].__exit__(None, None, None)
    return logits


def _compiled(lm, iv, backend="counter"):
    torch._dynamo.reset()
    counters.clear()
    counter = GraphCounter()
    fn = torch.compile(lm.model.forward, backend=counter if backend == "counter" else backend, fullgraph=True)
    try:
        got = _decode(lm, iv, fn)
    finally:
        torch._dynamo.reset()
    return got, counter.graphs, sum(counters["graph_break"].values())


@pytest.mark.parametrize("method", method_names())
def test_steered_decode_step_is_one_graph_for_every_alpha_and_row_language(lm, fitted, method):
    iv = fitted[method]
    compiled, graphs, breaks = _compiled(lm, iv)
    assert (graphs, breaks) == (1, 0), f"{method}: {graphs} graphs, {breaks} graph breaks"
    eager = _decode(lm, iv)
    for step, (a, b) in enumerate(zip(compiled, eager)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"{method}, decode step {step}")
    plain = _decode(lm, [])
    steered = [r for r, lang in enumerate(LANGS_A) if lang != "en"]
    assert not torch.equal(eager[0][steered], plain[0][steered]), f"{method} changed nothing"


@pytest.mark.parametrize("method", method_names())
def test_anchor_rows_of_a_mixed_batch_are_bit_identical_to_unsteered(lm, fitted, method):
    """Eager hook path, prefill and cached decoding: the anchor rows never see the intervention."""
    plan = [(3.0, LANGS_A, True), (3.0, LANGS_A, False), (3.0, LANGS_B, False)]
    steered, plain = _decode(lm, fitted[method], plan=plan), _decode(lm, [], plan=plan)
    for step, (a, b) in enumerate(zip(steered, plain)):
        # rows in the anchor language since the prefill (a row steered once has steered states in its cache)
        anchor = [r for r in range(BATCH) if all(langs[r] == "en" for langs in [LANGS_A] + [p[1] for p in plan[:step + 1]])]
        assert anchor and torch.equal(a[anchor], b[anchor]), f"{method}, step {step}"
        assert not torch.equal(a, b)


def test_gemma3_sliding_window_steering_adds_no_graph():
    """Gemma-3 mixes sliding and full attention (a dict of masks). Its static sliding cache keeps
    an int length that transformers' mask code reads, so even the unsteered step recompiles once
    (then the length is dynamic); steering adds no graph and no break to that."""
    gemma = tiny_model("gemma3")
    iv = fit("diffmean", gemma, parallel_texts(8), ["en", "de", "sw"], anchor="en", layers=[1])
    _, plain_graphs, _ = _compiled(gemma, [])
    compiled, graphs, breaks = _compiled(gemma, iv)
    assert (graphs, breaks) == (plain_graphs, 0) and graphs <= 2
    _assert_equal_to_eager(compiled, gemma, iv, tol=1e-5)


def _assert_equal_to_eager(compiled: list, lm, iv, tol: float) -> None:
    """Each compiled decode step's logits equal the eager hook path's, within float reordering."""
    for a, b in zip(compiled, _decode(lm, iv)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_aot_autograd_traces_the_neuron_and_vector_edits(lm, fitted):
    """The aot_eager backend (functionalised, decomposed graphs, as inductor sees them) agrees too."""
    for method in ("clas", "intmu"):
        compiled, _, breaks = _compiled(lm, fitted[method], backend="aot_eager")
        assert breaks == 0
        _assert_equal_to_eager(compiled, lm, fitted[method], tol=1e-5)


def test_readers_still_see_every_call_of_a_compiled_forward(lm):
    """A reader runs eagerly (a graph break at its site) with the call's context, as without compile."""
    seen = []
    torch._dynamo.reset()
    fn = torch.compile(lm.model.forward, backend="eager")
    ids = torch.randint(4, 100, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), record(lm.model, [Site(1, "resid_post")],
                                        lambda s, act, ctx: seen.append((ctx.past_len, act.shape[1]))):
        lm.model.forward = fn
        try:
            out = lm.model(input_ids=ids, use_cache=True)
            lm.model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
        finally:
            del lm.model.forward
            torch._dynamo.reset()
    assert seen == [(0, 5), (5, 1)]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_inductor_compiled_steered_decode_equals_eager(lm, fitted):
    """Generated code (inductor, CPU): one graph for vector and CLAS steps, logits as eager."""
    for method in ("diffmean", "clas"):
        compiled, _, breaks = _compiled(lm, fitted[method], backend="inductor")
        assert breaks == 0
        _assert_equal_to_eager(compiled, lm, fitted[method], tol=1e-4)


def test_a_compiled_loop_reuses_decode_tensors_only_while_the_rows_stay_the_same(lm, fitted):
    """begin_call (what the engine's compiled loop calls) writes nothing when a decode step selects
    what the previous one did, and rewrites masks and row indices when the row languages change."""
    iv = fitted["diffmean"]
    with torch.inference_mode(), steer(lm.model, iv, langs=["de", "en"]) as session:
        session.begin_call(2, 3, 0, torch.tensor([[True, True, True], [False, True, True]]))  # the prefill
        (slot,), (rows,) = session.masks.values(), session.rows.values()
        assert rows.first.tolist() == [[True, False, False], [False, True, False]]  # each row's first real token
        real = torch.ones(2, 1, dtype=torch.bool)
        session.begin_call(2, 1, 3, real)
        assert rows.first.tolist() == [[False], [False]]
        first = slot.value
        session.begin_call(2, 1, 4, real)
        assert slot.value is first and slot.value.tolist() == [[True], [False]]
        session.set_langs(["en", "sw"])
        session.begin_call(2, 1, 5, real)
        assert slot.value.tolist() == [[False], [True]] and rows.index.tolist() == iv.row_index(["en", "sw"], 2)
