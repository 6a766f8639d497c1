"""Time sage's quantization (sage_quantize: a memset and one or two kernels) alone, against the bytes they move.

    python3 bench/quant_bench.py            # prints one line per shape; run on a GPU
    python3 bench/quant_bench.py --breakdown  # then each kernel's own time (CUPTI) at the bench's shapes
    SAGE_QUANT_KV=passes python3 bench/quant_bench.py   # the two passes instead of the one-read launch

Two times: eager (Python, ctypes and launch gaps included) and the same calls captured in a CUDA graph
(GPU time; the graph replays on one input set, so at small sizes part of it may come from L2).
Bytes counted: Q, K, V read once (fp16) + q_int, k_int, v_fp8 written (1 byte each), + with
SAGE_QUANT_KV=passes K and V read a second time (K's mean and V's amax are needed before any token is
quantized; the second read partly hits L2 at small sizes). Time: CUDA events, median of 50 after warm-up,
4 rotating input sets so that the inputs do not sit in L2.
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sage_cli import kernels  # noqa: E402
from sage_cli.settings import SageSettings  # noqa: E402


def time_ms(fn, reps: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main() -> None:
    print(f"{'shape (B,Hq,Hkv,N,D)':<24}{'settings':<22}{'ms':>8}{'graph ms':>9}{'GB/s':>8}{'floor ms':>10}")
    for b, hq, hkv, n, d in [(1, 32, 8, 4096, 128), (1, 32, 32, 4096, 128), (1, 32, 8, 16384, 128), (2, 24, 24, 4096, 64)]:
        sets = [[torch.randn(b, h, n, d, device="cuda", dtype=torch.float16) for h in (hq, hkv, hkv)] for _ in range(4)]
        for s in (SageSettings(), SageSettings(smooth_q=True, smooth_v=True)):
            i = [0]

            def run():
                q, k, v = sets[i[0] % 4]
                i[0] += 1
                kernels.quantize(q, k, v, s)

            ms = time_ms(run)
            # the same work captured in a CUDA graph: GPU time without Python and launch overhead
            q, k, v = sets[0]
            kernels.quantize(q, k, v, s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                kernels.quantize(q, k, v, s)
            gms = time_ms(g.replay)
            reads = 4 if os.environ.get("SAGE_QUANT_KV") == "passes" else 2  # K and V, each once or twice
            nbytes = 2 * d * n * b * (hq + reads * hkv) + d * n * b * (hq + 2 * hkv)
            print(f"{str((b, hq, hkv, n, d)):<24}{s.label():<22}{ms:8.3f}{gms:9.3f}{nbytes / gms / 1e6:8.0f}{nbytes / 3.0e9:10.3f}")


def _short(kernel_name: str) -> str:
    """'void sage::quant::(anonymous namespace)::kv_tiles<128, 1, 0>(SageQuantParams, int, int)' -> 'kv_tiles'."""
    name = kernel_name.replace("(anonymous namespace)::", "").removeprefix("void ")
    return name.split("<")[0].split("(")[0].split("::")[-1].strip()


def kernel_breakdown() -> None:
    """Per-kernel GPU time (CUPTI through torch.profiler), microseconds per call: sage bench's shape (B=1,
    Hq=Hkv=32, D=128, bf16) at 4k and 32k, and B=1, Hq=32, Hkv=8, 4k, fp16."""
    for b, hq, hkv, n, d, dtype in [(1, 32, 32, 4096, 128, torch.bfloat16), (1, 32, 32, 32768, 128, torch.bfloat16),
                                    (1, 32, 8, 4096, 128, torch.float16)]:
        q = torch.randn(b, hq, n, d, device="cuda", dtype=dtype)
        k, v = (torch.randn(b, hkv, n, d, device="cuda", dtype=dtype) for _ in range(2))
        # smooth Q's bias at 32k x 32k is over the op's size limit (SAGE_MAX_SMOOTH_Q_BIAS_BYTES)
        for s in (SageSettings(), SageSettings(smooth_q=True, smooth_v=True))[: 1 if n > 16384 else 2]:
            for _ in range(3):
                kernels.quantize(q, k, v, s)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    kernels.quantize(q, k, v, s)
                torch.cuda.synchronize()
            per_call = {e.key: e.device_time_total / 10 for e in prof.key_averages() if e.device_time_total > 0}
            cells = ", ".join(f"{_short(name)} {us:.1f}" for name, us in per_call.items())
            print(f"{str((b, hq, hkv, n, d, str(dtype)[6:])):<40}{s.label():<22}{cells}")


if __name__ == "__main__":
    main()
    if "--breakdown" in sys.argv:
        kernel_breakdown()
