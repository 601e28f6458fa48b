"""The same command twice gives byte-identical results.

``eval`` and ``sweep`` JSON records hold no wall-clock times or dates (runner.py says so; the
key scan below keeps it true), so whole files compare. Safetensors artifacts carry provenance
(creation time) and fit durations in their metadata; those keys are the engine's
``VOLATILE_META`` and the only difference allowed, and with ``SOURCE_DATE_EPOCH`` set (the
reproducible-builds convention) a statistics file is byte-identical too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from xlsteer.cli import main
from xlsteer.evaluation.engine_cache import VOLATILE_META
from xlsteer.io import load_tensors
from xlsteer.testing import tiny_model

#: Keys that would smuggle times into a record meant to compare byte for byte.
TIME_KEY = re.compile(r"(time|seconds|date|created|timestamp|duration|elapsed|_at)$", re.I)


@pytest.fixture(scope="module", autouse=True)
def _setting(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("XLSTEER_QUIET", "1")
    mp.setenv("XLSTEER_CACHE_DIR", str(tmp_path_factory.mktemp("xlsteer_cache")))
    mp.delenv("XLSTEER_DEBUG", raising=False)  # a --debug run elsewhere leaves it set for the process
    mp.delenv("SOURCE_DATE_EPOCH", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    lm = tiny_model("llama")
    lm.model.save_pretrained(root / "tiny")
    lm.tokenizer.save_pretrained(root / "tiny")
    model = str(root / "tiny")
    stats = root / "stats.safetensors"
    assert main(["collect", "--model", model, "--langs", "en,sw,zh", "--limit", "16", "--max-length", "48",
                 "-o", str(stats)]) == 0
    vec = root / "vec.safetensors"
    from xlsteer.interventions.vector import fit_diffmean
    from xlsteer.stats import Statistics

    fit_diffmean(Statistics.load(stats), [1], ["sw", "zh"], normalize="unit").save(vec)
    return {"root": root, "model": model, "stats": str(stats), "vec": str(vec)}


def _time_keys(obj, path="") -> list[str]:
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if TIME_KEY.search(str(k)):
                found.append(f"{path}/{k}")
            found += _time_keys(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            found += _time_keys(v, f"{path}[{i}]")
    return found


def _twice(argv_of, tmp_path: Path) -> tuple[Path, Path]:
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run / "out.json"  # same file name: sweep records the best file's name
        assert main(argv_of(out, tmp_path / run / "cache")) == 0
        outs.append(out)
    return outs[0], outs[1]


def _eval(env, *extra):
    def argv(out, cache):
        return ["eval", "--model", env["model"], "--task", "xcopa", "--langs", "en,sw,zh", "--split", "dev",
                "--limit", "12", "--batch-size", "5", "--cache-dir", str(cache), *extra, "-o", str(out)]
    return argv


@pytest.mark.parametrize("steered", [False, True], ids=["unsteered", "steered"])
def test_eval_twice_is_byte_identical(env, tmp_path, steered):
    extra = ["--intervention", env["vec"], "--alpha", "3"] if steered else []
    a, b = _twice(_eval(env, *extra), tmp_path)
    assert a.read_bytes() == b.read_bytes()
    record = json.loads(a.read_text())
    assert _time_keys(record) == [], "no wall-clock times in a results file"
    if steered:
        assert record["comparison"]["per_lang"]["sw"]["prediction_changed"] >= 0


def test_eval_from_the_cache_equals_a_fresh_run(env, tmp_path):
    """A second run reading every score from the cache writes the same bytes as a run without a cache."""
    argv = _eval(env)
    cache = tmp_path / "cache"
    assert main(argv(tmp_path / "filled" / "out.json", cache)) == 0
    assert main(argv(tmp_path / "cached" / "out.json", cache)) == 0
    fresh = tmp_path / "fresh" / "out.json"
    assert main(argv(fresh, tmp_path / "unused")[:-2] + ["--no-cache", "-o", str(fresh)]) == 0
    assert (tmp_path / "cached" / "out.json").read_bytes() == fresh.read_bytes()
    assert (tmp_path / "filled" / "out.json").read_bytes() == fresh.read_bytes()


def test_generation_task_twice_is_byte_identical(env, tmp_path):
    def argv(out, cache):
        return ["eval", "--model", env["model"], "--task", "mgsm", "--langs", "en,sw", "--limit", "3",
                "--max-new-tokens", "6", "--no-cache", "-o", str(out)]
    a, b = _twice(argv, tmp_path)
    assert a.read_bytes() == b.read_bytes()


def test_sweep_twice_is_byte_identical(env, tmp_path):
    def argv(out, cache):
        return ["sweep", "--model", env["model"], "--task", "xcopa", "--langs", "en,sw,zh", "--limit", "8",
                "--stats", env["stats"], "--layers", "0,1", "--alphas", "1,4", "--cache-dir", str(cache),
                "-o", str(out)]
    a, b = _twice(argv, tmp_path)
    assert a.read_bytes() == b.read_bytes()
    record = json.loads(a.read_text())
    assert _time_keys(record) == []
    if not record["best"]["steer"]:  # "no steering" on dev evidence: neither run writes an intervention
        assert not a.with_name("out.best.safetensors").exists() and not b.with_name("out.best.safetensors").exists()
        return
    # the selected intervention: same tensors; metadata equal but for provenance and fit durations
    ta, ma = load_tensors(a.with_name("out.best.safetensors"))
    tb, mb = load_tensors(b.with_name("out.best.safetensors"))
    assert sorted(ta) == sorted(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    volatile = VOLATILE_META - {"strength"}
    assert {k: v for k, v in ma.items() if k not in volatile} == {k: v for k, v in mb.items() if k not in volatile}


def _collect(env, out):
    return ["collect", "--model", env["model"], "--langs", "en,de,sw", "--limit", "12", "--max-length", "48",
            "--site", "resid_post,mlp_act", "--keep-items", "-o", str(out)]


def test_collect_twice_gives_the_same_statistics(env, tmp_path):
    a, b = tmp_path / "a" / "s.safetensors", tmp_path / "b" / "s.safetensors"
    assert main(_collect(env, a)) == 0 and main(_collect(env, b)) == 0
    ta, ma = load_tensors(a)
    tb, mb = load_tensors(b)
    assert sorted(ta) == sorted(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    # only the creation time may differ, and it sits in "provenance", apart from everything compared
    pa, pb = ma.pop("provenance"), mb.pop("provenance")
    assert ma == mb and _time_keys(ma) == []
    assert {k: v for k, v in pa.items() if k != "created"} == {k: v for k, v in pb.items() if k != "created"}


def test_collect_with_source_date_epoch_is_byte_identical(env, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a, b = tmp_path / "a" / "s.safetensors", tmp_path / "b" / "s.safetensors"
    assert main(_collect(env, a)) == 0 and main(_collect(env, b)) == 0
    assert a.read_bytes() == b.read_bytes()
    assert load_tensors(a)[1]["provenance"]["created"] == "2023-11-14T22:13:20Z"
