"""lm-eval tasks as TaskSpecs: user-written lm-eval YAML tasks over local JSONL files, one per language.

The tasks are written into a temporary directory by each test (``--include-path DIR``), so
only ``include_path`` is indexed (lm-eval's own thousands of tasks are not scanned).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from xlsteer.errors import DataError, LanguageError, UsageError  # noqa: E402
from xlsteer.evaluation.pairing import compare_runs  # noqa: E402
from xlsteer.evaluation.runner import run_task  # noqa: E402
from xlsteer.lmeval.tasks import build_spec, spec_name  # noqa: E402
from xlsteer.evaluation.tasks.spec import resolve_task  # noqa: E402
from xlsteer.interventions.vector import SteeringVector, vector_key  # noqa: E402
from xlsteer.models.sites import Site  # noqa: E402
from xlsteer.testing import tiny_model  # noqa: E402

LANGS = ("en", "sw", "de")

MULTI_INPUT_UTILS = '''
def doc_to_text(doc):
    return int(doc["label"]) % 2


def doc_to_choice(doc):
    return [doc["sentence"].split("_")[0] + option for option in doc["options"]]


def doc_to_target(doc):
    return doc["sentence"].split("_")[1].strip()
'''


def _docs(lang: str, split: str, n: int) -> list[dict]:
    return [{"q": f"[{lang}] {split} question {i}?", "opts": [f"yes {i}", f"no {i}", f"maybe {i}"], "label": i % 3,
             "ans": str(10 + i), "sentence": f"[{lang}] The cup {i} fell because _ was heavy.",
             "options": ["the cup", "the table"]} for i in range(n)]


def write_tasks(root: Path, stem: str, body: str, langs=LANGS, counts=None, splits=("train", "validation", "test"),
                utils: str | None = None) -> Path:
    """``<stem>_<lang>.yaml`` over local JSONL files (absolute paths), one per language, under ``root``."""
    counts = counts or {}
    root.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        files = {}
        for split in splits:
            path = root / "data" / f"{stem}_{lang}_{split}.jsonl"
            path.parent.mkdir(exist_ok=True)
            n = counts.get((lang, split), {"train": 3, "validation": 4, "test": 5}[split])
            path.write_text("".join(json.dumps(d) + "\n" for d in _docs(lang, split, n)), encoding="utf-8")
            files[split] = str(path)
        split_keys = "".join(f"{key}: {s}\n" for key, s in (("training_split", "train"),
                                                              ("validation_split", "validation"),
                                                              ("test_split", "test")) if s in splits)
        (root / f"{stem}_{lang}.yaml").write_text(
            f"task: {stem}_{lang}\ndataset_path: json\n"
            f"dataset_kwargs:\n  cache_dir: {root / 'hf_cache'}\n  data_files: {json.dumps(files)}\n"
            + split_keys + body, encoding="utf-8")
    if utils is not None:
        (root / "utils.py").write_text(utils, encoding="utf-8")
    return root


MC = ("output_type: multiple_choice\ndoc_to_text: \"Question: {{q}}\\nAnswer:\"\ndoc_to_choice: \"{{opts}}\"\n"
      "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
GEN = ("output_type: generate_until\nnum_fewshot: 1\ndoc_to_text: \"Q: {{q}}\\nA:\"\ndoc_to_target: \"{{ans}}\"\n"
       "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 6\n  do_sample: false\n"
       "filter_list:\n  - name: number\n    filter:\n      - function: regex\n        regex_pattern: \"(\\\\d+)\"\n"
       "      - function: take_first\n  - name: raw\n    filter:\n      - function: take_first\n"
       "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
LOGLIK = ("output_type: loglikelihood\ndoc_to_text: \"Q: {{q}}\\nA:\"\ndoc_to_target: \" {{ans}}\"\n"
          "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
MULTI = ("output_type: multiple_choice\ndoc_to_text: !function utils.doc_to_text\n"
         "doc_to_choice: !function utils.doc_to_choice\ndoc_to_target: !function utils.doc_to_target\n"
         "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lmeval_tasks")
    write_tasks(root, "T", MC + "num_fewshot: 2\n")
    write_tasks(root, "G", GEN)
    write_tasks(root, "L", LOGLIK, splits=("test",))
    write_tasks(root, "W", MULTI, langs=("en", "sw"), utils=MULTI_INPUT_UTILS)
    return root


def _lm_eval_requests(root: Path, name: str) -> dict[int, list[tuple]]:
    """What lm-eval itself sends for the test documents (its evaluator's few-shot seed)."""
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=[str(root)], include_defaults=False).load([name])["tasks"][name]
    task.set_fewshot_seed(1234)
    task.build_all_requests()
    out: dict[int, list[tuple]] = {}
    for inst in task.instances:
        out.setdefault(inst.doc_id, []).append(inst.arguments)
    return out


