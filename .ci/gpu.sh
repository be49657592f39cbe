#!/usr/bin/env bash
# The device checks (CUDA tests and GPU benchmarks) as one script, for a session lent a GPU machine
# (docs/benchmarks.md, "CUDA tests"). Not part of CI, which has no GPU. It expects the wheels the GPU image lacks
# in .whl/ (gymnasium, stable-baselines3, mlxtend, farama-notifications; pure Python) and writes logs to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; nproc; } | tee "$OUT/machine.log"
start=$(date +%s)
timeout 240 python3 -m pytest -q -m cuda -o addopts="" -p no:cacheprovider -rs -rP tests 2>&1 | tee "$OUT/cuda_tests.log"
echo "cuda tests: $(( $(date +%s) - start )) s"
timeout 90 python3 scripts/bench.py nn --device cuda --steps 20 2>&1 | tee "$OUT/bench_nn.log"
timeout 180 torchrun --standalone --nproc_per_node 1 scripts/bench.py conv-gps --device cuda --iters 2 2>&1 | tee "$OUT/bench_conv_gps.log"
echo "total: $(( $(date +%s) - start )) s"
