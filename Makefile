# Every target installs first (idempotent, seconds when already installed).
# torch is pinned to the CPU build through constraints.txt: never a multi-GB CUDA download.
PY ?= python3
PIP_INSTALL = $(PY) -m pip install -q -c constraints.txt

.PHONY: install compare demo test test-all bench

install:
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[dev]"

compare: install  ## the main job: RL vs supervised learned optimizers vs tuned baselines -> runs/main/report.md
	$(PY) scripts/compare.py --preset study --out runs/main

demo: install  ## gradient descent as an agent of a registered vector env
	$(PY) scripts/demo.py --out runs/demo

test: install  ## the default test suite (slow studies excluded)
	$(PY) -m pytest -q

test-all: install  ## include @pytest.mark.slow studies
	$(PY) -m pytest -q -m "slow or not slow"

bench: install  ## speed figures (docs/benchmarks.md)
	$(PY) scripts/bench.py env
	$(PY) scripts/bench.py eval
	$(PY) scripts/bench.py lstm
	$(PY) scripts/bench.py busy
