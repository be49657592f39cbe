# Every target installs first (idempotent, seconds when already installed).
# torch is pinned to the CPU build through constraints.txt: never a multi-GB CUDA download.
PY ?= python3
PIP_INSTALL = $(PY) -m pip install -q -c constraints.txt

.PHONY: install compare demo test test-all bench

install:
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[dev]"

compare: install  ## the main job: tuned baselines on held-out problems -> runs/main/report.md
	$(PY) scripts/compare.py --env l2o/Quadratic-v0 l2o/LogisticRegression-v0 --n-problems 100 --horizon 100 --long-horizon 1000 --out runs/main

demo: install  ## gradient descent as an agent of a registered vector env
	$(PY) scripts/demo.py --out runs/demo

test: install  ## the default test suite (slow studies excluded)
	$(PY) -m pytest -q

test-all: install  ## include @pytest.mark.slow studies
	$(PY) -m pytest -q -m "slow or not slow"

bench: install
	$(PY) scripts/bench.py env
