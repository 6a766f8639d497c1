"""Time sage's quantization (sage_quantize: a memset and two kernels) alone, against the bytes they must move.

    python3 bench/quant_bench.py            # prints one line per shape; run on a GPU

Two times: eager (Python, ctypes and launch gaps included) and the same calls captured in a CUDA graph
(GPU time; the graph replays on one input set, so at small sizes part of it may come from L2).
Bytes counted: Q, K, V read once (fp16) + K and V read a second time (K's mean and V's amax are needed
before any token is quantized; the second read partly hits L2 at small sizes) + q_int, k_int, v_fp8 written
(1 byte each). Time: CUDA events, median of 50 after warm-up,
4 rotating input sets so that the inputs do not sit in L2.
"""
from __future__ import annotations

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
            nbytes = 2 * d * n * b * (hq + 4 * hkv) + d * n * b * (hq + 2 * hkv)
            print(f"{str((b, hq, hkv, n, d)):<24}{s.label():<22}{ms:8.3f}{gms:9.3f}{nbytes / gms / 1e6:8.0f}{nbytes / 3.0e9:10.3f}")


def kernel_breakdown() -> None:
    """Per-kernel GPU time (CUPTI through torch.profiler) at B=1, Hq=32, Hkv=8, N=4096, D=128."""
    q = torch.randn(1, 32, 4096, 128, device="cuda", dtype=torch.float16)
    k, v = (torch.randn(1, 8, 4096, 128, device="cuda", dtype=torch.float16) for _ in range(2))
    for s in (SageSettings(), SageSettings(smooth_q=True, smooth_v=True)):
        kernels.quantize(q, k, v, s)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                kernels.quantize(q, k, v, s)
            torch.cuda.synchronize()
        print(f"-- per-kernel, {s.label()} (20 calls)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))


if __name__ == "__main__":
    main()
    if "--breakdown" in sys.argv:
        kernel_breakdown()
