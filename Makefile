# The two commands of the README: `make demo` (set-up + the main job) and `make test`.
.PHONY: setup setup-test demo test test-fast bench clean

setup:
	bash scripts/setup.sh

# the test suite's own extra environment (the LCB oracle); not needed by the demo
setup-test: setup
	bash scripts/setup_lcb_oracle.sh

demo: setup
	HF_HUB_OFFLINE=1 .venv/bin/xlsteer demo

test: setup setup-test
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=1800 tests

test-fast: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -m "not slow" tests

bench: setup
	HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/collect_speed.py

clean:
	rm -rf .venv .venv-lcb-oracle runs
