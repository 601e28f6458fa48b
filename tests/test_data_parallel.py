"""Data-parallel eval and collect: two processes give the results of one, item by item.

A tiny random Llama saved to a folder stands in for a real model; the items are real XCOPA
items and NTREX lines from the data dir. The two-process runs are real launches in a
subprocess (``torchrun`` for eval, ``accelerate launch --multi_gpu`` for collect: on a machine
without GPUs it still starts two CPU processes with the torch.distributed environment;
``accelerate launch --cpu`` would start only one). They take 16-30 s each on two shared CPU
cores (process start-up), so they are not marked slow. A fast in-process test checks the
sharding and merge rule itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xlsteer.cli import main
from xlsteer.distributed import Dist
from xlsteer.io import load_tensors
from xlsteer.stats import Statistics
from xlsteer.testing import tiny_model

LANGS = "en,sw,zh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from xlsteer.interventions.vector import SteeringVector, vector_key
    from xlsteer.models.sites import Site

    root = tmp_path_factory.mktemp("dp")
    lm = tiny_model("llama", vocab_size=256)
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    iv = SteeringVector(sites=[Site(1, "resid_post")], tensors={vector_key(1): torch.randn(2, 64, generator=g)},
                        params={"normalize": "none"}, languages=["sw", "zh"], anchor="en", strength=2.0)
    iv.save(root / "iv.safetensors")
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", XLSTEER_QUIET="1",
               OMP_NUM_THREADS="1")
    return env


def _single(args: list[str]) -> int:
    """The single-process reference, in this process, with the launched processes' one thread.

    Why: on some CPUs (seen on AVX-512) float32 kernels round differently with another thread
    count, which is not what these tests compare.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(args)
    finally:
        torch.set_num_threads(threads)