# ---- the spec ---------------------------------------------------------------------------------------------


def test_multiple_choice_task_is_one_spec_over_languages(tasks):
    [spec] = resolve_task("lmeval:T_en,T_sw,T_de", include_path=str(tasks))
    assert spec.name == "lmeval:T" and spec.langs == LANGS and spec.kind == "choice"
    assert set(spec.splits) == {"test", "dev", "train"} and spec.dev_split == "dev"
    assert [m.name for m in spec.metrics] == ["acc", "acc_norm"] and spec.main == "acc"
    test = {lang: spec.load_items(None, lang, "test") for lang in LANGS}
    assert [it.id for it in test["sw"]] == [f"lmeval:T/test/{i}" for i in range(5)]
    assert all([it.id for it in test[lang]] == [it.id for it in test["en"]] for lang in LANGS)
    assert len(spec.load_items(None, "de", "dev")) == 4 and len(spec.load_items(None, "de", "test", 2)) == 2
    assert spec.source["kind"] == "lmeval" and spec.source["tasks"]["T_sw"]["lang"] == "sw"
    assert any(f.endswith("T_sw_test.jsonl") for f in spec.data_files("sw", "test"))


def test_prompts_are_lm_evals_own_with_few_shot(tasks):
    spec = build_spec("lmeval:T_en,T_sw,T_de", include_path=[tasks])
    theirs = _lm_eval_requests(tasks, "T_sw")
    items = spec.load_items(None, "sw", "test")
    assert "\n\n" in items[0].fields["context"]  # two exemplars from the train split
    for i, it in enumerate(items):
        req = spec.template().render(it)
        assert [(req.context, c) for c in req.choices] == [tuple(a) for a in theirs[i]]
        assert it.answer == i % 3
    assert spec.load_items(None, "sw", "test", 2) == items[:2]  # a limit gives the same first prompts


def test_dev_items_never_see_themselves_as_exemplars(tmp_path):
    root = write_tasks(tmp_path, "V", MC + "num_fewshot: 3\nfewshot_split: validation\n")
    spec = build_spec("lmeval:V_en,V_sw", include_path=[root])
    for it in spec.load_items(None, "en", "dev"):
        question = it.fields["doc"]["q"]
        assert it.fields["context"].count(question) == 1  # only as the question, not as an exemplar


def test_multiple_input_task(tasks):
    spec = build_spec("lmeval:W_en,W_sw", include_path=[tasks])
    theirs = _lm_eval_requests(tasks, "W_sw")
    it = spec.load_items(None, "sw", "test")[1]
    req = spec.template().render(it)
    assert req.contexts == ("[sw] The cup 1 fell because the cup", "[sw] The cup 1 fell because the table")
    assert req.choices == (" was heavy.",) and it.answer == 1
    assert [(c, req.choices[0]) for c in req.contexts] == [tuple(a) for a in theirs[1]]
    assert [m.name for m in spec.metrics] == ["acc"]


