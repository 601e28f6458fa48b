"""A task is one TaskSpec: a toy benchmark declared in this file alone runs through eval, the
paired comparison, the sweep (dev only), the CLI and `xlsteer table`, and nothing in the library
branches on a task's name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from xlsteer.cli import main
from xlsteer.errors import UsageError
from xlsteer.evaluation import EvalConfig, EvalResult, evaluate
from xlsteer.evaluation.sweep import sweep
from xlsteer.evaluation.tasks import (BaselineHints, Item, Metric, Scored, TaskSpec, get_task, register_task,
                                      task_names, unregister_task)
from xlsteer.evaluation.templates import Request, Template
from xlsteer.interventions.vector import SteeringVector, vector_key
from xlsteer.models.sites import Site
from xlsteer.testing import replaced_task, tiny_model

LANGS = ("en", "de", "fr")
N = 12  # items per language: dev = 0-3, test = 4-11
WORDS = {"en": ("red", "blue", "green"), "de": ("rot", "blau", "grün"), "fr": ("rouge", "bleu", "vert")}


def _items(data_dir, lang: str, split: str, limit: int | None = None) -> list[Item]:
    rng = range(0, 4) if split == "dev" else range(4, N)
    words = WORDS[lang]
    out = [Item(id=f"toy/{i}", lang=lang, split=split,
                fields={"context": f"{i} {words[i % 3]} is", "choices": [f" {w}" for w in words]}, answer=i % 3)
           for i in rng]
    return out if limit is None else out[:limit]


def _render(t: Template, item: Item, exemplars) -> Request:
    return Request(kind="choice", context=item.fields["context"], choices=tuple(item.fields["choices"]))


def _toy(name: str = "toy-colours", **changes) -> TaskSpec:
    spec = TaskSpec(
        name=name, description="which colour word follows (a toy 3-way choice)", langs=LANGS,
        splits={"dev": "items 0-3", "test": "items 4-11"}, load_items=_items, data_files=lambda lang, split: [],
        templates=(Template("toy-plain", name, "1", "choice", "context, then each colour word", {}, _render),),
        metrics=(Metric("acc", "binary"), Metric("acc_norm", "binary")), main="acc", tie_break="margin",
        baselines=BaselineHints(icl_split="dev", icl_k=1), source={"kind": "python", "module": __name__},
    )
    return TaskSpec(**{**spec.__dict__, **changes}) if changes else spec


@pytest.fixture
def toy():
    spec = register_task(_toy())
    yield spec
    unregister_task(spec.name)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def _vector(lm, strength: float = 4.0) -> SteeringVector:
    g = torch.Generator().manual_seed(5)
    return SteeringVector(sites=[Site(1, "resid_post")], tensors={vector_key(1): torch.randn(2, lm.hidden_size, generator=g)},
                          params={"normalize": "none"}, languages=["de", "fr"], anchor="en", strength=strength)


def test_a_registered_task_is_found_by_name_and_listed(toy):
    assert get_task("TOY-COLOURS") is toy and "toy-colours" in task_names()
    assert toy.kind == "choice" and toy.continuous == ("margin", "p_correct") and toy.dev_split == "dev"
    with pytest.raises(UsageError, match="already registered"):
        register_task(_toy())


def test_a_spec_is_checked_when_declared():
    with pytest.raises(ValueError, match="main metric 'f1'"):
        _toy(main="f1")
    with pytest.raises(ValueError, match="needs a score function"):
        _toy(templates=(Template("g", "toy-colours", "1", "generate", "", {}, _render),))
    with pytest.raises(ValueError, match="dev split 'val'"):
        _toy(dev_split="val")


def test_eval_of_a_toy_task_pairs_steered_with_unsteered_per_language(toy, lm):
    res = evaluate(lm, "toy-colours", ["en", "de", "fr"], _vector(lm), EvalConfig(n_boot=200))
    assert isinstance(res, EvalResult) and res.steered
    doc = res.to_json()
    assert doc["task"] == "toy-colours" and doc["split"] == "test" and doc["item_ids"]["per_lang"] == {
        "en": 8, "de": 8, "fr": 8}
    assert doc["task_spec"]["splits"] == {"dev": "items 0-3", "test": "items 4-11"}
    for lang in ("de", "fr"):
        ci = doc["per_lang"][lang]["metrics"]["acc"]
        assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]
        test = doc["comparison"]["per_lang"][lang]["metrics"]["acc"]
        assert {"p", "p_holm", "mde", "diff", "diff_ci_low", "diff_ci_high"} <= set(test)
    assert "p_holm" not in doc["comparison"]["per_lang"]["en"]["metrics"]["acc"]  # the anchor is not tested
    assert doc["per_lang"]["de"]["consistency"]["n"] == 8  # agreement with the anchor on the same ids
    assert set(doc["comparison"]["average"]["tests"]) == {"acc", "acc_norm", "margin", "p_correct"}
    # the anchor rows were not steered: identical log-probs with and without the vector
    en = [r["logprobs"] for r in doc["items"] if r["lang"] == "en"]
    assert en == [r["logprobs"] for r in doc["baseline"]["items"] if r["lang"] == "en"]


def test_the_cli_evaluates_a_registered_task_and_table_renders_it(toy, lm, tmp_path, capsys):
    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    iv = _vector(lm).save(tmp_path / "v.safetensors")
    out = tmp_path / "r.json"
    assert main(["-q", "eval", "--model", str(folder), "--task", "toy-colours", "--intervention", str(iv),
                 "--no-cache", "-o", str(out)]) == 0  # a user task's languages are the default
    printed = capsys.readouterr().out
    assert re.search(r"^de\s+8\s", printed, re.M) and "diff [95% CI]" in printed
    assert main(["table", str(out)]) == 0
    table = capsys.readouterr().out
    assert "p_holm" in table or "Holm" in table
    assert json.loads(out.read_text(encoding="utf-8"))["comparison"]["task"] == "toy-colours"


def test_a_sweep_on_a_toy_task_reads_its_dev_split_only(toy, lm):
    seen: list[str] = []

    def spy(data_dir, lang, split, limit=None):
        seen.append(split)
        return _items(data_dir, lang, split, limit)

    with replaced_task("toy-colours", load_items=spy):
        rec = sweep(lm, "toy-colours", ["en", "de"], intervention=_vector(lm), layers=[1], alphas=[1.0], n_boot=50)
    assert set(seen) == {"dev"} and rec["split"] == "dev" and rec["item_ids"]["per_lang"]["de"] == 4


def test_a_task_without_a_dev_split_cannot_be_swept(lm):
    spec = register_task(_toy("toy-nodev", splits={"test": "items 4-11"}, dev_split=None))
    try:
        with pytest.raises(UsageError, match="toy-nodev has no dev split.*declare one"):
            sweep(lm, spec, ["en", "de"], intervention=_vector(lm), layers=[1], alphas=[1.0])
        with pytest.raises(UsageError, match="must not see test items"):
            sweep(lm, spec, ["en", "de"], intervention=_vector(lm), layers=[1], alphas=[1.0], split="test")
    finally:
        unregister_task(spec.name)


def test_a_generation_task_is_scored_by_its_own_function(lm):
    def score(item: Item, text: str) -> Scored:
        hit = float(item.answer in text)
        return Scored(prediction=text.strip(), correct=bool(hit), scores={"contains": hit})

    def render(t, item, exemplars):
        return Request(kind="generate", prompt=item.fields["context"], max_new_tokens=3, stop=("\n",))

    spec = _toy("toy-gen", templates=(Template("toy-gen", "toy-gen", "1", "generate", "", {}, render),),
                metrics=(Metric("contains", "binary"),), main="contains", tie_break=None, score=score,
                load_items=lambda d, lang, split, limit=None: [
                    Item(it.id, it.lang, it.split, it.fields, WORDS[lang][int(it.id.split("/")[1]) % 3])
                    for it in _items(d, lang, split, limit)])
    doc = evaluate(lm, spec, ["en", "de"], cfg=EvalConfig(limit=3, n_boot=50)).to_json()
    assert doc["metrics"]["names"] == ["contains"] and doc["metrics"]["continuous"] == []
    assert all(set(r["scores"]) == {"contains"} and "generated" in r for r in doc["items"])


def test_no_module_outside_the_task_modules_branches_on_a_task_name():
    root = Path(__import__("xlsteer").__file__).parent
    names = "|".join(re.escape(n) for n in ("mgsm", "xcopa", "xnli", "xquad"))
    pattern = re.compile(rf"""(task|\.task|tpl\.task)\s*(==|!=)\s*["']({names})["']|in \(["']({names})["']""")
    owners = {"evaluation/tasks", "lmeval/xcopa.py", "data/"}
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if any(rel.startswith(o) for o in owners):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "task-specific branches outside the task modules:\n" + "\n".join(offenders)


