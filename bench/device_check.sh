#!/usr/bin/env bash
# One device call after a kernel change (the lent H100; logs under $OUT):
#   1. the GPU tests (kernels against numerics/ and float64, the op, the bench's accuracy slice);
#   2. `sage bench` over the issue's shapes beside FlashAttention-3 (the fa3-fwd wheel, when carried in .whl/).
# Usage: bash bench/device_check.sh [tests|bench|all]   (default all)
# Kernels are JIT-built, or taken from $SAGE_CACHE_DIR when it holds a build of these sources.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
what=${1:-all}
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv,noheader | tee "$out/gpu.txt"
python3 -m sage_cli.cli build --arch 90a > "$out/build.txt" 2>&1 || { cat "$out/build.txt"; exit 1; }
if [[ $what == tests || $what == all ]]; then
  timeout 300 python3 -m pytest -q -m gpu tests/ 2>&1 | tee "$out/gpu_tests.txt" | tail -4
fi
if [[ $what == bench || $what == all ]]; then
  bench() { python3 -m sage_cli.cli bench --peers fa3,fa3-fp8 "$@" 2>&1 | tee -a "$out/bench.txt"; }
  bench --seq 4k,32k --head-dim 64,128 --batch 1 --heads 32
  bench --seq 32k --head-dim 128 --batch 1 --heads 32 --causal
fi