def test_generation_task_scores_through_its_own_filters(tasks):
    spec = build_spec("lmeval:G_en,G_sw", include_path=[tasks])
    assert spec.kind == "generate" and [m.name for m in spec.metrics] == ["exact_match:number", "exact_match:raw"]
    it = spec.load_items(None, "sw", "test")[2]
    req = spec.template().render(it)
    assert req.prompt == _lm_eval_requests(tasks, "G_sw")[2][0][0] and req.stop == ("\n",)
    assert req.max_new_tokens == 6 and it.answer == "12"
    s = spec.score(it, " it is 12, surely")
    assert s.correct and s.prediction == "12" and dict(s.scores) == {"exact_match:number": 1.0, "exact_match:raw": 0.0}
    assert not spec.score(it, "13").correct
    assert spec.template().with_options(max_new_tokens=3).render(it).max_new_tokens == 3


def test_loglikelihood_task_has_one_continuation(tasks):
    spec = build_spec("lmeval:L_en,L_sw", include_path=[tasks])
    assert spec.dev_split is None and list(spec.splits) == ["test"] and spec.continuous == ()
    req = spec.template().render(spec.load_items(None, "en", "test")[3])
    assert req.context == "Q: [en] test question 3?\nA:" and req.choices == (" 13",)


def test_languages_from_names_or_task_langs(tasks):
    assert spec_name(["xnli_de", "xnli_en"]) == "lmeval:xnli" and spec_name(["a_de", "b_en"]) == "lmeval:a_de+b_en"
    spec = build_spec("lmeval:T_en,T_sw", include_path=[tasks], task_langs="T_en:de,T_sw:fr")  # as --task-langs
    assert spec.langs == ("de", "fr")
    assert build_spec("lmeval:T_en,T_sw", include_path=[tasks], task_langs={"T_sw": "yo"}).langs == ("en", "yo")
    with pytest.raises(UsageError, match="both in language en"):
        build_spec("lmeval:T_en,T_sw", include_path=[tasks], task_langs="T_sw:en")


def test_nothing_reaches_the_terminal(tmp_path, capfd):
    root = write_tasks(tmp_path, "Z", GEN.replace("  until: [\"\\n\"]\n", ""))  # lm-eval warns: no until
    capfd.readouterr()
    spec = build_spec("lmeval:Z_en,Z_sw", include_path=[root])  # indexing, loading, few-shot sampling
    spec.score(spec.load_items(None, "en", "test")[0], "10")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# ---- errors ------------------------------------------------------------------------------------------------


