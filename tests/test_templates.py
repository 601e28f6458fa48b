"""Prompt templates: the exact text each task's items become."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from xlsteer.errors import LanguageError, UsageError
from xlsteer.evaluation.tasks import Item, get_template
from xlsteer.evaluation.templates import TEMPLATES, XCOPA_CONNECTORS


def _item(lang="en", **fields):
    return Item(id="t/0", lang=lang, split="dev", fields=fields, answer=0)


def _lmeval_xcopa_utils():
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lm-eval is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "tasks" / "xcopa" / "utils.py"
    if not path.is_file():
        pytest.skip("lm-eval has no xcopa utils")
    s = importlib.util.spec_from_file_location("_lmeval_xcopa_utils", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)  # a plain module of functools.partial definitions
    return mod


def test_every_template_has_a_version_and_renders_its_kind():
    for name, tpl in TEMPLATES.items():
        assert tpl.version and isinstance(tpl.version, str), name
        assert tpl.describe()["version"] == tpl.version


def test_xcopa_matches_lm_eval_on_real_items_in_every_language():
    utils = _lmeval_xcopa_utils()
    tpl = get_template("xcopa")
    from xlsteer.evaluation.tasks import xcopa

    for lang in [x for x in xcopa.SOURCE_LANGS]:
        fn = getattr(utils, f"doc_to_text_{lang}")
        assert fn.keywords["connector"] == XCOPA_CONNECTORS[lang]
        for it in xcopa.load_items(None, lang, "dev", limit=5):
            req = tpl.render(it)
            doc = dict(it.fields)
            assert req.context == fn(doc)
            assert list(req.choices) == [" " + c for c in utils.doc_to_choice(doc)]  # target_delimiter " "


def test_xcopa_english_uses_copa_connectors():
    tpl = get_template("xcopa")
    req = tpl.render(_item(premise="The man fell.", choice1="He slipped.", choice2="He sang.", question="cause"))
    assert req.context == "The man fell because"
    assert req.choices == (" he slipped.", " he sang.")
    eff = tpl.render(_item(premise="It rained.", choice1="A", choice2="B", question="effect"))
    assert eff.context == "It rained therefore"


def test_xcopa_connector_is_in_the_items_language():
    req = get_template("xcopa").render(_item("zh", premise="他摔倒了。", choice1="他滑倒了。", choice2="他唱歌了。",
                                              question="effect"))
    assert req.context == "他摔倒了 所以"  # lm-eval puts a space before the connector everywhere


def test_xcopa_unknown_language_is_refused():
    with pytest.raises(LanguageError, match="connectors"):
        get_template("xcopa").render(_item("de", premise="x.", choice1="a", choice2="b", question="cause"))


@pytest.mark.parametrize("name,fields,missing", [
    ("xcopa", {"premise": "x.", "choice1": "a", "question": "cause"}, "choice2"),
    ("xnli", {"premise": "x"}, "hypothesis"),
    ("mgsm-direct", {}, "question"),
    ("xquad", {"context": "c"}, "question"),
])
def test_missing_field_raises_usage_error_naming_it(name, fields, missing):
    with pytest.raises(UsageError, match=f"'{missing}'"):
        TEMPLATES[name].render(_item(**fields))


def test_xnli_clas_format_and_content_free_input():
    tpl = get_template("xnli")
    req = tpl.render(_item(premise="A man sleeps.", hypothesis="A man is awake."))
    assert req.kind == "label" and req.labels == ("0", "1", "2")
    assert req.prompt.endswith("Answer:")
    assert "0: entailment 1: neutral 2: contradiction" in req.prompt
    assert "A man sleeps." in req.prompt and "A man is awake." in req.prompt
    cf = tpl.content_free("de").prompt
    assert "Premise: N/A" in cf and "Hypothesis: N/A" in cf and cf.endswith("Answer:")


def test_mgsm_direct_and_cot_with_exemplars():
    from xlsteer.evaluation.tasks import mgsm as mod

    ex = mod.load_exemplars(None, "de")
    item = mod.load_items(None, "de", "dev", limit=1)[0]
    direct = get_template("mgsm", "mgsm-direct", k=2).render(item, ex)
    assert direct.prompt.count("Question:") == 3
    assert direct.prompt.endswith(f"Question: {item.fields['question']}\nAnswer:")
    assert f"Answer: {ex[0].answer}\n\n" in direct.prompt
    cot = get_template("mgsm", "mgsm-cot", k=1).render(item, ex)
    assert cot.prompt.endswith("Step-by-step answer:")
    assert ex[0].fields["cot"].strip() in cot.prompt
    assert cot.max_new_tokens > direct.max_new_tokens and "Question:" in cot.stop
    zero = get_template("mgsm", "mgsm-cot").render(item)
    assert zero.prompt == f"Question: {item.fields['question']}\nStep-by-step answer:"


def test_mgsm_options_are_recorded_and_checked():
    tpl = get_template("mgsm", "mgsm-cot", k=3, exemplar_lang="en")
    assert tpl.describe()["options"]["k"] == 3
    assert tpl.describe()["options"]["exemplar_lang"] == "en"
    with pytest.raises(UsageError, match="k must be"):
        get_template("mgsm", "mgsm-cot", k=9)
    with pytest.raises(UsageError, match="needs 2 exemplars"):
        get_template("mgsm", "mgsm-direct", k=2).render(_item(question="q"))


def test_xquad_format():
    req = get_template("xquad").render(_item(context="Paris is in France.", question="Where is Paris?"))
    assert req.prompt == "Context: Paris is in France.\nQuestion: Where is Paris?\nAnswer:"
    assert req.kind == "generate" and req.stop == ("\n",) and req.max_new_tokens == 32


def test_unknown_or_mismatched_template_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown template"):
        get_template("xcopa", "nope")
    with pytest.raises(UsageError, match="is for task"):
        get_template("xcopa", TEMPLATES["xnli"])
    with pytest.raises(UsageError, match="template 'xnli' is for task xnli, not xcopa; choose one of xcopa"):
        get_template("xcopa", "xnli")
    with pytest.raises(UsageError, match="no option"):
        get_template("xcopa", k=1)
