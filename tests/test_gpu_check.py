"""benchmarks/gpu_check.py must run where a GPU is: an image with torch, transformers,
accelerate, peft and numpy, no network and nothing else. Its ``--smoke`` mode (CPU, the same
architectures at tiny width, 2 layers) runs here on every test run, with every other
installed package made unimportable, so the GPU script cannot rot between GPU runs.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
GPU_IMAGE = ["torch", "transformers", "accelerate", "peft", "numpy"]


def _closure(names: list[str]) -> set[str]:
    """The installed distributions that ``names`` need (their non-optional requirements)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for text in reqs:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def blocked_modules() -> set[str]:
    """Top-level modules of every installed distribution that the GPU image would not have."""
    allowed = _closure(GPU_IMAGE) | {"xlsteer"}
    out = set()
    for module, dists in md.packages_distributions().items():
        if not any(canonicalize_name(d) in allowed for d in dists) and module not in sys.stdlib_module_names:
            out.add(module)
    return out


def gpu_image_site(dest: Path) -> Path:
    """A site folder holding only the GPU image's distributions (links into this environment).

    Run with ``python -S`` and this folder (plus ``src``) on PYTHONPATH, nothing else installed
    here can be imported; the dist-info folders come along, so version checks still work.
    """
    dest.mkdir()
    for name in sorted(_closure(GPU_IMAGE)):
        dist = md.distribution(name)
        for entry in {Path(str(f)).parts[0] for f in dist.files or []}:
            src = Path(str(dist.locate_file(entry)))
            if src.exists() and not (dest / entry).exists() and entry not in ("..", "bin"):
                (dest / entry).symlink_to(src)
    return dest


def test_the_blocked_set_holds_what_xlsteer_needs_beyond_the_gpu_image():
    blocked = blocked_modules()
    for module in ("scipy", "sklearn", "gguf", "platformdirs", "py3langid", "lm_eval", "matplotlib"):
        assert module in blocked
    for module in ("torch", "transformers", "accelerate", "peft", "numpy", "safetensors", "tqdm"):
        assert module not in blocked


@pytest.mark.slow
def test_gpu_check_smoke_runs_with_only_the_gpu_image_packages(tmp_path):
    site = gpu_image_site(tmp_path / "site")
    for module in ("scipy", "gguf", "platformdirs", "py3langid"):
        assert not (site / module).exists()
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT / 'src'}", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-S", str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["errors"] == {}
    checks = doc["summary"]["correctness"]
    assert len(checks) == 18 and all(checks.values()), checks  # 3 tiny + 5 per model + 5 spread by accelerate
    for key in ("llama3-8b/eager/batch32", "qwen2.5-7b/fast/batch1", "llama3-8b/fast/batch32",
                "llama3-8b/scoring/batch32", "llama3-8b/device_map_auto/eager/batch8"):
        assert key in doc["sections"]
    fast = doc["sections"]["llama3-8b/fast/batch1"]["rows"]
    assert [r["mode"] for r in fast] == ["unsteered", "vector", "clas"]
    assert all(r["graph_breaks"] == 0 and r["step_ms"] > 0 for r in fast)
    scoring = doc["sections"]["llama3-8b/scoring/batch32"]
    assert set(scoring["items_s"]) == {"auto", "shared_prefix", "full_forward", "full_forward_baseline"}
    assert scoring["strategies_max_abs_logprob_diff"] < 1e-3  # the two strategies score alike (fp32)
    assert "| correctness |" in proc.stdout and "Targets:" in proc.stdout
