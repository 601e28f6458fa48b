#!/usr/bin/env bash
# The test suite's second environment, .venv-lcb-oracle: upstream's LCB metric program
# (compute_metrics.py in the data dir) runs there unmodified as an oracle for xlsteer's scorer
# (tests/test_lcb_oracle.py). It needs fastText's own bindings, which fail under numpy 2, so it
# cannot share xlsteer's environment. Created once, redone only when its pins change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
req=scripts/lcb_oracle_requirements.txt
venv=.venv-lcb-oracle
stamp=$venv/.installed
if [ -f "$stamp" ] && [ ! "$req" -nt "$stamp" ]; then
  echo "setup-test: ok ($venv)"
  exit 0
fi
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
touch "$stamp"
echo "setup-test: ok ($venv: $("$venv/bin/python" -c 'import fasttext, numpy; print("numpy", numpy.__version__)'))"