def test_xlsteer_tasks_lists_the_registry_and_describes_one_task(toy, capsys):
    assert main(["tasks"]) == 0
    listing = capsys.readouterr().out
    for name in ("mgsm", "xcopa", "xnli", "xquad", "toy-colours"):
        assert re.search(rf"^\| {re.escape(name)}\s+\|", listing, re.M), name
    assert main(["tasks", "--task", "toy-colours"]) == 0
    text = capsys.readouterr().out
    assert "split dev: items 0-3" in text and "metrics: acc*, acc_norm; tie-break: margin" in text
    assert "icl (dev exemplars)" in text and "translate-test" not in text


# ---- a toy task and a toy method, both declared in this file alone ------------------------------


def fit_negated(stats, layers, targets, anchor="en", site="resid_post", meta=None):
    """A toy steering method: the DiffMean vector pointing the other way."""
    from xlsteer.interventions.vector import fit_diffmean

    iv = fit_diffmean(stats, layers, targets, anchor=anchor, site=site, meta=meta)
    iv.tensors = {k: -t for k, t in iv.tensors.items()}
    iv.params.update(fit="negated")
    return iv


def test_a_toy_method_on_a_toy_task_runs_through_fit_eval_and_compare(toy, lm):
    from xlsteer.baselines.compare import compare_methods
    from xlsteer.interventions import fit
    from xlsteer.interventions.registry import LayerPolicy, StatisticsNeed, registered

    with registered("negated", fit_negated, site="resid_post", statistics=StatisticsNeed("item-level pooled means"),
                    layer_policy=LayerPolicy(compare=lambda n_layers: [1]), alpha_grid=(0.5, 1.0),
                    description="minus the DiffMean vector (a test method)", compare="negated DiffMean"):
        from test_vector import parallel_texts

        iv = fit("negated", lm, {k: v for k, v in parallel_texts(8).items() if k in ("en", "sw")}, ["sw"], layers=[1])
        assert iv.params["fit"] == "negated"
        rec = compare_methods(lm, "toy-colours", ["en", "de"], ["negated"], limit=4, dev_limit=4, fit_limit=8,
                              n_boot=20, max_length=256, translation_cache=False)
    row = rec["rows"]["negated"]
    assert rec["task"] == "toy-colours" and rec["methods"] == ["zero-shot", "negated"], row["error"]
    assert row["error"] is None and row["family"] == "steering"
    assert row["selection"]["split"] == "dev" and set(row["selection"]["dev_scores"]) == {"unsteered", "L1@0.5",
                                                                                            "L1@1"}
    assert {"score", "p"} <= set(row["per_lang"]["de"])
