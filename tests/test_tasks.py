"""Task item loaders: counts, splits (METHODS.md 5), cross-language alignment, error paths."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from xlsteer.data.corpora import load_xquad_paragraphs
from xlsteer.data.paths import data_dir, data_hash
from xlsteer.errors import DataError, LanguageError, UsageError
from xlsteer.evaluation.tasks import Item, TaskSpec, get_task, task_names
from xlsteer.evaluation.tasks.spec import BUILTIN
from xlsteer.evaluation.tasks import mgsm, xcopa, xnli, xquad

#: The parallel built-ins: every language holds the same items (LCB is not parallel: its prompts
#: differ per language and source; tests/test_lcb.py covers its items).
TASKS = {name: get_task(name) for name in BUILTIN if name in ("mgsm", "xcopa", "xnli", "xquad")}
EXPECTED = {
    "mgsm": {"train": 8, "dev": 50, "test": 200},
    "xcopa": {"dev": 100, "test": 500},
    "xnli": {"train": 1290, "dev": 200, "test": 1000},
    "xquad": {"dev": 153, "test": 916},
}


@pytest.fixture(scope="module")
def real_data() -> Path:
    try:
        return data_dir()
    except DataError as e:
        pytest.skip(f"shared data not available: {e}")


@pytest.fixture(scope="module")
def all_items(real_data):
    """(task, split) -> {lang: items}, loaded once."""
    out = {}
    for name, mod in TASKS.items():
        for split in mod.splits:
            out[name, split] = {lang: mod.load_items(real_data, lang, split) for lang in mod.langs}
    return out


def test_registry():
    assert task_names()[:4] == ["mgsm", "xcopa", "xnli", "xquad"]
    assert get_task("MGSM") is mgsm.SPEC and TASKS["xquad"] is xquad.SPEC
    with pytest.raises(UsageError, match=r"unknown task 'belebele'; available: mgsm xcopa xnli xquad"):
        get_task("belebele")
    for spec in TASKS.values():
        assert isinstance(spec, TaskSpec)
        assert set(spec.splits) == set(EXPECTED[spec.name])
        assert callable(spec.load_items) and callable(spec.data_files)


def test_languages():
    assert mgsm.LANGS == ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
    assert xcopa.LANGS == ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh", "en")
    assert len(xnli.LANGS) == 15 and len(xquad.LANGS) == 12


def test_counts_and_alignment(all_items):
    for (name, split), by_lang in all_items.items():
        ref_lang = next(iter(by_lang))
        ref = by_lang[ref_lang]
        assert len(ref) == EXPECTED[name][split], (name, split)
        assert len({it.id for it in ref}) == len(ref), (name, split)
        for lang, items in by_lang.items():
            assert [it.id for it in items] == [it.id for it in ref], (name, split, lang)
            assert all(it.lang == lang and it.split == split for it in items)
            assert all(isinstance(it, Item) for it in items)
            if name != "xquad":  # gold answers are language-independent (XQuAD answers are spans)
                assert [it.answer for it in items] == [it.answer for it in ref], (name, split, lang)


def test_splits_disjoint(all_items):
    for name, mod in TASKS.items():
        ids = [set(it.id for it in all_items[name, s][mod.langs[0]]) for s in mod.splits]
        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                assert not ids[i] & ids[j], name


def test_mgsm(all_items):
    dev = all_items["mgsm", "dev"]["de"]
    test = all_items["mgsm", "test"]["de"]
    assert [it.id for it in dev] == [f"mgsm/{i}" for i in range(50)]
    assert [it.id for it in test] == [f"mgsm/{i}" for i in range(50, 250)]
    en = all_items["mgsm", "dev"]["en"]
    assert en[0].fields["question"].startswith("Janet") and en[0].answer == 18
    answers = {it.fields["answer_text"]: it.answer for it in dev + test}
    assert answers.get("2,125", 2125) == 2125 and all(isinstance(a, int) for a in answers.values())
    assert mgsm.parse_answer("114,200") == 114200
    ex = all_items["mgsm", "train"]["zh"]
    assert [it.id for it in ex] == [f"mgsm/exemplar/{k}" for k in range(1, 9)]
    assert [it.answer for it in ex] == [11, 29, 39, 9, 33, 8, 8, 5]
    en_ex = all_items["mgsm", "train"]["en"][0]
    assert en_ex.fields["question_prefix"] == "Question" and en_ex.fields["question"].startswith("Roger has 5")
    assert en_ex.fields["answer_prefix"] == "Step-by-Step Answer" and en_ex.fields["cot"].endswith("The answer is 11.")
    assert ex[0].fields["question_prefix"] == "问题"


def test_xcopa(all_items, real_data):
    dev_th = all_items["xcopa", "dev"]["th"]
    assert [it.id for it in dev_th] == [f"xcopa/val/{i}" for i in range(100)]
    assert all_items["xcopa", "test"]["zh"][17].id == "xcopa/test/17"
    zh = {it.id: it.fields["question"] for it in all_items["xcopa", "test"]["zh"]}
    for lang in xcopa.LANGS:
        items = all_items["xcopa", "test"][lang]
        assert all(it.fields["question"] == zh[it.id] for it in items), lang
        assert all(it.answer in (0, 1) for it in items)
    th = all_items["xcopa", "test"]["th"]
    assert sum(it.fields["question"] != it.fields["question_file"] for it in th) == 250  # README caveat
    en = all_items["xcopa", "dev"]["en"]
    assert en[0].lang == "en" and en[0].fields["source_lang"] == "et"
    assert en[0].fields["premise"].isascii()
    gmt_sw = xcopa.load_gmt_english(real_data, "sw", "test")
    assert [it.id for it in gmt_sw] == [it.id for it in all_items["xcopa", "test"]["sw"]]
    assert all(it.lang == "en" and it.fields["source_lang"] == "sw" for it in gmt_sw)
    with pytest.raises(LanguageError, match="data-gmt has no language 'qu'"):
        xcopa.load_gmt_english(real_data, "qu", "dev")
    with pytest.raises(LanguageError, match=r"^xcopa has no language 'de'; available: et ht id it qu sw ta th tr vi zh en$"):
        xcopa.load_items(real_data, "de", "dev")
    with pytest.raises(UsageError, match="xcopa has no split 'val'"):
        xcopa.load_items(real_data, "et", "val")


def test_xnli(all_items):
    ids = {s: [it.id for it in all_items["xnli", s]["en"]] for s in xnli.SPLITS}
    assert ids["dev"] == [f"xnli/{i}" for i in range(200)]
    assert ids["train"] == [f"xnli/{i}" for i in range(200, 1490)]
    assert ids["test"] == [f"xnli/{i}" for i in range(1490, 2490)]
    everything = [it for s in xnli.SPLITS for it in all_items["xnli", s]["en"]]
    assert Counter(it.answer for it in everything) == {0: 830, 1: 830, 2: 830}
    first = all_items["xnli", "dev"]["en"][0]
    assert first.fields["premise"] == "And he said, Mama, I'm home." and first.fields["label_name"] == xnli.LABELS[first.answer]
    assert all("\r" not in it.fields["hypothesis"] for it in everything)


def test_xquad(all_items, real_data):
    for split, arts in xquad.ARTICLES.items():
        for lang in ("en", "ar", "zh"):
            items = all_items["xquad", split][lang]
            assert {it.fields["article"] for it in items} == set(arts)
            for it in items:
                ctx = it.fields["context"]
                assert not ctx.startswith("\ufeff")
                assert it.id == f"xquad/{it.fields['qid']}"
                for a in it.fields["answers"]:
                    assert ctx[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]
                assert it.answer == [a["text"] for a in it.fields["answers"]]
    assert all_items["xquad", "dev"]["en"][0].id == "xquad/56beb4343aeaaa14008c925b"
    # articles 5-9 are parallel text only, never items
    para = load_xquad_paragraphs(real_data, ["en"])
    used = {f"xquad/{it.fields['article']}/{it.fields['paragraph']}" for s in xquad.SPLITS for it in all_items["xquad", s]["en"]}
    assert not used & set(para.ids)


def test_limit_and_frozen(real_data):
    items = xnli.load_items(real_data, "deu", "dev", limit=5)
    assert [it.id for it in items] == [f"xnli/{i}" for i in range(5)] and items[0].lang == "de"
    with pytest.raises(dataclasses.FrozenInstanceError):
        items[0].answer = 1  # type: ignore[misc]
    with pytest.raises(UsageError):
        xnli.load_items(real_data, "de", "dev", limit=0)
    with pytest.raises(LanguageError, match="unknown language code 'xx'"):
        xnli.load_items(real_data, "xx", "dev")
    with pytest.raises(LanguageError, match="mgsm has no language 'it'"):
        mgsm.load_items(real_data, "it", "dev")


def test_data_files_hash(real_data):
    for name, mod in TASKS.items():
        for split in mod.splits:
            files = mod.data_files(mod.langs[-1], split)
            assert all((real_data / f).is_file() for f in files)
            assert len(data_hash(real_data, files)) == 64
    assert xcopa.data_files("en", "dev") == ["xcopa/data-gmt/et/val.et.jsonl", "xcopa/data/zh/val.zh.jsonl"]


# ---------------------------------------------------------------------------------------------
# synthetic error paths


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


def test_missing_files(tmp_path):
    for name, mod in TASKS.items():
        lang = mod.langs[0]
        with pytest.raises(DataError, match="does not exist"):
            mod.load_items(tmp_path, lang, list(mod.splits)[-1])


def test_mgsm_malformed(tmp_path):
    good = "".join(f"question {i}\t{i}\n" for i in range(250))
    _write(tmp_path / "mgsm/mgsm_de.tsv", good)
    assert len(mgsm.load_items(tmp_path, "de", "test")) == 200
    _write(tmp_path / "mgsm/mgsm_de.tsv", good.replace("question 3\t3", "question 3\t3\textra"))
    with pytest.raises(DataError, match="line 4 has 3 tab-separated fields"):
        mgsm.load_items(tmp_path, "de", "dev")
    _write(tmp_path / "mgsm/mgsm_de.tsv", good.replace("question 60\t60", "question 60\tsixty"))
    with pytest.raises(DataError, match="not an integer"):
        mgsm.load_items(tmp_path, "de", "test")
    _write(tmp_path / "mgsm/mgsm_de.tsv", good[: good.index("question 200")])
    with pytest.raises(DataError, match="expected 250"):
        mgsm.load_items(tmp_path, "de", "dev")
    _write(tmp_path / "mgsm/mgsm_de.tsv", b"\xff\xfe bad bytes\t1\n")
    with pytest.raises(DataError, match="not UTF-8"):
        mgsm.load_items(tmp_path, "de", "dev")
    _write(tmp_path / "mgsm/mgsm_exemplars.json", "{not json")
    with pytest.raises(DataError, match="malformed JSON"):
        mgsm.load_items(tmp_path, "de", "train")
    _write(tmp_path / "mgsm/mgsm_exemplars.json", json.dumps({"MGSM_EXEMPLARS": {}}))
    with pytest.raises(DataError, match="malformed"):
        mgsm.load_items(tmp_path, "de", "train")


def test_xnli_malformed(tmp_path):
    good = "".join(f"p{i}\th{i}\t{['entailment', 'neutral', 'contradiction'][i % 3]}\r\n" for i in range(2490))
    _write(tmp_path / "xnli/dev-de.tsv", good)
    items = xnli.load_items(tmp_path, "de", "dev")
    assert len(items) == 200 and items[1].answer == 1 and items[2].fields["label_name"] == "contradiction"
    _write(tmp_path / "xnli/dev-de.tsv", good.replace("p5\th5\tcontradiction", "p5\th5\tmaybe"))
    with pytest.raises(DataError, match="label 'maybe'"):
        xnli.load_items(tmp_path, "de", "dev")
    _write(tmp_path / "xnli/dev-de.tsv", good.replace("p7\th7\t", "p7 h7\t"))
    with pytest.raises(DataError, match="expected 3"):
        xnli.load_items(tmp_path, "de", "dev")


def _xcopa_file(n: int, question="effect", label=1) -> str:
    return "".join(
        json.dumps({"premise": f"p{i}", "choice1": "a", "choice2": "b", "question": question, "label": label,
                    "idx": i, "changed": False}) + "\r\n"
        for i in range(n)
    )


def test_xcopa_malformed(tmp_path):
    _write(tmp_path / "xcopa/data/zh/val.zh.jsonl", _xcopa_file(100))
    _write(tmp_path / "xcopa/data/th/val.th.jsonl", _xcopa_file(100, question="cause"))
    items = xcopa.load_items(tmp_path, "th", "dev")
    assert len(items) == 100 and items[0].fields["question"] == "effect" and items[0].fields["question_file"] == "cause"
    _write(tmp_path / "xcopa/data/th/val.th.jsonl", _xcopa_file(100, label=0))
    with pytest.raises(DataError, match="misaligned"):
        xcopa.load_items(tmp_path, "th", "dev")
    _write(tmp_path / "xcopa/data/th/val.th.jsonl", _xcopa_file(99))
    with pytest.raises(DataError, match="expected 100"):
        xcopa.load_items(tmp_path, "th", "dev")
    _write(tmp_path / "xcopa/data/th/val.th.jsonl", "{broken\r\n" + _xcopa_file(99))
    with pytest.raises(DataError, match="line 1 is malformed JSON"):
        xcopa.load_items(tmp_path, "th", "dev")
    with pytest.raises(DataError, match="does not exist"):
        xcopa.load_items(tmp_path, "en", "dev")


def test_xquad_malformed(tmp_path):
    _write(tmp_path / "xquad/xquad.de.json", "{")
    with pytest.raises(DataError, match="malformed JSON"):
        xquad.load_items(tmp_path, "de", "dev")
    _write(tmp_path / "xquad/xquad.de.json", json.dumps({"data": [{"title": "t", "paragraphs": []}] * 3}))
    with pytest.raises(DataError, match="expected 48"):
        xquad.load_items(tmp_path, "de", "dev")
    art = {"title": "t", "paragraphs": [{"context": "abc", "qas": [{"id": "q", "question": "?", "answers": [{"text": "zz", "answer_start": 0}]}]}]}
    _write(tmp_path / "xquad/xquad.de.json", json.dumps({"data": [art] * 48}))
    with pytest.raises(DataError, match="answer_start"):
        xquad.load_items(tmp_path, "de", "dev")
    _write(tmp_path / "xquad/xquad.de.json", json.dumps({"data": [{"title": "t"}] * 48}))
    with pytest.raises(DataError, match="SQuAD"):
        xquad.load_items(tmp_path, "de", "dev")
