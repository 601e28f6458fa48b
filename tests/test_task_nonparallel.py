"""Benchmarks as they are: each language its own items, counts and splits (a JSONL spec), one
language without a dev split, partial scoring, and the whole pipeline (eval, sweep, table, report)
on such a task. Items pair across languages only where they are declared or detected parallel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xlsteer.errors import DataError, UsageError
from xlsteer.evaluation.significance import holm
from xlsteer.evaluation.tasks.jsonl import build_spec
from xlsteer.evaluation.tasks.spec import unregister_task

# Winograd-style items: (sentence with "_", the two options, gold index); each language its own.
PRONOUNS = {
    "en": [("The trophy does not fit in the suitcase because _ is too big.", ("the trophy", "the suitcase"), 0),
           ("The trophy does not fit in the suitcase because _ is too small.", ("the trophy", "the suitcase"), 1),
           ("Anna thanked Maria because _ had helped her.", ("Anna", "Maria"), 1),
           ("The cat chased the mouse until _ was tired.", ("the cat", "the mouse"), 0),
           ("Tom gave Bill his coat because _ was cold.", ("Tom", "Bill"), 1),
           ("The city council refused the protesters a permit because _ feared violence.",
            ("the council", "the protesters"), 0),
           ("The ball broke the window because _ was fragile.", ("the ball", "the window"), 1),
           ("Paul tried to call George, but _ was not available.", ("Paul", "George"), 1),
           ("The dog bit the man because _ was angry.", ("the dog", "the man"), 0),
           ("Sara lent Lucy money because _ was poor.", ("Sara", "Lucy"), 1)],
    "sw": [("Mpira ulivunja dirisha kwa sababu _ lilikuwa dhaifu.", ("mpira", "dirisha"), 1),
           ("Paka alimfukuza panya mpaka _ akachoka.", ("paka", "panya"), 0),
           ("Juma alimpa Ali koti kwa sababu _ alikuwa na baridi.", ("Juma", "Ali"), 1),
           ("Mama alimsaidia mtoto kwa sababu _ alikuwa mgonjwa.", ("mama", "mtoto"), 1),
           ("Mbwa alimng'ata mtu kwa sababu _ alikuwa na hasira.", ("mbwa", "mtu"), 0),
           ("Mwalimu alimsifu mwanafunzi kwa sababu _ alifaulu.", ("mwalimu", "mwanafunzi"), 1),
           ("Gari liligonga mti kwa sababu _ lilikuwa kasi.", ("gari", "mti"), 0)],
    "yo": [("Ajá lé ológbò títí _ fi rẹ̀.", ("ajá", "ológbò"), 0),
           ("Olú fún Adé ní owó nítorí _ jẹ́ talákà.", ("Olú", "Adé"), 1),
           ("Bọ́ọ̀lù fọ́ fèrèsé nítorí _ kò lágbára.", ("bọ́ọ̀lù", "fèrèsé"), 1),
           ("Ìyá ran ọmọ lọ́wọ́ nítorí _ ń ṣàìsàn.", ("ìyá", "ọmọ"), 1),
           ("Olùkọ́ yin akẹ́kọ̀ọ́ nítorí _ ṣe dáadáa.", ("olùkọ́", "akẹ́kọ̀ọ́"), 1)],
}


def partial_record(lang: str, i: int, sentence: str, options: tuple[str, str], gold: int) -> dict:
    """Partial scoring: each option fills the blank's context; the rest of the sentence is scored."""
    before, after = sentence.split("_")
    return {"id": f"{lang}-{i}", "contexts": [before + o for o in options], "continuation": after.strip(),
            "gold": gold}


def full_record(lang: str, i: int, sentence: str, options: tuple[str, str], gold: int) -> dict:
    """Full-sentence scoring: each choice is the whole sentence with the blank filled."""
    return {"id": f"{lang}-{i}", "context": "Sentence:", "choices": [sentence.replace("_", o) for o in options],
            "gold": gold}


