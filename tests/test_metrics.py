"""Hand-computed cases for xlsteer.evaluation.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xlsteer.errors import DataError, UsageError
from xlsteer.evaluation.metrics import (
    accuracy,
    agreement,
    choice_scores,
    confusion,
    degenerate,
    js_divergence,
    macro_f1,
    mean_js_divergence,
)
from xlsteer.evaluation.metrics_numeric import extract_number, mgsm_exact_match
from xlsteer.evaluation.metrics_text import normalize_answer, squad_em, squad_f1

# ------------------------------------------------------------------ number extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("উত্তর হল ১২৩৪।", "1234"),  # Bengali digits and marker
        ("उत्तर है ४२", "42"),  # Devanagari
        ("คำตอบคือ ๑,๒๓๔", "1234"),  # Thai digits, thousands comma
        ("సమాధానం ౧౨.", "12"),  # Telugu
        ("الجواب ٣٫٥", "3.5"),  # Arabic-Indic digits, Arabic decimal separator
        ("جواب ۱۲۰", "120"),  # Extended Arabic-Indic (Persian)
        ("答案是 ４２。", "42"),  # full-width digits
        ("１，２３４個", "1234"),  # full-width digits and full-width thousands comma
        ("答えは11です。", "11"),
        ("Ответ — 11.", "11"),
    ],
)
def test_extract_number_scripts(text, expected):
    assert extract_number(text) == expected


@pytest.mark.parametrize(
    "text, lang, expected",
    [
        ("She has 1,234 eggs", None, "1234"),
        ("1,234,567", None, "1234567"),
        ("1 234 eggs", "fr", "1234"),
        ("1\u00a0234\u00a0567", "ru", "1234567"),
        ("1\u202f234,5", "fr", "1234.5"),
        ("CHF 1'234", None, "1234"),
        ("1,00,000 rupees", "bn", "100000"),
        ("1.234.567", None, "1234567"),
        ("1.234,56", "de", "1234.56"),
        ("$1,234.50.", "en", "1234.5"),
        ("1.234", "en", "1.234"),  # single point + 3 digits: decimal ...
        ("1.234", None, "1.234"),
        ("Die Antwort lautet 1.234.", "de", "1234"),  # ... but thousands in de
        ("1.5", "de", "1.5"),
        ("So 2,5 kg", "de", "2.5"),  # decimal comma
        ("1,2,3", None, "3"),  # a list, not 1.2
    ],
)
def test_extract_number_separators(text, lang, expected):
    assert extract_number(text, lang) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 42.", "42"),
        ("The answer is 42. Then 7 more.", "42"),
        ("Answer: -3", "-3"),
        ("x = -3", "-3"),
        ("(-3)", "-3"),
        ("10-3 = 7", "7"),  # subtraction, not -3
        ("COVID-19", "19"),
        ("42.0", "42"),
        ("2.50", "2.5"),
        ("-0", "0"),
        ("007", "7"),
        ("x² = 4", "4"),  # superscript is not a digit
        ("no number here", None),
        ("", None),
        ("Answer:\n\n**18**", "18"),
        ("so \\boxed{1,000} it is 3", "1000"),
        # marker wins over the last number, and the first "answer is" wins over later ones
        ("I had 5, gave 2. The answer is 3.\n\nQuestion: what is 7+1? The answer is 8.", "3"),
        # the MGSM CoT trigger "Step-by-Step Answer:" is not an answer marker
        ("Step-by-Step Answer: Roger has 5 balls. 5 + 6 = 11. The answer is 11.", "11"),
        ("Step-by-Step Answer: Roger has 5 balls. 5 + 6 = 11", "11"),
        ("ধাপে ধাপে উত্তর: ৫ + ৬ = ১১। উত্তর হল ১১।", "11"),
    ],
)
def test_extract_number_rules(text, expected):
    assert extract_number(text) == expected


def test_mgsm_exact_match():
    assert mgsm_exact_match("The answer is 18.", 18) is True
    assert mgsm_exact_match("The answer is 18.0", "18") is True
    assert mgsm_exact_match("উত্তর হল ১৮।", 18) is True
    assert mgsm_exact_match("The answer is 1,800.", 1800) is True
    assert mgsm_exact_match("The answer is 17.", 18) is False
    assert mgsm_exact_match("I do not know", 18) is False
    assert mgsm_exact_match("The answer is -2.5", -2.5) is True
    with pytest.raises(DataError):
        mgsm_exact_match("42", "n/a")


# ------------------------------------------------------------------ SQuAD


def test_squad_english_mirrors_official():
    assert normalize_answer("The  Cat, sat!", "en") == "cat sat"
    # P = 3/4 (cat sat on mat vs cat on mat), R = 1
    assert squad_f1("the cat sat on the mat", ["a cat on a mat"], "en") == pytest.approx(6 / 7)
    assert squad_em("the cat sat on the mat", ["a cat on a mat"], "en") == 0.0
    assert squad_em("The Cat!", ["cat"], "en") == 1.0
    # max over golds: vs "cat sat": P = 1, R = 1/2
    assert squad_f1("cat", ["dog", "cat sat"], "en") == pytest.approx(2 / 3)
    # official quirks: punctuation is deleted (not spaced), only ASCII punctuation
    assert squad_em("well-known", ["well known"], "en") == 0.0
    assert squad_em("«Paris»", ["Paris"], "en") == 0.0
    # empty vs empty: EM 1 but F1 0, as in SQuAD v1.1
    assert squad_em("", [""], "en") == 1.0
    assert squad_f1("", [""], "en") == 0.0
    assert squad_f1("the", "a", "en") == 0.0


def test_squad_other_space_languages():
    assert squad_em("«Paris»", ["Paris"], "fr") == 1.0  # Unicode punctuation removed
    assert squad_em("Der Hund", ["der Hund."], "de") == 1.0
    assert squad_f1("Der Hund", ["Hund"], "de") == pytest.approx(2 / 3)  # articles kept
    assert squad_em("the dog", ["dog"], "en") == 1.0


def test_squad_character_level():
    # zh: chars 北 京 市 vs 北 京: P = 2/3, R = 1 -> F1 = 0.8
    assert squad_f1("北京市", ["北京。"], "zh") == pytest.approx(0.8)
    assert squad_em("北 京！", ["北京"], "zh") == 1.0
    assert squad_em("北京市", ["北京"], "zh") == 0.0
    assert normalize_answer("東京 タワー。", "ja") == "東京タワー"
    # th: กรุงเทพ is 7 code points, กรุง 4 of them: P = 4/7, R = 1 -> F1 = 8/11
    assert squad_f1("กรุงเทพ", ["กรุง"], "th") == pytest.approx(8 / 11)
    assert squad_em("กรุง\u200bเทพ", ["กรุงเทพ"], "th") == 1.0  # zero-width space dropped
    assert squad_f1("กรุงเทพ", ["กรุงเทพ"], "th-TH") == 1.0
    with pytest.raises(DataError):
        squad_f1("x", [], "zh")


# ------------------------------------------------------------------ classification

GOLD = ["e", "e", "e", "n", "n", "c", "c", "c", "c"]
PRED = ["e", "e", "n", "n", "c", "c", "c", "e", "n"]


def test_confusion_and_macro_f1_hand_worked():
    mat = confusion(PRED, GOLD, ["e", "n", "c"])
    np.testing.assert_array_equal(mat, [[2, 1, 0], [0, 1, 1], [1, 1, 2]])
    # F1: e = 4/6, n = 2/5, c = 4/7
    expected = (2 / 3 + 2 / 5 + 4 / 7) / 3
    assert macro_f1(PRED, GOLD, ["e", "n", "c"]) == pytest.approx(expected)
    assert macro_f1(PRED, GOLD, ["e", "n", "c"]) == pytest.approx(172 / 315)
    # a label never predicted and never gold is excluded
    assert macro_f1(PRED, GOLD, ["e", "n", "c", "x"]) == pytest.approx(expected)
    assert accuracy(PRED, GOLD) == pytest.approx(5 / 9)


def test_macro_f1_edge_cases():
    # predicted but never gold: F1 0, included -> (2/3 + 0) / 2
    assert macro_f1(["a", "b"], ["a", "a"], ["a", "b"]) == pytest.approx(1 / 3)
    # an out-of-label prediction is a false negative of its gold label
    assert macro_f1(["junk", "b"], ["a", "b"], ["a", "b"]) == pytest.approx(0.5)
    assert confusion(["junk", "b"], ["a", "b"], ["a", "b"]).tolist() == [[0, 0], [0, 1]]
    with pytest.raises(DataError):
        macro_f1(["a"], ["z"], ["a", "b"])
    with pytest.raises(DataError):
        accuracy([1, 2], [1])


def test_degenerate():
    d = degenerate(["a"] * 9 + ["b"])
    assert d == {"degenerate": True, "majority_label": "a", "majority_share": 0.9}
    assert degenerate(["a"] * 9 + ["b"], threshold=0.95)["degenerate"] is False
    with pytest.raises(UsageError):
        degenerate(["a"], threshold=0)


# ------------------------------------------------------------------ choices


def test_choice_scores_3x2():
    lp = np.array([[-1.0, -2.0], [-3.0, -1.0], [-2.0, -2.0]])
    out = choice_scores(lp, np.array([0, 0, 1]))
    np.testing.assert_array_equal(out["pred"], [0, 1, 0])  # tie -> lowest index
    np.testing.assert_array_equal(out["correct"], [True, False, False])
    np.testing.assert_allclose(out["margin"], [1.0, -2.0, 0.0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    np.testing.assert_allclose(out["p_correct"], [sig(1.0), sig(-2.0), 0.5], rtol=1e-12)


def test_choice_scores_validation():
    with pytest.raises(DataError):
        choice_scores(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(DataError):
        choice_scores(np.array([[np.nan, 0.0]]), np.array([0]))
    out = choice_scores(np.array([[0.0, -np.inf]]), np.array([0]))
    assert out["p_correct"][0] == 1.0 and out["margin"][0] == np.inf


# ------------------------------------------------------------------ consistency


def test_agreement_and_jsd():
    assert agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    p = np.array([[0.2, 0.8], [1.0, 0.0], [1.0, 0.0]])
    q = np.array([[0.2, 0.8], [0.0, 1.0], [0.5, 0.5]])
    js = js_divergence(p, q)
    hand = 0.5 * math.log2(4 / 3) + 0.25 * math.log2(2 / 3) + 0.25  # [1,0] vs [.5,.5]
    np.testing.assert_allclose(js, [0.0, 1.0, hand], atol=1e-12)
    assert js[0] == 0.0 and js[1] == 1.0
    assert mean_js_divergence(p, q) == pytest.approx((1.0 + hand) / 3)
    # rows are renormalised: counts work
    assert js_divergence([2, 2], [1, 1])[0] == 0.0
