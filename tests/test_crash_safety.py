"""Crash safety: ``collect``, ``eval`` and ``sweep`` killed with SIGKILL at a random point, then re-run.

The re-run must write a file byte-identical to an uninterrupted run's, reuse the work the
killed run finished (the evaluation engine's per-item JSONL cache: every item computed before
the kill is read back, none is computed twice, so the cache ends with exactly as many entries
as an uninterrupted run's) and leave no temp file behind.

Why a fork server: each run is a separate process killed with SIGKILL, but importing torch and
transformers takes 10-20 s on a busy CPU. One helper process imports them once and forks a
child per command (``os.fork`` + ``xlsteer.cli.main(argv)``, exactly what the ``xlsteer``
script runs), so a run takes about a second on the tiny model. ``collect`` keeps no per-item
state (it writes its statistics once, atomically, at the end): its re-run recomputes all.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xlsteer.testing import tiny_model

SEEDS = [11, 22, 33]  # the first runs in the quick set; the others are marked slow
START_EPOCH = "1700000000"  # SOURCE_DATE_EPOCH: provenance times are fixed, so whole files compare

SERVER = r"""
import json, os, sys, traceback
import torch
torch.set_num_threads(1)
import transformers
from transformers.models.llama import modeling_llama  # noqa: F401
import safetensors.torch  # noqa: F401
import xlsteer.cli
import xlsteer.stats, xlsteer.evaluation.runner, xlsteer.evaluation.sweep  # noqa: F401
import xlsteer.interventions.vector, xlsteer.models.loading, xlsteer.data.corpora  # noqa: F401
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            for key, value in req.get("env", {}).items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = xlsteer.cli.main(req["argv"])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"pid": pid, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                      "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)
"""


class ForkServer:
    """A warm Python process that runs each command in a forked child (killable on its own)."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        assert "ready" in json.loads(self.proc.stdout.readline())

    def start(self, argv: list[str], log: Path, env: dict | None = None) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "env": env or {}}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def wait(self) -> dict:
        return json.loads(self.proc.stdout.readline())

    def run(self, argv: list[str], log: Path) -> tuple[dict, float]:
        t0 = time.perf_counter()
        self.start(argv, log)
        done = self.wait()
        return done, time.perf_counter() - t0

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from xlsteer.stats import collect_statistics
    from xlsteer.models.loading import load_model
    from xlsteer.models.sites import Site

    import torch

    mp = pytest.MonkeyPatch()
    mp.setenv("XLSTEER_QUIET", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("crash")
    lm = tiny_model("llama")
    lm.model.save_pretrained(root / "tiny")
    lm.tokenizer.save_pretrained(root / "tiny")
    model = str(root / "tiny")
    loaded = load_model(model)
    stats = collect_statistics(loaded, langs=["en", "sw", "zh"], sites=[Site(0, "resid_post"), Site(1, "resid_post")],
                               limit=24, max_length=48)
    stats_path = root / "stats.safetensors"
    stats.save(stats_path)
    from xlsteer.interventions.vector import fit_diffmean

    vec = fit_diffmean(stats, [1], ["sw", "zh"], anchor="en", normalize="unit")
    vec_path = root / "vec.safetensors"
    vec.save(vec_path)
    env = dict(os.environ, XLSTEER_QUIET="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               XLSTEER_CACHE_DIR=str(root / "xlsteer_cache"), SOURCE_DATE_EPOCH=START_EPOCH,
               TQDM_MININTERVAL="0")  # progress bars (collect's, see below) report every batch
    env.pop("XLSTEER_DEBUG", None)
    server = ForkServer(env)
    torch.set_num_threads(threads)
    yield {"root": root, "model": model, "stats": str(stats_path), "vec": str(vec_path), "server": server}
    server.close()
    mp.undo()


def _argv(s: dict, command: str, out_dir: Path, cache: Path) -> list[str]:
    if command == "collect":
        return ["collect", "--model", s["model"], "--langs", "en,de,sw,zh", "--limit", "100", "--max-length", "96",
                "--site", "resid_post,mlp_act", "-o", str(out_dir / "stats.safetensors")]
    if command == "eval":
        return ["eval", "--model", s["model"], "--task", "xcopa", "--langs", "en,sw,zh", "--split", "dev",
                "--limit", "64", "--batch-size", "4", "--intervention", s["vec"], "--alpha", "2",
                "--cache-dir", str(cache), "-o", str(out_dir / "out.json")]
    return ["sweep", "--model", s["model"], "--task", "xcopa", "--langs", "en,sw,zh", "--limit", "24",
            "--batch-size", "4", "--stats", s["stats"], "--layers", "0,1", "--alphas", "1,4",
            "--cache-dir", str(cache), "-o", str(out_dir / "out.json")]


def _cache_entries(cache: Path) -> int:
    """Complete ``{"k": ..., "v": ...}`` lines in every cache file (a torn last line does not count)."""
    n = 0
    for f in sorted(cache.glob("*.jsonl")) if cache.is_dir() else []:
        for line in f.read_bytes().split(b"\n"):
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            n += isinstance(rec, dict) and "k" in rec
    return n


def _progress(log: Path) -> float:
    """The share done according to the last tqdm update in ``log`` ("collect:  37%|...")."""
    import re

    found = re.findall(r"(\d+)/(\d+) \[", log.read_text(errors="replace")) if log.is_file() else []
    return int(found[-1][0]) / max(1, int(found[-1][1])) if found else 0.0


def _temps(*dirs: Path) -> list[str]:
    return [p.name for d in dirs if d.is_dir() for p in d.iterdir() if p.name.endswith(".tmp")]


def _outputs(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


def _comparable(name: str, data: bytes) -> bytes:
    """The bytes to compare: everything, except the fit durations a sweep's best intervention records."""
    if not name.endswith(".best.safetensors"):
        return data
    from safetensors.torch import load

    n = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8:8 + n])["__metadata__"]["xlsteer"])
    for key in ("fit_seconds", "collect_seconds"):
        meta.pop(key, None)
    tensors = load(data)
    return json.dumps(meta, sort_keys=True).encode() + b"".join(
        k.encode() + tensors[k].numpy().tobytes() for k in sorted(tensors))


