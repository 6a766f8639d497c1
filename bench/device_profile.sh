#!/usr/bin/env bash
# Where the sm90 attention kernel's time goes, on the lent H100 (one device call; logs under $OUT):
#   1. the issue rate of each instruction the softmax uses (bench/pipe_rates.cu);
#   2. Nsight Compute on the kernel alone at 8k tokens, D = 128 and 64: stall reasons, pipe utilisation,
#      issue-slot use, and the SASS of the hot loop with its stall samples (CSV).
# Usage: bash bench/device_profile.sh [SEQ]   (kernels are JIT-built, or taken from $SAGE_CACHE_DIR)
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
seq=${1:-8192}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$out/gpu.txt"
nvcc --version | tail -2 >> "$out/gpu.txt"
nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a bench/pipe_rates.cu -o /tmp/pipe_rates \
  && /tmp/pipe_rates | tee "$out/pipe_rates.txt"
python3 -m sage_cli.cli build --arch 90a > "$out/build.txt" 2>&1 || { cat "$out/build.txt"; exit 1; }
metrics="sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fmaheavy.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed.avg.per_cycle_active,smsp__issue_active.avg.pct_of_peak_sustained_active"
for d in 128 64; do
  ncu --kernel-name regex:sm90_attn --launch-skip 1 --launch-count 1 \
    --section WarpStateStats --section SchedulerStats --section InstructionStats --section SpeedOfLight \
    --section SourceCounters --metrics "$metrics" --export "/tmp/prof_d$d" --force-overwrite \
    python3 bench/profile_sm90.py --seq "$seq" --head-dim $d --repeat 2 > "$out/ncu_d$d.txt" 2>&1
  ncu --import "/tmp/prof_d$d.ncu-rep" --page source --print-source sass --csv > "/tmp/src_d$d.csv" 2>&1
  gzip -c "/tmp/src_d$d.csv" > "$out/src_d$d.csv.gz"
  grep -E "Stall|stall|Issue|IPC|Warp Cycles|pipe|Throughput|Duration|inst_executed|issue_active" "$out/ncu_d$d.txt" | head -80
done
