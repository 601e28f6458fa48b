"""Properties of the hook engine over random batches (hypothesis).

For random batch sizes, left-padding lengths, row languages, position policies, layers, sites
and strengths, on a tiny random Llama (fp32, eager attention):

- rows in the anchor language come out bit-identical to the unsteered run of the same batch;
- padding is never steered: the activation the steered site passes on differs from the
  unsteered one exactly at the positions the policy selects in non-anchor rows (by alpha * v),
  never at padding; and a padded row's outputs at its real positions equal that row run alone,
  unpadded and steered the same way (within 1e-5). (Hidden states *at* padding positions are
  not compared: a fully masked query row attends uniformly to every key, steered ones included.)
- strength 0 is the identity, bit for bit, for every row.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlsteer.hook_session import POSITION_POLICIES
from xlsteer.hooks import record, steer
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import PAD_ID, tiny_model

LANGS = ("de", "sw")
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def llama():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_model("llama").model
    torch.set_num_threads(threads)


@st.composite
def batches(draw):
    """Rows of token ids (lengths 1..9), their languages, and how the batch is steered."""
    n = draw(st.integers(1, 4))
    rows = [draw(st.lists(st.integers(4, 127), min_size=1, max_size=9)) for _ in range(n)]
    langs = [draw(st.sampled_from(("en",) + LANGS)) for _ in range(n)]
    return {
        "rows": rows,
        "langs": langs,
        "policy": draw(st.sampled_from(POSITION_POLICIES)),
        "layer": draw(st.integers(0, 1)),
        "site": draw(st.sampled_from(["resid_pre", "resid_post", "attn_out", "mlp_out"])),
        "alpha": draw(st.floats(-6.0, 6.0, allow_nan=False).filter(lambda a: abs(a) > 0.05)),
        "seed": draw(st.integers(0, 2**16)),
        "extra_pad": draw(st.integers(0, 3)),  # padding even in front of the longest row
    }


def _vector(model, b, strength=None) -> SteeringVector:
    g = torch.Generator().manual_seed(b["seed"])
    d = model.config.hidden_size
    return SteeringVector(sites=[Site(b["layer"], b["site"])],
                          tensors={vector_key(b["layer"]): 2.0 * torch.randn(len(LANGS), d, generator=g)},
                          params={"normalize": "none"}, languages=list(LANGS), anchor="en",
                          strength=b["alpha"] if strength is None else strength)


def _left_pad(rows, extra):
    width = max(len(r) for r in rows) + extra
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def _forward(model, ids, mask, hidden=False):
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=hidden)
    return out


def _expected_edits(b, mask: torch.Tensor) -> torch.Tensor:
    """(batch, width) bool: where the policy and the routing say the site is edited (one uncached call)."""
    real = mask.bool()
    rows = torch.tensor([lang != "en" for lang in b["langs"]]).unsqueeze(1)
    if b["policy"] in ("all", "prompt"):  # an uncached call is all prompt
        return real & rows
    if b["policy"] == "generated":
        return torch.zeros_like(real)
    last = torch.zeros_like(real)
    last[:, -1] = True  # left padding: each row's last real prompt token is the last column
    return last & rows


@SETTINGS
@given(b=batches())
def test_edits_land_only_where_the_policy_says_never_on_padding_or_anchor_rows(llama, b):
    ids, mask = _left_pad(b["rows"], b["extra_pad"])
    site = Site(b["layer"], b["site"])
    seen: dict[str, torch.Tensor] = {}

    def reader(key):
        def read(s, act, ctx):
            seen[key] = act.detach().clone()
        return read

    with record(llama, [site], reader("base")):
        base = _forward(llama, ids, mask).logits
    vec = _vector(llama, b)
    with steer(llama, vec, langs=b["langs"], positions=b["policy"], readers=[([site], reader("steered"))]):
        steered = _forward(llama, ids, mask).logits
    # the activation at the steered site, as passed on, minus the unsteered one: the edit itself
    edit = seen["steered"] - seen["base"]
    where = _expected_edits(b, mask)
    assert torch.equal(edit[~where], torch.zeros_like(edit[~where])), "an edit outside the selected positions"
    v = vec.effective(b["layer"]) * b["alpha"]
    for i, t in where.nonzero().tolist():
        torch.testing.assert_close(edit[i, t], v[LANGS.index(b["langs"][i])], rtol=1e-4, atol=1e-4)
    for i, lang in enumerate(b["langs"]):
        if lang == "en":
            assert torch.equal(steered[i], base[i]), f"anchor row {i} changed"


@SETTINGS
@given(b=batches())
def test_a_padded_row_equals_the_row_alone(llama, b):
    ids, mask = _left_pad(b["rows"], b["extra_pad"])
    vec = _vector(llama, b)
    with steer(llama, vec, langs=b["langs"], positions=b["policy"]) as session:
        batched = _forward(llama, ids, mask).logits
        for i, row in enumerate(b["rows"]):
            session.set_langs([b["langs"][i]])
            alone_ids = torch.tensor([row])
            alone = _forward(llama, alone_ids, torch.ones_like(alone_ids)).logits[0]
            torch.testing.assert_close(batched[i, ids.shape[1] - len(row):], alone, rtol=0, atol=1e-5)


@SETTINGS
@given(b=batches())
def test_alpha_zero_is_the_identity(llama, b):
    ids, mask = _left_pad(b["rows"], b["extra_pad"])
    base = _forward(llama, ids, mask).logits
    with steer(llama, _vector(llama, b, strength=0.0), langs=b["langs"], positions=b["policy"]):
        steered = _forward(llama, ids, mask).logits
    assert torch.equal(steered, base)