def _launch(launcher: list[str], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([*launcher, "-m", "xlsteer", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(_free_port())]


def _accelerate() -> list[str]:
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if exe is None:
        pytest.skip("accelerate's launcher is not installed")
    return [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(_free_port())]


def test_two_process_eval_equals_one_process_item_by_item(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XLSTEER_QUIET", "1")
    common = ["eval", "--model", str(model_dir / "model"), "--task", "xcopa", "--langs", LANGS, "--split", "dev",
              "--limit", "10", "--batch-size", "4", "--intervention", str(model_dir / "iv.safetensors")]
    cache = tmp_path / "cache"
    proc = _launch(_torchrun(), [*common, "--cache-dir", str(cache), "-o", str(tmp_path / "dp.json")], tmp_path)
    assert proc.stdout.count("wrote ") == 1  # only rank 0 prints (and writes)
    assert _single([*common, "--no-cache", "-o", str(tmp_path / "single.json")]) == 0

    dp = json.loads((tmp_path / "dp.json").read_text())
    single = json.loads((tmp_path / "single.json").read_text())
    for run_dp, run_single in ((dp, single), (dp["baseline"], single["baseline"])):
        assert len(run_dp["items"]) == 30
        for a, b in zip(run_dp["items"], run_single["items"]):
            assert a == b  # ids, predictions, log-probs, metrics: exactly equal
        assert run_dp["per_lang"] == run_single["per_lang"]
        assert run_dp["average"] == run_single["average"]
    assert dp["comparison"] == single["comparison"]
    assert (tmp_path / "dp.json").read_bytes() == (tmp_path / "single.json").read_bytes()

    # the work was split: each process wrote its own cache file, with disjoint items covering all
    per_rank: dict[str, list[set[str]]] = {}
    for f in sorted(cache.glob("*.rank*.jsonl")):
        keys = {json.loads(line)["k"] for line in f.read_text().splitlines() if '"k"' in line}
        per_rank.setdefault(f.name.split(".rank")[0], []).append(keys)
    assert len(per_rank) == 2  # unsteered and steered scoring
    covered = []
    for parts in per_rank.values():
        assert len(parts) == 2 and parts[0] and parts[1] and not parts[0] & parts[1]
        covered.append(len(parts[0] | parts[1]))
    # unsteered: all 30 items; steered: the 20 non-anchor ones (anchor rows are the unsteered results)
    assert sorted(covered) == [20, 30]
    # and a single process reads the distributed run's cache back: same results
    assert _single([*common, "--cache-dir", str(cache), "-o", str(tmp_path / "cached.json")]) == 0
    assert (tmp_path / "cached.json").read_bytes() == (tmp_path / "single.json").read_bytes()


def test_two_process_collect_equals_one_process(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XLSTEER_QUIET", "1")
    common = ["collect", "--model", str(model_dir / "model"), "--langs", LANGS, "--limit", "10", "--batch-size", "4",
              "--layers", "all", "--site", "resid_post,mlp_act", "--keep-items", "--threshold", "0.1"]
    proc = _launch(_accelerate(), [*common, "-o", str(tmp_path / "dp.safetensors")], tmp_path)
    assert proc.stdout.count("wrote ") == 1
    assert _single([*common, "-o", str(tmp_path / "single.safetensors")]) == 0

    dp_t, dp_meta = load_tensors(tmp_path / "dp.safetensors")
    one_t, one_meta = load_tensors(tmp_path / "single.safetensors")
    drop = ("provenance",)
    assert {k: v for k, v in dp_meta.items() if k not in drop} == {k: v for k, v in one_meta.items() if k not in drop}
    assert sorted(dp_t) == sorted(one_t)
    for key in one_t:
        if key.endswith("|items"):  # per-text vectors, in the single-process order
            assert torch.equal(dp_t[key], one_t[key]), key
        else:  # float64 sums: the order of additions differs, so equal up to float64 rounding
            torch.testing.assert_close(dp_t[key], one_t[key], rtol=1e-12, atol=1e-12)
    dp, one = Statistics.load(tmp_path / "dp.safetensors"), Statistics.load(tmp_path / "single.safetensors")
    for lang in LANGS.split(","):
        for site in one.sites:
            assert dp.counts(lang, site) == one.counts(lang, site)  # exact
            for level in ("item", "token"):
                # float32 read-outs: the ~1e-16 float64 differences vanish (well inside 1e-6)
                torch.testing.assert_close(dp.mean(lang, site, level), one.mean(lang, site, level), rtol=1e-6, atol=0)
                torch.testing.assert_close(dp.var(lang, site, level), one.var(lang, site, level), rtol=1e-6, atol=1e-12)
            assert torch.equal(dp.prob_active(lang, site), one.prob_active(lang, site))


class _Shard(Dist):
    """Rank ``rank`` of ``world`` for batch ownership, without a process group (no gather)."""

    @property
    def active(self) -> bool:
        return False


def test_sharded_collect_merges_to_the_single_process_statistics(monkeypatch):
    import xlsteer.distributed as D
    from xlsteer.models.sites import Site
    from xlsteer.stats import collect, merge_shards

    lm = tiny_model("gemma3")
    texts = {"en": [f"text number {i} " * (1 + i % 3) for i in range(7)],
             "sw": [f"maandishi {i}" for i in range(5)]}
    sites = [Site(0, "resid_post"), Site(1, "mlp_act")]
    kw = dict(keep_items=True, batch_size=2, pooling="last")
    single = collect(lm, texts, sites, **kw)
    world = 3
    shards = []
    for rank in range(world):
        monkeypatch.setattr(D, "current", lambda rank=rank: _Shard(rank=rank, world=world))
        shards.append(collect(lm, texts, sites, **kw))
    batch_langs = [lang for lang, items in texts.items() for _ in range(0, len(items), 2)]
    merged = merge_shards(shards, batch_langs, world)
    assert [s.counts("en", sites[0]) for s in shards] != [single.counts("en", sites[0])] * world  # really split
    for key, a in single.acc.items():
        b = merged.acc[key]
        assert (b.n_items, b.n_tokens) == (a.n_items, a.n_tokens)
        assert torch.equal(torch.cat(b.items), torch.cat(a.items))  # per-text vectors in single-process order
        for name in ("tok_sum", "tok_sumsq", "tok_pos", "tok_thr", "item_sum", "item_sumsq"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-12, atol=1e-12)


def test_not_distributed_without_the_launch_environment(monkeypatch):
    import xlsteer.distributed as D

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(D, "_STATE", {})
    d = D.current()
    assert (d.rank, d.world, d.active, d.is_main) == (0, 1, False, True)
    assert d.gather("x") == ["x"] and all(d.owns(k) for k in range(5))
    assert d.device("cuda") == "cuda"
    assert D.Dist(rank=1, world=2, local_rank=1).device("cuda") == "cuda:1"
    assert [k for k in range(6) if D.Dist(rank=1, world=2).owns(k)] == [1, 3, 5]
