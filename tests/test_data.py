"""Data dir resolution, data hashes, check_data, and parallel corpora (real data + synthetic error paths)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from xlsteer.data import paths
from xlsteer.data.corpora import (
    ParallelCorpus,
    load_corpus,
    load_ntrex,
    load_parallel_files,
    load_xquad_paragraphs,
    read_lines,
)
from xlsteer.data.check import check_data
from xlsteer.data.paths import data_dir, data_hash, files_hash
from xlsteer.errors import DataError, LanguageError, UsageError


@pytest.fixture(scope="module")
def real_data() -> Path:
    try:
        return data_dir()
    except DataError as e:
        pytest.skip(f"shared data not available: {e}")


# ---------------------------------------------------------------------------------------------
# data_dir


def test_data_dir_explicit_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    assert data_dir(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(DataError, match="--data-dir"):
        data_dir(str(tmp_path / "nope"))
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.setenv(paths.ENV_VAR, str(env_dir))
    assert data_dir() == env_dir.resolve()
    assert data_dir(str(tmp_path)) == tmp_path.resolve()  # explicit wins over the environment
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=paths.ENV_VAR):
        data_dir()


def test_data_dir_discovery(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "SHA256SUMS").write_text("")
    code = tmp_path / "checkout" / "src" / "xlsteer" / "data"
    code.mkdir(parents=True)
    monkeypatch.setattr(paths, "__file__", str(code / "paths.py"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert data_dir() == shared.resolve()


def test_data_dir_not_found(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # no per-user data dir either
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.setattr(paths, "__file__", str(tmp_path / "a" / "b" / "paths.py"))
    monkeypatch.chdir(tmp_path / "a")
    if any((p / "shared" / "data" / "SHA256SUMS").is_file() for p in [tmp_path, *tmp_path.parents]):
        pytest.skip("a shared/data exists above the temporary directory")
    with pytest.raises(DataError) as e:
        data_dir()
    msg = str(e.value)
    assert "--data-dir" in msg and "XLSTEER_DATA_DIR" in msg and "../shared/data" in msg and "\n" not in msg
    assert "xlsteer data fetch" in msg


# ---------------------------------------------------------------------------------------------
# hashes and check_data


def _sums(d: Path, files: dict[str, bytes], corrupt: dict[str, bytes] | None = None) -> None:
    lines = []
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes((corrupt or {}).get(rel, data))
        lines.append(f"{hashlib.sha256(data).hexdigest()}  ./{rel}")
    (d / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def test_data_hash_synthetic(tmp_path):
    _sums(tmp_path, {"a/x.txt": b"x\n", "b/y.txt": b"y\n"})
    whole = data_hash(tmp_path)
    assert len(whole) == 64
    assert data_hash(tmp_path, ["a/x.txt", "./b/y.txt"]) == data_hash(tmp_path, ["b/y.txt", "a/x.txt"]) == whole
    one = data_hash(tmp_path, ["a/x.txt"])
    assert one != whole
    assert files_hash([tmp_path / "a/x.txt"], tmp_path) == one
    with pytest.raises(DataError, match="not listed"):
        data_hash(tmp_path, ["c/z.txt"])
    with pytest.raises(DataError, match="SHA256SUMS"):
        data_hash(tmp_path / "a")


def test_check_data_synthetic(tmp_path):
    _sums(tmp_path, {"ok.txt": b"fine\n", "bad.txt": b"original\n", "gone.txt": b"x\n"},
          corrupt={"bad.txt": b"changed\n"})
    (tmp_path / "gone.txt").unlink()
    r = check_data(tmp_path)
    assert r["files"] == {"ok.txt": "ok", "bad.txt": "mismatch", "gone.txt": "missing"}
    assert r["missing"] == ["gone.txt"] and r["mismatch"] == ["bad.txt"] and r["n_ok"] == 1
    assert r["ok"] is False and r["counts"] == {} and r["problems"] == []  # no task's files are listed here


def test_check_data_real(real_data):
    r = check_data(real_data)
    assert r["ok"], r["problems"] + r["missing"] + r["mismatch"]
    assert r["n_ok"] == r["n_files"] == 114 + 74  # SHA256SUMS and lcb/SHA256SUMS (its files and test_sets/ unpacked)
    assert r["files"]["lcb/test_sets.zip"] == "ok"
    c = r["counts"]  # every split of every language, counted by the task's own loader
    assert {k: set(v.values()) for k, v in c.items() if k.startswith("mgsm/")} == {
        "mgsm/train": {8}, "mgsm/dev": {50}, "mgsm/test": {200}}
    assert len(c["mgsm/test"]) == 11
    assert set(c["xcopa/test"].values()) == {500} and len(c["xcopa/test"]) == 12  # 11 + the MT English of et
    assert set(c["xcopa/dev"].values()) == {100}
    gmt = c["xcopa/dev (English reference)"]
    assert len(gmt) == 10 and "qu" not in gmt and set(gmt.values()) == {100}
    assert [set(c[f"xnli/{s}"].values()) for s in ("train", "dev", "test")] == [{1290}, {200}, {1000}]
    assert len(c["xnli/test"]) == 15
    assert len(c["xquad/test"]) == 12 and len(set(c["xquad/test"].values())) == 1
    assert set(c["ntrex"].values()) == {1997} and len(c["ntrex"]) == 21
    assert r["data_hash"] == data_hash(real_data)


def _mgsm_dir(root: Path, lines: dict[str, int]) -> Path:
    """An MGSM-only data dir: ``lines[lang]`` problems per language (the task wants 250), 8 exemplars."""
    (root / "mgsm").mkdir(parents=True)
    for lang, n in lines.items():
        (root / f"mgsm/mgsm_{lang}.tsv").write_text("".join(f"q{i}\t{i}\n" for i in range(n)), encoding="utf-8")
    ex = {lang: {str(i): {"q": f"Question: q{i}", "a": f"Answer: a{i}"} for i in range(1, 9)} for lang in lines}
    doc = {"MGSM_EXEMPLARS": ex, "EXEMPLAR_NUMBER_ANSWERS": list(range(8)), "EXEMPLAR_EQUATION_SOLUTIONS": ["1"] * 8}
    (root / "mgsm/mgsm_exemplars.json").write_text(json.dumps(doc), encoding="utf-8")
    listed = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(root).as_posix()}"
              for p in sorted(root.rglob("*")) if p.is_file()]
    (root / "SHA256SUMS").write_text("\n".join(listed) + "\n", encoding="utf-8")
    return root


def test_check_data_counts_through_the_tasks_own_loaders(tmp_path):
    from xlsteer.evaluation.tasks import get_task

    langs = get_task("mgsm").langs
    good = check_data(_mgsm_dir(tmp_path / "good", {lang: 250 for lang in langs}))
    assert good["ok"] and set(good["counts"]) == {"mgsm/train", "mgsm/dev", "mgsm/test"}  # only MGSM is here
    assert set(good["counts"]["mgsm/test"]) == set(langs) and set(good["counts"]["mgsm/test"].values()) == {200}
    short = check_data(_mgsm_dir(tmp_path / "short", {**{lang: 250 for lang in langs}, "sw": 249}))
    assert not short["ok"] and short["counts"]["mgsm/test"]["sw"] is None
    assert any(p.startswith("mgsm/test sw:") and "249 lines, expected 250" in p for p in short["problems"])


# ---------------------------------------------------------------------------------------------
# ParallelCorpus validation


def test_corpus_misaligned():
    with pytest.raises(DataError, match=r"^misaligned parallel data: de has 10 lines, en has 12"):
        ParallelCorpus(langs=["de", "en"], texts={"de": ["a"] * 10, "en": ["b"] * 12}, ids=[str(i) for i in range(12)])


def test_corpus_empty_and_bad_input():
    with pytest.raises(DataError, match="empty"):
        ParallelCorpus(langs=["de", "en"], texts={"de": [], "en": []}, ids=[])
    with pytest.raises(DataError, match="no languages"):
        ParallelCorpus(langs=[], texts={}, ids=[])
    with pytest.raises(DataError, match="do not match"):
        ParallelCorpus(langs=["de"], texts={"de": ["a"], "en": ["b"]}, ids=["0"])
    with pytest.raises(DataError, match="twice"):
        ParallelCorpus(langs=["de", "en"], texts={"de": ["a"], "deu": ["a"], "en": ["b"]}, ids=["0"])
    with pytest.raises(DataError, match="ids"):
        ParallelCorpus(langs=["de"], texts={"de": ["a", "b"]}, ids=["0"])
    with pytest.raises(DataError, match="unique"):
        ParallelCorpus(langs=["de"], texts={"de": ["a", "b"]}, ids=["0", "0"])
    with pytest.raises(LanguageError):
        ParallelCorpus(langs=["xx"], texts={"xx": ["a"]}, ids=["0"])


def test_corpus_methods():
    c = ParallelCorpus(
        langs=["deu", "en", "zho-CN"],
        texts={"deu": ["eins", "", "drei", "vier"], "en": ["one", "two", "three", "four"], "zho-CN": ["一", "二", "三", "四"]},
        ids=["r0", "r1", "r2", "r3"], name="toy", row_splits=["fit", "fit", "fit", "validation"],
    )
    assert c.langs == ["de", "en", "zh"] and len(c) == 4
    assert c.empty_counts() == {"de": 1, "en": 0, "zh": 0}
    s = c.select(["zh", "de"])
    assert s.langs == ["zh", "de"] and s.texts["zh"] == c.texts["zh"] and s.ids == c.ids
    with pytest.raises(LanguageError, match=r"corpus toy has no language 'fr'; available: de en zh"):
        c.select(["fr"])
    sub = c.subset([3, 0])
    assert sub.ids == ["r3", "r0"] and sub.texts["en"] == ["four", "one"] and sub.row_splits == ["validation", "fit"]
    with pytest.raises(UsageError, match="out of range"):
        c.subset([4])
    assert c.split("fit").ids == ["r0", "r1", "r2"] and c.split("validation").ids == ["r3"]
    assert c.split("all") is c
    with pytest.raises(UsageError):
        c.split("train")
    assert c.head(2).ids == ["r0", "r1"]
    with pytest.raises(DataError, match="no lines in split 'validation'"):
        c.split("fit").split("validation")


# ---------------------------------------------------------------------------------------------
# user files


def test_parallel_files(tmp_path):
    (tmp_path / "de.txt").write_bytes("\ufeffeins\r\nzwei\r\n\r\nvier\r\n".encode())
    (tmp_path / "en.txt").write_text("one\ntwo\nthree\nfour", encoding="utf-8")
    c = load_parallel_files({"de": tmp_path / "de.txt", "eng": tmp_path / "en.txt"})
    assert c.langs == ["de", "en"] and len(c) == 4
    assert c.texts["de"] == ["eins", "zwei", "", "vier"] and c.empty_counts()["de"] == 1
    assert c.ids[0] == f"{tmp_path.name}/0" and len(c.data_hash) == 64
    assert len(c.split("fit")) == 3 and len(c.split("validation")) == 1
    assert load_parallel_files({"de": tmp_path / "de.txt", "en": tmp_path / "en.txt"}).data_hash == c.data_hash
    (tmp_path / "en.txt").write_text("one\ntwo\nthree\nFOUR\n", encoding="utf-8")
    assert load_parallel_files({"de": tmp_path / "de.txt", "en": tmp_path / "en.txt"}).data_hash != c.data_hash


def test_parallel_files_errors(tmp_path):
    (tmp_path / "de.txt").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "en.txt").write_text("a\nb\nc\n", encoding="utf-8")
    with pytest.raises(DataError, match="misaligned parallel data: de has 2 lines, en has 3"):
        load_parallel_files({"de": tmp_path / "de.txt", "en": tmp_path / "en.txt"})
    (tmp_path / "fr.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"fr\.txt is not UTF-8"):
        load_parallel_files({"de": tmp_path / "de.txt", "fr": tmp_path / "fr.txt"})
    (tmp_path / "ru.txt").write_bytes(b"")
    (tmp_path / "uk.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_parallel_files({"ru": tmp_path / "ru.txt", "uk": tmp_path / "uk.txt"})
    with pytest.raises(DataError, match="does not exist"):
        load_parallel_files({"de": tmp_path / "de.txt", "it": tmp_path / "it.txt"})
    with pytest.raises(DataError, match="directory"):
        read_lines(tmp_path)
    with pytest.raises(UsageError):
        load_parallel_files({})


def test_load_corpus_directory(tmp_path):
    d = tmp_path / "mycorpus"
    d.mkdir()
    for lang in ("de", "en", "sw"):
        (d / f"{lang}.txt").write_text("".join(f"{lang} {i}\n" for i in range(8)), encoding="utf-8")
    (d / "notes.txt").write_text("not a language file\n")
    c = load_corpus(str(d), langs=["en", "de"], split="fit")
    assert c.langs == ["en", "de"] and len(c) == 6 and c.name == "mycorpus" and c.ids[0] == "mycorpus/0"
    assert len(load_corpus(d, split="validation")) == 2
    assert load_corpus(d, split="all", limit=3).langs == ["de", "en", "sw"]
    with pytest.raises(DataError, match=r"no file for language 'fr' \(expected fr.txt\)"):
        load_corpus(d, langs=["fr"])
    with pytest.raises(DataError, match="unknown corpus"):
        load_corpus(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="is a file"):
        load_corpus(d / "de.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no <lang>.txt files"):
        load_corpus(empty)
    with pytest.raises(UsageError):
        load_corpus(d, split="train")


# ---------------------------------------------------------------------------------------------
# real corpora


def test_ntrex_real(real_data):
    fit = load_ntrex(real_data, ["en", "deu", "zho-CN", "ja"], split="fit")
    val = load_ntrex(real_data, ["en", "de", "zh", "ja"], split="validation")
    full = load_ntrex(real_data, ["en", "de"], split="all")
    assert len(fit) == 1500 and len(val) == 497 and len(full) == 1997
    assert fit.ids[0] == "ntrex/0" and fit.ids[-1] == "ntrex/1499" and val.ids[0] == "ntrex/1500"
    assert not set(fit.ids) & set(val.ids)
    assert fit.langs == ["en", "de", "zh", "ja"]
    for lang in fit.langs:
        assert len(fit.texts[lang]) == 1500
        assert all("\r" not in t for t in fit.texts[lang])
    assert full.texts["en"][:1500] == fit.texts["en"] and full.texts["en"][1500:] == val.texts["en"]
    assert fit.data_hash == data_hash(real_data, fit.files)
    assert sorted(fit.files) == sorted([
        "ntrex128/newstest2019-src.eng.txt", "ntrex128/newstest2019-ref.deu.txt",
        "ntrex128/newstest2019-ref.zho-CN.txt", "ntrex128/newstest2019-ref.jpn.txt",
    ])
    assert len(load_ntrex(real_data, ["en"], limit=10)) == 10
    everything = load_ntrex(real_data, None, split="validation", limit=2)
    assert len(everything.langs) == 21
    with pytest.raises(LanguageError, match=r"^ntrex has no language 'qu'; available: en ar"):
        load_ntrex(real_data, ["en", "qu"])
    with pytest.raises(UsageError):
        load_ntrex(real_data, ["en"], split="dev")
    with pytest.raises(UsageError):
        load_ntrex(real_data, ["en"], limit=0)
    assert load_corpus("ntrex", real_data, ["en", "de"], "validation", 5).ids == [f"ntrex/{i}" for i in range(1500, 1505)]


def test_xquad_paragraphs_real(real_data):
    c = load_xquad_paragraphs(real_data, ["en", "de", "zh", "ar"])
    assert len(c) == 25 and c.ids[0] == "xquad/5/0" and c.ids[-1] == "xquad/9/4"
    assert {i.split("/")[1] for i in c.ids} == {"5", "6", "7", "8", "9"}
    assert all(not t.startswith("\ufeff") for ts in c.texts.values() for t in ts)
    assert c.data_hash == data_hash(real_data, c.files)
    assert len(load_corpus("xquad", real_data, ["en"], split="fit")) == 25
    with pytest.raises(DataError, match="validation"):
        load_corpus("xquad", real_data, ["en"], split="validation")
    with pytest.raises(UsageError, match="evaluation items"):
        load_xquad_paragraphs(real_data, ["en"], articles=range(0, 6))
    assert len(load_xquad_paragraphs(real_data, ["en"], articles=[0], allow_eval_articles=True)) == 5
    with pytest.raises(LanguageError, match="xquad has no language 'sw'"):
        load_xquad_paragraphs(real_data, ["sw"])