@pytest.fixture(scope="module")
def references(setup):
    """One uninterrupted run per command: its files, its cache size and its duration."""
    refs = {}
    for command in ("collect", "eval", "sweep"):
        out_dir = setup["root"] / f"ref-{command}"
        out_dir.mkdir()
        cache = setup["root"] / f"ref-{command}-cache"
        log_file = out_dir.parent / f"ref-{command}.log"
        done, seconds = setup["server"].run(_argv(setup, command, out_dir, cache), log_file)
        log = log_file.read_text()
        assert done["code"] == 0, log
        refs[command] = {"files": _outputs(out_dir), "entries": _cache_entries(cache), "seconds": seconds}
    return refs


@pytest.mark.parametrize("seed", [SEEDS[0]] + [pytest.param(s, marks=pytest.mark.slow) for s in SEEDS[1:]])
@pytest.mark.parametrize("command", ["collect", "eval", "sweep"])
def test_kill_and_resume(setup, references, command, seed):
    ref = references[command]
    rng = random.Random(f"{command}-{seed}")
    trial = setup["root"] / f"{command}-{seed}"
    out_dir, cache = trial / "out", trial / "cache"
    out_dir.mkdir(parents=True)
    argv = _argv(setup, command, out_dir, cache)
    server = setup["server"]

    share = rng.uniform(0.1, 0.8)
    log = trial / "killed.log"
    # collect keeps no per-item state: its progress bar (on, in the log) says how far it is
    pid = server.start(argv, log, env={"XLSTEER_QUIET": None} if command == "collect" else None)
    try:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 300:
            if command == "collect":
                if _progress(log) >= share:
                    break
            elif _cache_entries(cache) >= share * ref["entries"]:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.01))  # a random moment later: between or inside batches
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it finished first: the assertion below says so
    finally:
        killed = server.wait()  # keeps the server in step
    assert killed["signal"] == signal.SIGKILL, f"the run ended before the kill: {killed}"
    after_kill = _cache_entries(cache)
    print(f"{command} seed {seed}: killed at {share:.0%} ({after_kill} of {ref['entries']} cache entries)")
    partial = _outputs(out_dir)
    for name, data in partial.items():  # whatever is there is complete (atomic writes), never half a file
        assert name.endswith(".tmp") or _comparable(name, data) == _comparable(name, ref["files"][name]), name
    if command != "collect":
        assert 0 < after_kill < ref["entries"], (after_kill, ref["entries"])
        assert "out.json" not in partial

    done, _ = server.run(argv, trial / "rerun.log")
    assert done["code"] == 0, (trial / "rerun.log").read_text()
    final = _outputs(out_dir)
    assert sorted(final) == sorted(ref["files"]), "the same files, and no temp file"
    for name, data in final.items():
        assert _comparable(name, data) == _comparable(name, ref["files"][name]), f"{name} differs"
    assert _temps(out_dir, cache) == []
    if command != "collect":
        # every item the killed run finished was read back: nothing computed twice
        assert _cache_entries(cache) == ref["entries"]
