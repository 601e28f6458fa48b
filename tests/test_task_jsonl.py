"""User tasks in the JSONL format: the spec, the records, the splits, the errors, and a full run.

Every task here is written into a temporary directory by the test itself, as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from xlsteer.errors import DataError, LanguageError, UsageError, XlsteerError
from xlsteer.evaluation.pairing import compare_runs
from xlsteer.evaluation.runner import run_task
from xlsteer.evaluation.tasks.jsonl import build_spec
from xlsteer.evaluation.tasks.jsonl_format import describe_ranges, parse_ranges
from xlsteer.evaluation.tasks.spec import get_task, resolve_task, unregister_task
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model

LANGS = ("en", "sw", "de")


def mc_records(lang: str, n: int = 6) -> list[dict]:
    return [{"context": f"[{lang}] Which colour is item {i}?", "choices": [f"red {i}", f"blue {i}", f"green {i}"],
             "gold": i % 3} for i in range(n)]


def gen_records(lang: str, n: int = 6) -> list[dict]:
    return [{"prompt": f"[{lang}] What is {i} plus {i}? Answer:", "answer": 2 * i} for i in range(n)]


def write_task(root: Path, spec: dict[str, Any], records: dict[str, list[dict]], name: str = "spec.yaml") -> Path:
    """A spec YAML and one JSONL file per language under ``root`` (paths relative to the YAML)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for lang, recs in records.items():
        files[lang] = f"data/{lang}.jsonl"
        (root / "data").mkdir(exist_ok=True)
        (root / files[lang]).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs),
                                        encoding="utf-8")
    path = root / name
    path.write_text(yaml.safe_dump({**spec, "files": spec.get("files", files)}, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def mc_task(tmp_path):
    path = write_task(tmp_path, {"name": "colours", "kind": "multiple_choice", "parallel": True,
                                 "splits": {"dev": "0-1", "test": "2-"}},
                      {lang: mc_records(lang) for lang in LANGS})
    yield path
    unregister_task("colours")


# ---- the spec and its items ---------------------------------------------------------------------------


def test_multiple_choice_items_pair_by_id_across_languages(mc_task):
    [spec] = resolve_task(str(mc_task))
    assert get_task("colours") is spec and spec.langs == LANGS and spec.kind == "choice"
    assert spec.dev_split == "dev" and set(spec.splits) == {"dev", "test"}
    assert spec.splits["test"] == "records 2 to the end (0-based)"
    assert [m.name for m in spec.metrics] == ["acc", "acc_norm"] and spec.main == "acc"
    test = {lang: spec.load_items(None, lang, "test") for lang in LANGS}
    assert [it.id for it in test["en"]] == ["colours/2", "colours/3", "colours/4", "colours/5"]
    assert all([it.id for it in test[lang]] == [it.id for it in test["en"]] for lang in LANGS)
    assert [it.id for it in spec.load_items(None, "sw", "dev")] == ["colours/0", "colours/1"]
    assert len(spec.load_items(None, "de", "test", 2)) == 2
    req = spec.template().render(test["sw"][0])
    assert req.kind == "choice" and req.context == "[sw] Which colour is item 2?"
    assert req.choices == (" red 2", " blue 2", " green 2") and test["sw"][0].answer == 2
    assert spec.source["kind"] == "jsonl" and len(spec.source["sha256"]) == 64
    assert all(Path(f).is_absolute() for f in spec.data_files("sw", "test"))


def test_records_with_ids_align_in_any_order(tmp_path):
    recs = {lang: [{**r, "id": f"q{i}"} for i, r in enumerate(mc_records(lang, 4))] for lang in ("en", "sw")}
    recs["sw"].reverse()
    spec = build_spec(write_task(tmp_path, {"kind": "multiple_choice"}, recs, "ids.yaml"))
    assert spec.name == "ids" and spec.dev_split is None and list(spec.splits) == ["test"]
    en, sw = (spec.load_items(None, lang, "test") for lang in ("en", "sw"))
    assert [it.id for it in sw] == [it.id for it in en] == ["ids/q0", "ids/q1", "ids/q2", "ids/q3"]
    assert [it.fields["context"] for it in sw][0] == "[sw] Which colour is item 0?"


def test_split_field_and_target_delimiter(tmp_path):
    recs = {lang: [{**r, "part": ("dev" if i < 2 else "test" if i < 5 else "train")}
                   for i, r in enumerate(mc_records(lang))] for lang in ("en", "sw")}
    spec = build_spec(write_task(tmp_path, {"kind": "multiple_choice", "split_field": "part",
                                            "target_delimiter": ""}, recs))
    assert set(spec.splits) == {"dev", "test", "train"} and spec.baselines.icl_split == "train"
    assert [len(spec.load_items(None, "sw", s)) for s in ("dev", "test", "train")] == [2, 3, 1]
    assert spec.template().render(spec.load_items(None, "en", "test")[0]).choices[0] == "red 2"


@pytest.mark.parametrize("metric, text, correct, scores", [
    ("numeric", "It is 4.", True, {"em": 1.0}),
    ("numeric", "It is 5.", False, {"em": 0.0}),
])
def test_generation_numeric(tmp_path, metric, text, correct, scores):
    spec = build_spec(write_task(tmp_path, {"kind": "generation", "metric": metric, "max_new_tokens": 7,
                                            "stop": ["\n", "Q:"], "splits": {"test": "0-5"}},
                                 {lang: gen_records(lang) for lang in ("en", "sw")}))
    item = spec.load_items(None, "sw", "test")[2]
    req = spec.template().render(item)
    assert req.kind == "generate" and req.max_new_tokens == 7 and req.stop == ("\n", "Q:")
    s = spec.score(item, text)
    assert s.correct is correct and dict(s.scores) == scores and spec.main == "em"


def test_generation_exact_and_f1(tmp_path):
    recs = {lang: [{"prompt": f"Capital of {c}?", "answer": a} for c, a in
                   (("Kenya", ["Nairobi", "Nairobi City"]), ("Peru", "Lima"))] for lang in ("en", "sw")}
    exact = build_spec(write_task(tmp_path / "a", {"kind": "generation", "metric": "exact"}, recs))
    f1 = build_spec(write_task(tmp_path / "b", {"kind": "generation", "metric": "f1"}, recs))
    nairobi = exact.load_items(None, "en", "test")[0]
    assert exact.score(nairobi, " nairobi city.\n").correct
    assert not exact.score(nairobi, "Nairobi is the capital").correct
    s = f1.score(f1.load_items(None, "en", "test")[0], "Nairobi is the capital")
    # F1 is the best over the golds: "nairobi" against the 3 tokens nairobi/is/capital
    assert f1.main == "f1" and s.scores["em"] == 0.0 and s.scores["f1"] == pytest.approx(0.5)
    assert not exact.comparable_predictions and exact.baselines.translate_fields == ("prompt",)


def test_edited_records_change_the_template_version(tmp_path):
    recs = {lang: mc_records(lang, 3) for lang in ("en", "sw")}
    before = build_spec(write_task(tmp_path, {"kind": "multiple_choice"}, recs)).template().version
    recs["sw"][1]["context"] = "changed"
    after = build_spec(write_task(tmp_path, {"kind": "multiple_choice"}, recs)).template().version
    assert before != after


def test_range_rules():
    assert parse_ranges("0-49") == [(0, 49)] and parse_ranges("50-") == [(50, None)]
    assert parse_ranges("3, 7-9") == [(3, 3), (7, 9)]
    assert describe_ranges("0-4,9-") == "records 0-4, 9 to the end (0-based)"
    for bad in ("a-b", "5-2", "-3", ""):
        with pytest.raises(ValueError):
            parse_ranges(bad)


def test_docs_list_the_built_in_tasks_as_registered():
    """docs/tasks.md's table holds each built-in task's kind, languages, split rules and metrics."""
    from xlsteer.evaluation.tasks.spec import BUILTIN

    text = (Path(__file__).resolve().parents[1] / "docs" / "tasks.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for name in BUILTIN:
        spec, row = get_task(name), rows[name]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == spec.kind and cells[2] == " ".join(spec.langs)
        assert cells[3] == "; ".join(f"{s}: {rule}" for s, rule in spec.splits.items())
        assert cells[4] == ", ".join(m.name for m in spec.metrics) and cells[4].startswith(spec.main)
        assert cells[5] == (spec.tie_break or "–")


# ---- errors: one line naming the file, the line and the fix -------------------------------------------


def _error(tmp_path: Path, spec: dict, records: dict, raw: dict[str, str] | None = None) -> str:
    path = write_task(tmp_path, spec, records)
    for rel, text in (raw or {}).items():
        (tmp_path / rel).write_text(text, encoding="utf-8")
    with pytest.raises(XlsteerError) as e:
        build_spec(path)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


MC = {"kind": "multiple_choice"}


@pytest.mark.parametrize("spec, fragment", [
    ({**MC, "splits": {"dev": "0-3", "test": "3-"}}, "the dev and test ranges overlap"),
    ({**MC, "splits": {"dev": "0-1"}}, "declare a test split"),
    ({**MC, "splits": {"test": "2-"}, "split_field": "s"}, "not both"),
    ({**MC, "splits": {"test": "0-99"}}, "asks for record 99"),
    ({"kind": "generation"}, "needs metric: numeric, exact or f1"),
    ({**MC, "metric": "f1"}, "metric applies to generation tasks"),
    ({**MC, "kind": "ranking"}, "kind"),
    ({**MC, "shuffle": True}, "unknown key"),
    ({**MC, "name": "has space"}, "name"),
    ({**MC, "name": "xcopa"}, "is a built-in task"),
    ({**MC, "max_new_tokens": 0}, "max_new_tokens"),
])
def test_spec_errors(tmp_path, spec, fragment):
    msg = _error(tmp_path, spec, {lang: mc_records(lang) for lang in ("en", "sw")})
    assert fragment in msg and ("spec.yaml" in msg or "en.jsonl" in msg)


def test_spec_errors_name_the_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("kind: multiple_choice\nfiles: {en: a.jsonl}\nsplits: {test: \"x\"}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.yaml line 3: splits: cannot read the range 'x'"):
        build_spec(path)
    path.write_text("kind: multiple_choice\ndescription: 2001-13-45\n", encoding="utf-8")  # not a date
    with pytest.raises(DataError, match=r"s\.yaml: month must be in 1\.\.12; quote the value"):
        build_spec(path)
    path.write_text("kind: [unclosed\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.yaml line \d+: .*fix the YAML"):
        build_spec(path)
    with pytest.raises(UsageError, match="does not exist"):
        build_spec(tmp_path / "missing.yaml")


@pytest.mark.parametrize("line, fragment", [
    ('{"context": "c", "choices": ["a"], "gold": 0}', "at least 2 strings"),
    ('{"context": "c", "choices": ["a", "b"], "gold": 2}', "'gold' must be the index of the right choice, 0..1"),
    ('{"context": "c", "choices": ["a", "b"], "gold": true}', "'gold'"),
    ('{"context": 3, "choices": ["a", "b"], "gold": 0}', "'context' must be a string"),
    ('{"context": "c", "choices": ["a", "b"], "gold": 0, "id": 1}', "give every record an id or none"),
    ('[1, 2]', "expected a JSON object"),
    ('{"context": "c", ', "malformed JSON"),
    ('{"context": "c", "choices": ["a", "b"], "gold": ' + "9" * 5000 + "}", "malformed JSON (Exceeds the limit"),
])
def test_record_errors_name_file_and_line(tmp_path, line, fragment):
    good = '{"context": "c", "choices": ["a", "b"], "gold": 0}\n'
    msg = _error(tmp_path, MC, {"en": [], "sw": []}, {"data/en.jsonl": good + line + "\n", "data/sw.jsonl": good})
    assert fragment in msg and "en.jsonl line 2" in msg


def test_repeated_ids(tmp_path):
    line = '{"context": "c", "choices": ["a", "b"], "gold": 0, "id": "q1"}\n'
    msg = _error(tmp_path, MC, {"en": [], "sw": []}, {"data/en.jsonl": line + line, "data/sw.jsonl": line})
    assert "en.jsonl line 2: id 'q1' repeats line 1" in msg


def test_misaligned_languages(tmp_path):
    recs = {"en": mc_records("en", 3), "sw": mc_records("sw", 3)}
    recs["sw"][1]["gold"] = 0
    assert "the same item must have the same gold" in _error(tmp_path / "b", {**MC, "parallel": True}, recs)
    msg = _error(tmp_path / "c", {**MC, "files": {"xx-nope": "data/en.jsonl"}}, recs)
    assert "files:" in msg
    msg = _error(tmp_path / "d", {"kind": "generation", "metric": "numeric"},
                 {"en": [{"prompt": "p", "answer": "no number"}]})
    assert "'answer' must be a number" in msg


def test_a_task_without_dev_split_cannot_be_swept(tmp_path):
    from xlsteer.evaluation.sweep import sweep_config

    spec = build_spec(write_task(tmp_path, MC, {lang: mc_records(lang) for lang in ("en", "sw")}))
    assert spec.dev_split is None
    with pytest.raises(UsageError, match="has no dev split"):
        sweep_config(spec)


def test_unknown_language_and_split(mc_task):
    spec = build_spec(mc_task)
    with pytest.raises(LanguageError):
        spec.load_items(None, "fr", "test")
    with pytest.raises(UsageError, match="has no split 'train'"):
        spec.load_items(None, "en", "train")


# ---- fuzz: malformed specs and records never give a traceback ---------------------------------------

from test_fuzz_readers import FAST, LONG, mutated_bytes, mutated_json  # noqa: E402


def _loads_or_one_line(path: Path) -> None:
    try:
        build_spec(path)
    except XlsteerError as e:
        msg = str(e).strip()
        assert msg and "\n" not in msg and len(msg) < 1000, repr(msg)


YAML_VALUES = ["2001-13-45", "2001-02-03", "!!binary xx", "!!python/name:os.system", "&a [*a]", "*nowhere",
               "{? [a, b]: 1}", ".inf", "0x1F", "1e999", "~", "yes", "[[[[", "'unclosed", "|\n  block", "!custom 1"]


def _fuzz_spec(root: Path, data: Any) -> None:
    import yaml

    base = {"name": "fz", "kind": "multiple_choice", "files": {"en": "en.jsonl", "sw": "sw.jsonl"},
            "splits": {"dev": "0-1", "test": "2-"}, "target_delimiter": " "}
    for lang in ("en", "sw"):
        (root / f"{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc_records(lang, 4)))
    path = root / "fz.yaml"
    doc = data.draw(mutated_json(base))  # written as YAML's flow style (JSON), which any depth survives
    text = json.dumps(doc, ensure_ascii=False) if data.draw(st.booleans()) else yaml.safe_dump(base)
    if data.draw(st.booleans()):  # a value only YAML can write: dates, tags, anchors, complex keys
        key = data.draw(st.sampled_from(sorted(base)))
        raw = data.draw(st.sampled_from(YAML_VALUES))
        text = "\n".join(f"{key}: {raw}" if line.startswith(f"{key}:") else line for line in text.splitlines())
    path.write_bytes(data.draw(mutated_bytes(text.encode("utf-8"))) if data.draw(st.booleans()) else text.encode())
    _loads_or_one_line(path)


def _fuzz_records(root: Path, data: Any) -> None:
    (root / "fz.yaml").write_text("kind: multiple_choice\nfiles: {en: en.jsonl, sw: sw.jsonl}\n"
                                  "splits: {dev: \"0\", test: \"1-\"}\n")
    recs = mc_records("en", 3)
    line = data.draw(st.integers(0, 2))
    recs[line] = data.draw(mutated_json(recs[line]))
    raw = "".join(json.dumps(r) + "\n" for r in recs).encode()
    (root / "en.jsonl").write_bytes(data.draw(mutated_bytes(raw)) if data.draw(st.booleans()) else raw)
    (root / "sw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc_records("sw", 3)))
    _loads_or_one_line(root / "fz.yaml")


@FAST
@given(data=st.data(), which=st.sampled_from(["spec", "records"]))
def test_fuzz_jsonl_task(tmp_path_factory, data, which):
    root = tmp_path_factory.mktemp("fz")
    (_fuzz_spec if which == "spec" else _fuzz_records)(root, data)


@pytest.mark.slow
@pytest.mark.fuzz
@LONG
@given(data=st.data(), which=st.sampled_from(["spec", "records"]))
def test_fuzz_jsonl_task_long(tmp_path_factory, data, which):
    root = tmp_path_factory.mktemp("fz")
    (_fuzz_spec if which == "spec" else _fuzz_records)(root, data)


# ---- end to end: steered against unsteered, the same statistics as a built-in task ------------------


def test_user_task_gets_paired_statistics(mc_task):
    lm = tiny_model("llama")
    [spec] = resolve_task(str(mc_task))
    g = torch.Generator().manual_seed(3)
    iv = SteeringVector(sites=[Site(1, "resid_post")],
                        tensors={vector_key(1): 8 * torch.randn(2, lm.hidden_size, generator=g)},
                        params={"normalize": "none"}, languages=["sw", "de"], anchor="en", strength=1.0)
    base = run_task(lm, "colours", list(LANGS), n_boot=200)
    steered = run_task(lm, "colours", list(LANGS), iv, n_boot=200)
    assert base["task"] == "colours" and base["task_spec"]["source"]["kind"] == "jsonl"
    assert base["per_lang"]["sw"]["n"] == 4 and base["per_lang"]["sw"]["consistency"] is not None
    for lang in LANGS:
        m = base["per_lang"][lang]["metrics"]["acc"]
        assert m["ci_low"] <= m["mean"] <= m["ci_high"]
    c = compare_runs(base, steered)
    for lang in ("sw", "de"):
        t = c["per_lang"][lang]["metrics"]["acc"]
        assert 0 <= t["p"] <= t["p_holm"] <= 1 and t["mde"] > 0
    assert c["per_lang"]["sw"]["continuous"]["margin"]["diff"] != 0.0  # the vector did act on sw
    assert c["per_lang"]["en"]["continuous"]["margin"]["diff"] == 0.0  # and never on the anchor


# ---- the command line -------------------------------------------------------------------------------------


def model_and_vector(root: Path, langs=("sw", "de")) -> tuple[str, str]:
    """A tiny model saved as a folder and a random steering vector for ``langs`` (files a user would pass)."""
    lm = tiny_model("llama")
    lm.model.save_pretrained(root / "tiny")
    lm.tokenizer.save_pretrained(root / "tiny")
    g = torch.Generator().manual_seed(3)
    iv = SteeringVector(sites=[Site(1, "resid_post")],
                        tensors={vector_key(1): 8 * torch.randn(len(langs), lm.hidden_size, generator=g)},
                        params={"normalize": "none"}, languages=list(langs), anchor="en", strength=1.0,
                        meta={"model_fingerprint": lm.fingerprint})
    return str(root / "tiny"), str(iv.save(root / "v.safetensors"))


def check_cli_run(task_args: list[str], root: Path, capsys, langs: str = "en,sw,de") -> dict:
    """``xlsteer eval ... --intervention V -o r.json`` then ``xlsteer table r.json``; the results file."""
    from xlsteer.cli import main

    model, vector = model_and_vector(root)
    out = root / "r.json"
    assert main(["eval", "--model", model, *task_args, "--langs", langs, "--intervention", vector,
                 "--limit", "3", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["table", str(out)]) == 0
    table = capsys.readouterr().out
    assert "p Holm" in table and "MDE" in table and "[95% CI]" in table
    r = json.loads(out.read_text(encoding="utf-8"))
    for lang in ("sw", "de"):
        t = r["comparison"]["per_lang"][lang]["metrics"][r["metrics"]["main"]]
        assert {"p", "p_holm", "mde", "diff_ci_low", "diff_ci_high"} <= set(t) and t["n"] == 3
        assert f"\n| {lang} " in table
    return r


def test_cli_eval_and_table_on_a_jsonl_spec(mc_task, tmp_path, capsys):
    r = check_cli_run(["--task", str(mc_task)], tmp_path, capsys)
    assert r["task"] == "colours" and r["split"] == "test" and r["task_spec"]["source"]["kind"] == "jsonl"


# ---- the shipped model ----------------------------------------------------------------------------------

# (English, Swahili, German country name; capital in English / Swahili, German)
CAPITALS = [
    ("France", "Ufaransa", "Frankreich", "Paris", "Paris"), ("Germany", "Ujerumani", "Deutschland", "Berlin", "Berlin"),
    ("Kenya", "Kenya", "Kenia", "Nairobi", "Nairobi"), ("Japan", "Japani", "Japan", "Tokyo", "Tokio"),
    ("China", "China", "China", "Beijing", "Peking"), ("Egypt", "Misri", "Ägypten", "Cairo", "Kairo"),
    ("Italy", "Italia", "Italien", "Rome", "Rom"), ("Spain", "Hispania", "Spanien", "Madrid", "Madrid"),
    ("Russia", "Urusi", "Russland", "Moscow", "Moskau"), ("Uganda", "Uganda", "Uganda", "Kampala", "Kampala"),
    ("Nigeria", "Nigeria", "Nigeria", "Abuja", "Abuja"), ("India", "India", "Indien", "New Delhi", "Neu-Delhi"),
    ("Canada", "Kanada", "Kanada", "Ottawa", "Ottawa"), ("Greece", "Ugiriki", "Griechenland", "Athens", "Athen"),
    ("Ethiopia", "Ethiopia", "Äthiopien", "Addis Ababa", "Addis Abeba"), ("Brazil", "Brazil", "Brasilien", "Brasília",
                                                                          "Brasília"),
]
PROMPTS = {"en": "The capital of {} is", "sw": "Mji mkuu wa {} ni", "de": "Die Hauptstadt von {} ist"}


def capitals_records(lang: str) -> list[dict]:
    """Three-way choice: the capital and two other countries' capitals, the gold at position i % 3."""
    col = {"en": 0, "sw": 1, "de": 2}[lang]
    cap = 4 if lang == "de" else 3
    out = []
    for i, row in enumerate(CAPITALS):
        wrong = [CAPITALS[(i + k) % len(CAPITALS)][cap] for k in (5, 11)]
        choices = wrong[:i % 3] + [row[cap]] + wrong[i % 3:]
        out.append({"id": row[0].lower(), "context": PROMPTS[lang].format(row[col]), "choices": choices,
                    "gold": i % 3})
    return out


@pytest.mark.slow
def test_gemma_user_jsonl_task_cli(tmp_path, capsys):
    import time

    from xlsteer.stats import collect_statistics
    from xlsteer.cli import main
    from xlsteer.interventions.vector import fit_diffmean
    from xlsteer.models.loading import load_model

    t0 = time.perf_counter()
    spec = write_task(tmp_path, {"name": "capitals", "kind": "multiple_choice", "splits": {"dev": "0-3", "test": "4-"}},
                      {lang: capitals_records(lang) for lang in ("en", "sw", "de")}, "capitals.yaml")
    lm = load_model("gemma3-270m")
    layer = 6
    stats = collect_statistics(lm, langs=["en", "sw", "de"], sites=[Site(layer, "resid_post")], corpus="ntrex",
                               split="fit", limit=60)
    vector = fit_diffmean(stats, [layer], ["sw", "de"], anchor="en").save(tmp_path / "diffmean.safetensors")
    del lm
    out = tmp_path / "r.json"
    assert main(["eval", "--model", "gemma3-270m", "--task", str(spec), "--intervention", str(vector),
                 "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["table", str(out)]) == 0
    table = capsys.readouterr().out
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["task"] == "capitals" and r["langs"] == ["en", "sw", "de"]
    assert r["item_ids"]["per_lang"] == {"en": 12, "sw": 12, "de": 12}
    en = [x["logprobs"] for x in r["items"] if x["lang"] == "en"]
    assert en == [x["logprobs"] for x in r["baseline"]["items"] if x["lang"] == "en"]  # the anchor is not steered
    assert r["per_lang"]["en"]["metrics"]["acc"]["mean"] > 1 / 3  # the model knows some capitals
    for lang in ("sw", "de"):
        assert {"p", "p_holm", "mde"} <= set(r["comparison"]["per_lang"][lang]["metrics"]["acc"])
    print(f"\n{table}\n(capitals, gemma3-270m, {time.perf_counter() - t0:.0f} s)", flush=True)


def test_cli_sweep_selects_on_the_dev_split_and_refuses_a_task_without_one(mc_task, tmp_path, capsys):
    from xlsteer.cli import main

    model, vector = model_and_vector(tmp_path)
    out = tmp_path / "sweep.json"
    assert main(["sweep", "--model", model, "--task", str(mc_task), "--intervention", vector, "--alphas", "1",
                 "-o", str(out)]) == 0
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["task"] == "colours" and r["split"] == "dev" and r["item_ids"]["per_lang"]["sw"] == 2
    no_dev = write_task(tmp_path / "nodev", MC, {lang: mc_records(lang) for lang in ("en", "sw")})
    capsys.readouterr()
    assert main(["sweep", "--model", model, "--task", str(no_dev), "--intervention", vector,
                 "-o", str(tmp_path / "s2.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no dev split" in err and "\n" not in err


def test_an_output_never_overwrites_the_task_spec_or_its_data(mc_task, tmp_path, capsys):
    """The spec file and its JSONL files are inputs of eval, sweep and compare like any other."""
    from xlsteer.cli import main

    model, vector = model_and_vector(tmp_path / "m")
    data = mc_task.parent / "data" / "en.jsonl"
    before = {p: p.read_bytes() for p in (mc_task, data)}
    for target in (mc_task, data):
        for argv in (["eval", "--intervention", vector, "-o", str(target)],
                     ["sweep", "--intervention", vector, "--layers", "1", "-o", str(target)]):
            capsys.readouterr()
            code = main([*argv[:1], "--model", model, "--task", str(mc_task), *argv[1:]])
            err = capsys.readouterr().err
            assert code == 2 and "is the input file" in err and err.count("\n") == 1, err
    capsys.readouterr()
    assert main(["compare", "--model", model, "--task", str(mc_task), "--methods", "zero-shot",
                 "--translation-cache", str(data), "-o", str(tmp_path / "cmp")]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before
