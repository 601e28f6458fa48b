"""The oracle: xlsteer's LCB scorer gives exactly the numbers of upstream's ``compute_metrics.py``.

The upstream program runs unmodified from the data dir, in its own small environment
(``.venv-lcb-oracle``: fasttext-wheel with numpy<2, jieba, fugashi, unidic-lite; ``make test``
creates it with ``scripts/setup_lcb_oracle.sh``), from a working directory holding ``words`` and
the very language-ID file xlsteer scores with, linked as ``lid.176.bin``. Its printed figures
(``{:.2%}``) are the contract: for both tasks of the published Command R outputs, every
(source, language), every per-source and per-language mean and the overall mean, ours formatted
the same way must be the same strings.

The program prints no counts, but it can be made to give each response's verdict without
changing it: the same CSV also holds every response as a "model" of its own (line-level pass
100% or 0%, word-level 0% on a word error), and paired with a response that surely fails
(pass 50%, skipped 0%). So the counts behind every figure (answered, line-level passes, word
errors) are compared too, response by response.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

from xlsteer.errors import DataError
from xlsteer.evaluation import language_fidelity as LF
from xlsteer.evaluation.tasks import Item
from xlsteer.evaluation.tasks import lcb

ROOT = Path(__file__).resolve().parents[1]
ORACLE_PY = ROOT / ".venv-lcb-oracle" / "bin" / "python"
TASKS = {"monolingual": "mono", "crosslingual": "cross"}
#: A response that is answered and fails the line level in the given language.
FAILING = {"en": "Dies ist ein ganz normaler deutscher Satz ohne jeden Fehler.",
           "other": "This is a perfectly ordinary English sentence without any mistakes."}

pytestmark = pytest.mark.slow


def _oracle_python() -> Path:
    if ORACLE_PY.is_file():
        return ORACLE_PY
    why = (f"{ORACLE_PY.parent.parent.name} does not exist: `make test` creates it "
           "(bash scripts/setup_lcb_oracle.sh)")
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def lcb_dir() -> Path:
    from xlsteer.data.paths import data_dir

    try:
        root = data_dir() / "lcb"
    except DataError as e:
        pytest.skip(f"shared data not available: {e}")
    if not (root / "outputs/command-r.csv").is_file():
        pytest.skip("the data dir has no LCB outputs (fetch them: xlsteer data fetch --only lcb --accept-nc)")
    return root


def _rows(lcb_dir: Path) -> list[dict[str, str]]:
    with open(lcb_dir / "outputs/command-r.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _run_upstream(lcb_dir: Path, rows: list[dict[str, str]], tmp: Path) -> dict[tuple[str, str, str, str], tuple[str, str]]:
    """(task, model, source, language) -> (lpr, wpr) as the unmodified program prints them."""
    py = _oracle_python()
    (tmp / "words").symlink_to(lcb_dir / "words")
    (tmp / "lid.176.bin").symlink_to(LF.current_lid_model().path)  # the file xlsteer scores with
    extra = []
    for i, r in enumerate(rows):
        extra.append({**r, "model": f"one-{i}"})
        failing = FAILING["en" if r["language"] == "en" else "other"]
        extra += [{**r, "model": f"pair-{i}"}, {**r, "model": f"pair-{i}", "completion": failing}]
    data = tmp / "outputs.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + extra)
    proc = subprocess.run([str(py), str(lcb_dir / "compute_metrics.py"), str(data)], cwd=tmp, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for line in proc.stdout.splitlines()[1:]:
        task, model, source, lang, lpr, wpr = line.split("\t")
        out[(task, model, source, lang)] = (lpr, wpr)
    return out


def _ours(rows: list[dict[str, str]], words_file: Path) -> tuple[dict[str, dict], list]:
    """The task's own scorer and summary over the published responses, and each response's verdict."""
    spec = lcb.SPEC
    records, verdicts = [], []
    for i, r in enumerate(rows):
        set_name = TASKS[r["task"]]
        item = Item(id=f"oracle/{i}", lang=r["language"], split="test", answer=r["language"],
                    fields={"prompt": "", "set": set_name, "source": r["source"], "upstream_source": r["source"],
                            "prompt_lang": r["language"], "words_file": str(words_file)})
        s = spec.score(item, r["completion"])
        records.append({"lang": r["language"], "prediction": s.prediction, "scores": dict(s.scores),
                        "details": dict(s.details)})
        verdicts.append(s)
    return spec.task_summary(records), verdicts


def test_lcb_scorer_equals_upstream_compute_metrics(lcb_dir, tmp_path):
    rows = _rows(lcb_dir)
    assert len(rows) == 6586 and {r["model"] for r in rows} == {"command-r"}
    summary, verdicts = _ours(rows, lcb_dir / "words")
    upstream = _run_upstream(lcb_dir, rows, tmp_path)

    # 1. every figure the program prints, for both tasks
    compared = 0
    for task in TASKS:
        printed = {(task, "command-r", s, lang): (lpr, wpr) for s, lang, lpr, wpr in LF.printed_rows(summary[task])}
        theirs = {k: v for k, v in upstream.items() if k[0] == task and k[1] == "command-r"}
        assert printed == theirs
        compared += len(printed)
    assert compared == 42 + 3 + 14 + 1 + 24 + 4 + 15 + 1  # groups, per source, per language, overall

    # 2. each response's verdict (hence every count behind the figures)
    for i, (r, s) in enumerate(zip(rows, verdicts)):
        key = (r["task"], f"one-{i}", r["source"], r["language"])
        lpr_one, wpr_one = upstream[key]
        lpr_pair, _ = upstream[(r["task"], f"pair-{i}", r["source"], r["language"])]
        answered, line_pass = s.scores["answered"] == 1.0, s.scores["line_pass"] == 1.0
        upstream_answered = lpr_one == "0.00%" or lpr_pair == "50.00%"
        assert (upstream_answered, lpr_one == "100.00%" and lpr_pair == "50.00%") == (answered, line_pass), (i, r)
        if r["language"] in LF.WPR_LANGS:
            assert (wpr_one == "0.00%") == (line_pass and s.scores["word_pass"] == 0.0), (i, r)

    # the counts in our summary are the sums of those verdicts
    mono = summary["monolingual"]["per_source_lang"]
    assert sum(g["n"] for g in mono.values()) == 2400
    assert sum(g["answered"] for g in mono.values()) == sum(
        s.scores["answered"] for r, s in zip(rows, verdicts) if r["task"] == "monolingual")
    assert summary["monolingual"]["overall"]["lpr"] == pytest.approx(0.9797, abs=5e-5)
    assert summary["crosslingual"]["overall"]["lpr"] == pytest.approx(0.6769, abs=5e-5)
