"""The script gate: which tokens each script allows, and generation that never leaves the script."""

from __future__ import annotations

import regex

from xlsteer.evaluation.engine import Engine
from xlsteer.evaluation.sampling import Sampling
from xlsteer.evaluation.script_gate import allowed_tokens, gate_scope, row_masks
from xlsteer.testing import tiny_model, tiny_tokenizer

VOCAB = 400  # ASCII, accented Latin, Greek, Cyrillic, the CJK characters of the tiny tokenizer


def _allowed_chars(tok, script):
    mask = allowed_tokens(tok, script)
    return {tok.convert_ids_to_tokens(i) for i in range(len(tok)) if mask[i]}


def test_han_allows_han_digits_punctuation_space_and_specials_only():
    tok = tiny_tokenizer(VOCAB)
    chars = _allowed_chars(tok, "Han")
    assert {"的", "中", "7", ",", "?", " ", "\n", "<eos>", "<pad>"} <= chars
    assert not {"a", "Z", "ä", "ж", "α"} & chars
    assert all(regex.fullmatch(r"[\p{Han}\p{Common}\p{Inherited}]", c) or c.startswith("<") for c in chars)


def test_each_script_allows_its_own_letters():
    tok = tiny_tokenizer(VOCAB)
    cyr = _allowed_chars(tok, "Cyrillic")
    assert {"ж", "я", "5"} <= cyr and not {"的", "a", "α"} & cyr
    assert "的" in _allowed_chars(tok, "Japanese")  # kanji are Japanese script too


def test_masks_are_cached_per_tokenizer():
    tok = tiny_tokenizer(VOCAB)
    assert allowed_tokens(tok, "Han") is allowed_tokens(tok, "Han")


def test_latin_targets_are_unconstrained_and_say_so():
    tok = tiny_tokenizer(VOCAB)
    assert row_masks(tok, ["de", "en", "vi"], VOCAB) is None
    assert gate_scope("de").startswith("unconstrained")
    masks = row_masks(tok, ["zh", "de"], VOCAB + 8)
    assert masks.shape == (2, VOCAB + 8)
    assert bool(masks[1].all())  # the Latin row: every id
    assert not bool(masks[0, VOCAB:].any())  # ids beyond the tokenizer: never


def test_gated_generation_stays_in_the_wanted_script_and_leaves_latin_rows_alone():
    lm = tiny_model("llama", vocab_size=VOCAB)
    prompts = ["Hello world", "The answer is", "abc"]
    langs = ["zh", "ru", "de"]
    eng = Engine(lm, batch_size=3)
    free = eng.generate(prompts, langs, 12)
    gated = eng.generate(prompts, langs, 12, sampling=Sampling(gate="script"))
    assert regex.fullmatch(r"[\p{Han}\p{Common}\p{Inherited}]*", gated[0])
    assert regex.fullmatch(r"[\p{Cyrillic}\p{Common}\p{Inherited}]*", gated[1])
    assert gated[2] == free[2]
    hot = Sampling(temperature=1.0, seed=1, gate="script")
    sampled = eng.generate(prompts, langs, 12, sampling=hot, keys=["a", "b", "c"])
    assert regex.fullmatch(r"[\p{Han}\p{Common}\p{Inherited}]*", sampled[0])
    assert any(regex.search(r"\p{Han}", t) for t in (gated[0], sampled[0]))  # the gate did not just stop it