def _msg(exc_type, ref, root, **kw) -> str:
    with pytest.raises(exc_type) as e:
        build_spec(ref, include_path=[root], **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_errors(tasks, tmp_path):
    assert "did you mean T_sw" in _msg(UsageError, "lmeval:T_en,T_sx", tasks)
    assert "mix output types" in _msg(UsageError, "lmeval:T_en,G_sw", tasks)
    assert "given twice" in _msg(UsageError, "lmeval:T_en,T_en", tasks)
    write_tasks(tmp_path / "a", "R", "output_type: loglikelihood_rolling\ndoc_to_target: \"{{q}}\"\n")
    assert "perplexity" in _msg(UsageError, "lmeval:R_en,R_sw", tmp_path / "a")
    write_tasks(tmp_path / "b", "S", GEN.replace("do_sample: false", "do_sample: true"))
    assert "decodes greedily" in _msg(UsageError, "lmeval:S_en,S_sw", tmp_path / "b")
    greedy = write_tasks(tmp_path / "b2", "S", GEN.replace("do_sample: false", "do_sample: false\n  temperature: 0.7"))
    assert build_spec("lmeval:S_en,S_sw", include_path=[greedy]).kind == "generate"  # lm-eval decodes greedily too
    write_tasks(tmp_path / "c", "M", MC, langs=("en", "sw"), counts={("sw", "test"): 4})
    other = build_spec("lmeval:M_en,M_sw", include_path=[tmp_path / "c"])  # other counts: accepted, not parallel
    assert other.pairing == "none" and len(other.load_items(None, "sw", "test")) == 4
    write_tasks(tmp_path / "c2", "E", MC, langs=("en", "sw"), counts={("sw", "test"): 0})
    assert "could not load E_en, E_sw" in _msg(DataError, "lmeval:E_en,E_sw", tmp_path / "c2")
    write_tasks(tmp_path / "d", "Q", MC.replace("doc_to_target: label", 'doc_to_target: "{{nothere}}"'), langs=("en",))
    assert "'nothere' is undefined" in _msg(DataError, "lmeval:Q_en", tmp_path / "d")
    write_tasks(tmp_path / "e", "nolang", MC, langs=("xx",))
    assert "--task-langs nolang_xx:<code>" in _msg(UsageError, "lmeval:nolang_xx", tmp_path / "e")
    with pytest.raises(LanguageError):
        build_spec("lmeval:T_en", include_path=[tasks]).load_items(None, "sw", "test")
    with pytest.raises(UsageError, match="does not exist"):
        build_spec("lmeval:T_en", include_path=[tmp_path / "nowhere"])


# ---- end to end -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["lmeval:T_en,T_sw,T_de", "lmeval:G_en,G_sw,G_de"])
def test_steered_against_unsteered_on_an_lm_eval_task(tasks, ref):
    lm = tiny_model("llama")
    [spec] = resolve_task(ref, include_path=[tasks])
    g = torch.Generator().manual_seed(5)
    iv = SteeringVector(sites=[Site(1, "resid_post")],
                        tensors={vector_key(1): 8 * torch.randn(2, lm.hidden_size, generator=g)},
                        params={"normalize": "none"}, languages=["sw", "de"], anchor="en", strength=1.0)
    base = run_task(lm, spec, list(LANGS), n_boot=200)
    steered = run_task(lm, spec, list(LANGS), iv, n_boot=200)
    assert base["task"] == spec.name and base["per_lang"]["de"]["n"] == 5
    c = compare_runs(base, steered)
    for lang in ("sw", "de"):
        t = c["per_lang"][lang]["metrics"][spec.main]
        assert 0 <= t["p"] <= t["p_holm"] <= 1 and "mde" in t
        m = base["per_lang"][lang]["metrics"][spec.main]
        assert m["ci_low"] <= m["mean"] <= m["ci_high"]


def test_cli_eval_and_table_on_an_lm_eval_task(tasks, tmp_path, capsys):
    from test_task_jsonl import check_cli_run

    r = check_cli_run(["--task", "lmeval:T_en,T_sw,T_de", "--include-path", str(tasks)], tmp_path, capsys)
    assert r["task"] == "lmeval:T" and r["task_spec"]["source"]["kind"] == "lmeval"
    from xlsteer.cli import main

    assert main(["report", str(tmp_path / "r.json"), "-o", str(tmp_path / "r.html")]) == 0
    assert "lmeval:T test: acc per language" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_same_requests_and_scores_as_lm_eval_itself(tasks):
    """lm-eval's own evaluator (with xlsteer's lm-eval model adapter) on the same tasks: the same
    generated texts, filtered answers and per-document scores as ``evaluate`` on the TaskSpec."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from xlsteer.lmeval.model import XlsteerLM

    lm = tiny_model("llama")
    for ref, names in (("lmeval:T_en,T_sw", ["T_en", "T_sw"]), ("lmeval:G_en,G_sw", ["G_en", "G_sw"])):
        [spec] = resolve_task(ref, include_path=[tasks])
        ours = {(r["lang"], int(r["id"].rsplit("/", 1)[1])): r for r in run_task(lm, spec, ["en", "sw"])["items"]}
        theirs = simple_evaluate(model=XlsteerLM(pretrained=lm), tasks=names, log_samples=True, bootstrap_iters=0,
                                 task_manager=TaskManager(include_path=[str(tasks)], include_defaults=False))
        for name in names:
            lang = name.split("_")[1]
            for s in theirs["samples"][name]:
                r = ours[(lang, s["doc_id"])]
                if spec.kind == "choice":
                    assert r["scores"]["acc"] == s["acc"]
                    assert r["logprobs"] == pytest.approx([x[0][0] for x in s["resps"]], abs=1e-4)
                else:
                    assert r["generated"] == s["resps"][0][0]
                    assert r["scores"][f"exact_match:{s['filter']}"] == s["exact_match"]
                    if s["filter"] == "number":
                        assert r["prediction"] == s["filtered_resps"][0]
