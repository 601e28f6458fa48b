"""Language codes, scripts and language identification."""

from __future__ import annotations

import pytest

from xlsteer.data import langs as L
from xlsteer.data.langs import (
    LANG_NAMES,
    identify_language,
    lang_name,
    langid_accuracy,
    normalize_lang,
    normalize_langs,
    script_of,
    uses_spaces,
)
from xlsteer.errors import DataError, LanguageError, UsageError


@pytest.fixture(scope="module")
def real_data():
    from xlsteer.data.paths import data_dir

    try:
        return data_dir()
    except DataError as e:
        pytest.skip(f"shared data not available: {e}")


@pytest.mark.parametrize(
    "code,want",
    [
        ("eng", "en"), ("deu", "de"), ("ger", "de"), ("zho-CN", "zh"), ("zho", "zh"), ("cmn", "zh"),
        ("zh-Hans", "zh"), ("ZH_cn", "zh"), ("jpn", "ja"), ("jp", "ja"), ("arb", "ar"), ("swa", "sw"),
        ("swh", "sw"), ("ben", "bn"), ("ell", "el"), ("qu", "qu"), ("que", "qu"), ("quz", "qu"),
        ("ht", "ht"), ("hat", "ht"), ("et", "et"), ("est", "et"), ("ta", "ta"), ("tam", "ta"),
        ("pt-BR", "pt"), ("eng-GB", "en"), ("fra-CA", "fr"), ("spa-MX", "es"), ("es-419", "es"),
        ("srp-Cyrl", "sr"), ("aze-Latn", "az"), ("tgk-Cyrl", "tg"), ("snd-Arab", "sd"),
        ("ckb-Arab", "ckb"), ("gsw-ZH", "gsw"), ("gsw-BE", "gsw"), ("yue", "yue"), ("prs", "prs"),
        ("fas", "fa"), ("msa", "ms"), ("iw", "he"), ("in", "id"), (" de ", "de"),
    ],
)
def test_normalize(code, want):
    assert normalize_lang(code) == want


@pytest.mark.parametrize("code", ["xx", "klingon", "", "   ", "de-Qqqq", "de-CH-Latn-x", "e", "zz-Latn"])
def test_unknown_codes(code):
    with pytest.raises(LanguageError) as e:
        normalize_lang(code)
    msg = str(e.value)
    assert msg.startswith("unknown language code") and "use ISO 639-1 codes such as de, sw, zh" in msg
    assert "\n" not in msg


def test_unknown_message_exact():
    with pytest.raises(LanguageError, match=r"^unknown language code 'xx'; use ISO 639-1 codes such as de, sw, zh$"):
        normalize_lang("xx")
    assert issubclass(LanguageError, UsageError)  # exit code 2


@pytest.mark.parametrize("code", ["zho-TW", "zh-TW", "zh-HK", "zh-Hant", "zh-Hant-TW"])
def test_traditional_chinese_is_ambiguous(code):
    with pytest.raises(LanguageError, match="Traditional Chinese"):
        normalize_lang(code)


@pytest.mark.parametrize("code", ["srp-Latn", "ru-Latn", "hi-Latn", "ja-Latn"])
def test_other_script_is_ambiguous(code):
    with pytest.raises(LanguageError, match="script"):
        normalize_lang(code)


def test_all_ntrex_codes(real_data):
    """Every NTREX-128 code maps (except the two other-script ones), and no two different files collide."""
    rows = [line.split(None, 1) for line in (real_data / "ntrex128/LANGUAGES.tsv").read_text("utf-8").splitlines() if line.strip()]
    assert len(rows) >= 128
    seen: dict[str, str] = {}
    for code, _name in rows:
        if code in ("zho-TW", "srp-Latn"):
            with pytest.raises(LanguageError):
                normalize_lang(code)
            continue
        n = normalize_lang(code)
        assert n in LANG_NAMES, code
        base = code.split("-")[0]
        # only regional variants of one base code may share a normalised code
        assert seen.setdefault(n, base) == base, (code, n, seen[n])


def test_names_scripts_spaces():
    assert LANG_NAMES["de"] == "German" and lang_name("deu") == "German" and lang_name("zho-CN") == "Chinese"
    scripts = {
        "de": "Latin", "ru": "Cyrillic", "zh": "Han", "th": "Thai", "hi": "Devanagari", "ar": "Arabic",
        "el": "Greek", "bn": "Bengali", "te": "Telugu", "ta": "Tamil", "ko": "Hangul", "ja": "Japanese",
        "bg": "Cyrillic", "ur": "Arabic", "sw": "Latin", "qu": "Latin",
    }
    for lang, s in scripts.items():
        assert script_of(lang) == s, lang
    for lang in ("zh", "ja", "th", "jpn", "zho-CN"):
        assert uses_spaces(lang) is False
    for lang in ("de", "en", "ru", "ar", "hi", "ko", "sw"):
        assert uses_spaces(lang) is True
    for code in LANG_NAMES:
        assert normalize_lang(code) == code
        assert script_of(code)


def test_normalize_langs():
    assert normalize_langs("de, zho-CN sw") == ["de", "zh", "sw"]
    with pytest.raises(UsageError, match="twice"):
        normalize_langs(["de", "deu"])


def test_identify_language_basic():
    texts = [
        "Das ist ein ganz normaler deutscher Satz über das Wetter.",
        "C'est une phrase française tout à fait ordinaire.",
        "Это обычное русское предложение о погоде.",
        "这是一个关于天气的普通中文句子。",
        "",
    ]
    assert identify_language(texts) == ["de", "fr", "ru", "zh", "und"]


def test_identify_language_candidates_and_no_global_state():
    import py3langid.langid as pl

    before = pl.IDENTIFIER
    before_classes = None if before is None else list(before.nb_classes)
    out = identify_language(["Das ist ein ganz normaler deutscher Satz."], candidates=["en", "fra"])
    assert out[0] in ("en", "fr")
    assert identify_language(["Das ist ein ganz normaler deutscher Satz."])[0] == "de"
    assert pl.IDENTIFIER is before
    if before is not None:
        assert list(before.nb_classes) == before_classes
    with pytest.raises(LanguageError, match="does not know"):
        identify_language(["x"], candidates=["gsw"])
    with pytest.raises(LanguageError):
        identify_language(["x"], candidates=["xx"])
    with pytest.raises(UsageError):
        identify_language("a single string")  # type: ignore[arg-type]


def test_identify_folds_varieties():
    assert L._label_to_code("wuu") == "zh" and L._label_to_code("arz") == "ar"
    assert "zh" in L.langid_languages() and "wuu" not in L.langid_languages()


def test_langid_accuracy_ntrex(real_data):
    from xlsteer.data.corpora import load_ntrex

    corpus = load_ntrex(real_data, ["de", "fr", "ru", "zh"], split="fit", limit=50)
    acc = langid_accuracy(corpus, ["de", "fr", "ru", "zh"], n=50)
    closed = langid_accuracy(corpus, n=50, candidates=corpus.langs)
    print(f"\nlanguage-ID accuracy on 50 NTREX lines (open set): {acc}")
    print(f"language-ID accuracy on 50 NTREX lines (closed set de/fr/ru/zh): {closed}")
    for lang in ("de", "fr", "ru", "zh"):
        assert acc[lang] >= 0.9, (lang, acc[lang])
        assert closed[lang] >= acc[lang]
    with pytest.raises(LanguageError):
        langid_accuracy(corpus, ["sw"], n=5)