def write_benchmark(root: Path, make=partial_record, name: str = "pronouns", **extra) -> Path:
    """en and sw with a dev and a test file each (other items, other counts); yo with a test file only."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, str]] = {}
    for lang, rows in PRONOUNS.items():
        recs = [make(lang, i, *row) for i, row in enumerate(rows)]
        n_dev = 0 if lang == "yo" else len(recs) // 3
        files[lang] = {}
        for split, part in (("dev", recs[:n_dev]), ("test", recs[n_dev:])):
            if part:
                rel = f"data/{lang}.{split}.jsonl"
                (root / "data").mkdir(exist_ok=True)
                (root / rel).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part),
                                        encoding="utf-8")
                files[lang][split] = rel
    spec = {"name": name, "kind": "multiple_choice", "files": files, **extra}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def bench(tmp_path):
    path = write_benchmark(tmp_path / "bench")
    yield path
    unregister_task("pronouns")


def test_each_language_has_its_own_items_counts_and_splits(bench):
    spec = build_spec(bench)
    assert spec.pairing == "none" and not spec.parallel and spec.langs == ("en", "sw", "yo")
    assert spec.source["parallel"].startswith("not parallel: the languages hold other")
    assert spec.dev_split == "dev" and spec.splits_of("yo") == ("test",) and spec.splits_of("en") == ("dev", "test")
    assert spec.langs_with("dev", ["en", "sw", "yo"]) == ["en", "sw"]
    assert spec.splits["test"].endswith("en 7, sw 5, yo 5") and spec.splits["dev"].endswith("en 3, sw 2, yo none")
    counts = {lang: len(spec.load_items(None, lang, "test")) for lang in spec.langs}
    assert counts == {"en": 7, "sw": 5, "yo": 5}
    assert spec.load_items(None, "yo", "test")[0].id == "pronouns/yo-0"
    assert [m.name for m in spec.metrics] == ["acc"] and spec.template().name == "jsonl-partial"
    req = spec.template().render(spec.load_items(None, "en", "test")[0])
    assert req.contexts == ("The cat chased the mouse until the cat", "The cat chased the mouse until the mouse")
    assert req.choices == (" was tired.",)
    assert spec.describe()["pairing"] == "none" and spec.describe()["lang_splits"]["yo"] == ["test"]
    from xlsteer.evaluation.runner import check_inputs
    from xlsteer.evaluation.config import EvalConfig

    with pytest.raises(UsageError, match="no dev split in yo"):
        check_inputs(spec, ["en", "yo"], EvalConfig(split="dev"))


def test_parallel_is_detected_by_id_or_declared(tmp_path):
    same = {lang: [dict(r, id=f"q{i}") for i, r in enumerate(
        partial_record(lang, i, *row) for i, row in enumerate(PRONOUNS["en"][:4]))] for lang in ("en", "de")}
    from test_task_jsonl import write_task

    detected = build_spec(write_task(tmp_path / "a", {"kind": "multiple_choice"}, same))
    assert detected.pairing == "id" and detected.source["parallel"].startswith("parallel: every language")
    no_ids = {lang: [{k: v for k, v in r.items() if k != "id"} for r in recs] for lang, recs in same.items()}
    assert build_spec(write_task(tmp_path / "b", {"kind": "multiple_choice"}, no_ids)).pairing == "none"
    assert build_spec(write_task(tmp_path / "c", {"kind": "multiple_choice", "parallel": True},
                                 no_ids)).pairing == "id"
    assert build_spec(write_task(tmp_path / "d", {"kind": "multiple_choice", "parallel": False},
                                 same)).pairing == "none"
    clash = {"en": same["en"], "de": [dict(r, gold=1 - r["gold"]) for r in same["de"]]}
    assert build_spec(write_task(tmp_path / "e", {"kind": "multiple_choice"}, clash)).pairing == "none"
    with pytest.raises(DataError, match="same gold"):
        build_spec(write_task(tmp_path / "f", {"kind": "multiple_choice", "parallel": True}, clash))


def test_records_of_one_task_are_scored_one_way(tmp_path):
    from test_task_jsonl import write_task

    mixed = {"en": [partial_record("en", 0, *PRONOUNS["en"][0]), full_record("en", 1, *PRONOUNS["en"][1])]}
    with pytest.raises(DataError, match="one way"):
        build_spec(write_task(tmp_path / "a", {"kind": "multiple_choice"}, mixed))
    both = {"en": [{**partial_record("en", 0, *PRONOUNS["en"][0]), "choices": ["a", "b"]}]}
    with pytest.raises(DataError, match="not both"):
        build_spec(write_task(tmp_path / "b", {"kind": "multiple_choice"}, both))
    bad = {"en": [{**partial_record("en", 0, *PRONOUNS["en"][0]), "contexts": ["only one"]}]}
    with pytest.raises(DataError, match="'contexts' must be a list of at least 2"):
        build_spec(write_task(tmp_path / "c", {"kind": "multiple_choice"}, bad))


@pytest.mark.parametrize("spec, fragment", [
    ({"files": {"en": {"dev": "a.jsonl"}}}, "no test file"),
    ({"files": {"en": {"test": "a.jsonl"}, "sw": "b.jsonl"}}, "not a mix"),
    ({"files": {"en": {"test": "a.jsonl"}}, "splits": {"test": "0-"}}, "leave out splits"),
])
def test_file_per_split_errors(tmp_path, spec, fragment):
    from test_task_jsonl import write_task

    path = write_task(tmp_path, {"kind": "multiple_choice", **spec}, {})
    with pytest.raises(DataError, match=fragment):
        build_spec(path)


def test_a_non_parallel_task_through_eval_sweep_table_and_report(bench, tmp_path, capsys):
    """The whole pipeline on one non-parallel task: other counts per language, yo without dev."""
    from test_task_jsonl import model_and_vector

    from xlsteer.cli import main

    model, vector = model_and_vector(tmp_path / "m", langs=("sw", "yo"))
    run = tmp_path / "run"
    run.mkdir()
    assert main(["eval", "--model", model, "--task", str(bench), "--intervention", vector, "--no-cache",
                 "-o", str(run / "eval.json")]) == 0
    r = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    assert r["item_ids"]["per_lang"] == {"en": 7, "sw": 5, "yo": 5} and r["task_spec"]["pairing"] == "none"
    assert all(r["per_lang"][lang]["consistency"] is None for lang in r["langs"])
    c = r["comparison"]["per_lang"]
    assert [c["sw"]["metrics"]["acc"]["p_holm"], c["yo"]["metrics"]["acc"]["p_holm"]] == \
        holm([c["sw"]["metrics"]["acc"]["p"], c["yo"]["metrics"]["acc"]["p"]])  # Holm over every language, yo too
    capsys.readouterr()
    assert main(["table", str(run / "eval.json")]) == 0
    table = capsys.readouterr().out
    assert "not parallel" in table and "p Holm" in table and "avg non-en" in table

    capsys.readouterr()
    assert main(["sweep", "--model", model, "--task", str(bench), "--intervention", vector, "--alphas", "1,4",
                 "--select", "per-lang", "--no-cache", "-o", str(run / "sweep.json")]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "yo" in line and "no dev items" in line]
    assert notes == ["yo: no dev items — left out of the selection; takes the global choice"]  # said once
    s = json.loads((run / "sweep.json").read_text(encoding="utf-8"))
    assert s["langs"] == ["en", "sw"] and s["left_out"] == {"yo": "no dev items"}
    assert set(s["best_per_lang"]) == {"sw"} and s["item_ids"]["per_lang"] == {"en": 3, "sw": 2}
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("xlsteer eval"))
    assert "--langs en,sw,yo" in command and "--select per-lang" in command
    capsys.readouterr()
    assert main(["eval", "--model", model, "--task", str(bench), "--langs", "en,sw,yo", "--sweep",
                 str(run / "sweep.json"), "--select", "per-lang", "--no-cache", "-o", str(run / "chosen.json")]) == 0
    chosen = json.loads((run / "chosen.json").read_text(encoding="utf-8"))
    assert chosen["selection"]["per_lang"]["yo"]["from"] == "global choice (no dev items in yo)"
    assert main(["table", str(run / "sweep.json")]) == 0
    assert main(["report", str(run), "-o", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.index('id="headline"') < html.index('id="summary-table"')
    assert "not parallel: each language has its own items" in html
    assert "yo: no dev items; left out of the selection" in html


# ---- partial scoring against lm-eval's own multiple-input scoring -------------------------------------------

PARTIAL_LMEVAL = ("output_type: multiple_choice\ndoc_to_text: gold\ndoc_to_choice: contexts\n"
                  "doc_to_target: continuation\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
                  "    higher_is_better: true\n")


def test_partial_scoring_equals_lm_evals_own_scores(tmp_path):
    """The same Winograd-style items as a JSONL spec (contexts + continuation) and as lm-eval
    multiple-input tasks over the same JSONL files, scored by lm-eval's own evaluator with its
    Hugging Face model on the same weights: the same log-likelihood per context and the same acc."""
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from xlsteer.evaluation.runner import run_task
    from xlsteer.testing import tiny_model

    spec_path = write_benchmark(tmp_path / "bench", name="pronouns_lm")
    tasks = tmp_path / "lmeval"
    tasks.mkdir()
    for lang in ("en", "sw"):
        data = spec_path.parent / "data" / f"{lang}.test.jsonl"
        (tasks / f"pron_{lang}.yaml").write_text(
            f"task: pron_{lang}\ndataset_path: json\ndataset_kwargs:\n  cache_dir: {tmp_path / 'hf'}\n"
            f"  data_files:\n    test: {data}\ntest_split: test\n" + PARTIAL_LMEVAL, encoding="utf-8")
    lm = tiny_model("llama")
    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    spec = build_spec(spec_path)
    try:
        ours = run_task(lm, spec, ["en", "sw"])["items"]
        theirs = simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype=float32", tasks=["pron_en", "pron_sw"],
                                 task_manager=TaskManager(include_path=[str(tasks)], include_defaults=False),
                                 log_samples=True, bootstrap_iters=0, batch_size=1, device="cpu")
    finally:
        unregister_task("pronouns_lm")
    for lang in ("en", "sw"):
        mine = [r for r in ours if r["lang"] == lang]
        samples = sorted(theirs["samples"][f"pron_{lang}"], key=lambda s: s["doc_id"])
        assert len(samples) == len(mine) > 0
        for r, s in zip(mine, samples):
            assert r["id"] == f"pronouns_lm/{s['doc']['id']}"
            assert r["logprobs"] == pytest.approx([x[0][0] for x in s["resps"]], abs=1e-4)
            assert r["scores"]["acc"] == s["acc"]


# ---- user files anywhere --------------------------------------------------------------------------------------


def _cache_state(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


def test_a_spec_is_the_same_task_however_its_path_is_spelled(bench, tmp_path, monkeypatch, capsys):
    """Relative (from another directory), absolute and symlinked spellings of a spec give the same
    template version and data hash, and the second and third runs read every score from the cache."""
    from test_task_jsonl import model_and_vector

    from xlsteer.cli import main

    model, vector = model_and_vector(tmp_path / "m", langs=("sw", "yo"))
    cache = tmp_path / "cache"
    link = tmp_path / "elsewhere"
    link.symlink_to(bench.parent, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    spellings = [str(Path("..") / "bench" / bench.name), str(bench), str(link / bench.name)]
    outs, states = [], []
    for i, ref in enumerate(spellings):
        out = tmp_path / f"r{i}.json"
        assert main(["eval", "--model", model, "--task", ref, "--intervention", vector, "--cache-dir", str(cache),
                     "-o", str(out)]) == 0, capsys.readouterr().err
        outs.append(json.loads(out.read_text(encoding="utf-8")))
        states.append(_cache_state(cache))
    assert states[0] and states[1] == states[0] and states[2] == states[0]  # nothing computed again
    assert len({r["template"]["version"] for r in outs}) == 1 and len({r["data"]["data_hash"] for r in outs}) == 1
    assert outs[0]["items"] == outs[1]["items"] == outs[2]["items"]


# ---- the same benchmark as lm-eval tasks ----------------------------------------------------------------------


def write_lmeval_tasks(bench: Path, dest: Path, stem: str = "pron") -> Path:
    """lm-eval multiple-input tasks over the benchmark's JSONL files, one per language: en and sw with a
    validation and a test split, yo with a test split only (data paths absolute, as lm-eval needs)."""
    dest.mkdir(parents=True, exist_ok=True)
    for lang in PRONOUNS:
        files = {s: str(bench.parent / "data" / f"{lang}.{s}.jsonl") for s in ("dev", "test")
                 if (bench.parent / "data" / f"{lang}.{s}.jsonl").is_file()}
        splits = {"validation": files["dev"]} if "dev" in files else {}
        splits["test"] = files["test"]
        keys = ("validation_split: validation\n" if "validation" in splits else "") + "test_split: test\n"
        (dest / f"{stem}_{lang}.yaml").write_text(
            f"task: {stem}_{lang}\ndataset_path: json\ndataset_kwargs:\n  data_files: {json.dumps(splits)}\n"
            + keys + PARTIAL_LMEVAL, encoding="utf-8")
    return dest


def test_an_lm_eval_task_list_need_not_be_parallel(bench, tmp_path):
    from xlsteer.lmeval.tasks import build_spec as build_lmeval

    tasks = write_lmeval_tasks(bench, tmp_path / "tasks")
    spec = build_lmeval("lmeval:pron_en,pron_sw,pron_yo", include_path=[tasks], task_langs="pron_yo:yo")
    assert spec.langs == ("en", "sw", "yo") and spec.pairing == "none" and spec.dev_split == "dev"
    assert spec.splits_of("yo") == ("test",) and spec.langs_with("dev", spec.langs) == ["en", "sw"]
    assert {lang: len(spec.load_items(None, lang, "test")) for lang in spec.langs} == {"en": 7, "sw": 5, "yo": 5}
    assert "en 7, sw 5, yo 5" in spec.splits["test"] and spec.source["parallel"].startswith("not parallel")
    assert spec.load_items(None, "sw", "test")[0].id == "lmeval:pron/test/sw-2"  # the documents' own ids
    assert all(Path(f).is_absolute() for f in spec.data_files("yo", "test"))
    declared = build_lmeval("lmeval:pron_en,pron_sw", include_path=[tasks], parallel=True)
    assert declared.pairing == "id" and declared.source["parallel"].startswith("declared parallel")


def test_an_lm_eval_task_list_with_the_same_document_ids_is_parallel(tmp_path):
    from xlsteer.lmeval.tasks import build_spec as build_lmeval

    root = tmp_path / "same"
    (root / "data").mkdir(parents=True)
    for lang in ("en", "de"):
        recs = [partial_record(lang, i, *row) | {"id": f"q{i}"} for i, row in enumerate(PRONOUNS["en"][:4])]
        if lang == "de":
            recs.reverse()  # another order: pairing is by id, not by position
        data = root / "data" / f"{lang}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        (root / f"same_{lang}.yaml").write_text(
            f"task: same_{lang}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            "test_split: test\n" + PARTIAL_LMEVAL, encoding="utf-8")
    spec = build_lmeval("lmeval:same_en,same_de", include_path=[root])
    assert spec.pairing == "id" and spec.source["parallel"].startswith("parallel: every language")
    en, de = (spec.load_items(None, lang, "test") for lang in ("en", "de"))
    assert {it.id for it in en} == {it.id for it in de} and en[0].id == "lmeval:same/test/q0" != de[0].id


def test_a_non_parallel_lm_eval_task_through_eval_sweep_table_and_report(bench, tmp_path, monkeypatch, capsys):
    """A relative --include-path (the README's form) from another directory: inputs are checked and
    hashed before model time, the run goes through; the same tasks named by an absolute and by a
    symlinked include path are the same task and read every score from the cache."""
    from test_task_jsonl import model_and_vector

    from xlsteer.cli import main

    model, vector = model_and_vector(tmp_path / "m", langs=("sw", "yo"))
    write_lmeval_tasks(bench, tmp_path / "proj" / "tasks")
    (tmp_path / "link").symlink_to(tmp_path / "proj" / "tasks", target_is_directory=True)
    monkeypatch.chdir(tmp_path / "proj")
    run, cache = tmp_path / "run", tmp_path / "cache"
    run.mkdir()
    task = ["--task", "lmeval:pron_en,pron_sw,pron_yo", "--task-langs", "pron_yo:yo"]
    outs, states = [], []
    for i, include in enumerate(["tasks", str(tmp_path / "proj" / "tasks"), str(tmp_path / "link")]):
        out = run / "eval.json" if i == 0 else tmp_path / f"again{i}.json"
        assert main(["eval", "--model", model, *task, "--include-path", include, "--intervention", vector,
                     "--cache-dir", str(cache), "-o", str(out)]) == 0, capsys.readouterr().err
        outs.append(json.loads(out.read_text(encoding="utf-8")))
        states.append(_cache_state(cache))
    assert states[0] and states[1] == states[0] and states[2] == states[0]  # nothing computed again
    assert len({r["template"]["version"] for r in outs}) == 1 and len({r["data"]["data_hash"] for r in outs}) == 1
    r = outs[0]
    assert r["item_ids"]["per_lang"] == {"en": 7, "sw": 5, "yo": 5} and r["task_spec"]["pairing"] == "none"
    capsys.readouterr()
    assert main(["sweep", "--model", model, *task, "--include-path", "tasks", "--intervention", vector,
                 "--alphas", "1,4", "--cache-dir", str(cache), "-o", str(run / "sweep.json")]) == 0
    out = capsys.readouterr().out
    assert out.count("no dev items") == 1 and "yo: no dev items — left out of the selection" in out
    s = json.loads((run / "sweep.json").read_text(encoding="utf-8"))
    assert s["left_out"] == {"yo": "no dev items"} and s["item_ids"]["per_lang"] == {"en": 3, "sw": 2}
    capsys.readouterr()
    assert main(["table", str(run / "eval.json")]) == 0 and "not parallel" in capsys.readouterr().out
    assert main(["report", str(run), "-o", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'id="headline"' in html and "lmeval:pron" in html and "not parallel" in html


def test_the_lm_eval_digest_follows_content_not_location(bench, tmp_path):
    """The same task YAML and utils.py in another folder (a moved checkout) has the same config
    digest; an edited utils.py has another one."""
    import shutil

    from xlsteer.lmeval.tasks import build_spec as build_lmeval

    a = write_lmeval_tasks(bench, tmp_path / "a")
    (a / "utils.py").write_text("def noop(doc):\n    return doc\n", encoding="utf-8")
    b = tmp_path / "moved" / "b"
    shutil.copytree(a, b)
    version = {p: build_lmeval("lmeval:pron_en,pron_sw", include_path=[p]).template().version for p in (a, b)}
    assert version[a] == version[b]
    (b / "utils.py").write_text("def noop(doc):\n    return dict(doc)\n", encoding="utf-8")
    assert build_lmeval("lmeval:pron_en,pron_sw", include_path=[b]).template().version != version[a]
