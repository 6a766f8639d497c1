"""Host overhead of one eager `sageattn_cuda` call (tiny shape, so the GPU work is negligible).

    python3 bench/kernels_overhead.py       # wall time per call and the top of a cProfile
"""
from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sage_cli import kernels  # noqa: E402
from sage_cli.settings import SageSettings  # noqa: E402

q = torch.randn(1, 8, 1, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 2, 256, 128, device="cuda", dtype=torch.bfloat16)
v = torch.randn_like(k)
s = SageSettings()
for _ in range(20):
    kernels.sageattn_cuda(q, k, v, settings=s)
torch.cuda.synchronize()
n = 500
t = time.perf_counter()
for _ in range(n):
    kernels.sageattn_cuda(q, k, v, settings=s)
torch.cuda.synchronize()
print(f"sageattn_cuda eager: {(time.perf_counter() - t) / n * 1e6:.1f} us per call (Nq=1, Nk=256)")
t = time.perf_counter()
for _ in range(n):
    torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
torch.cuda.synchronize()
print(f"SDPA eager (same shape): {(time.perf_counter() - t) / n * 1e6:.1f} us per call")
prof = cProfile.Profile()
prof.enable()
for _ in range(200):
    kernels.sageattn_cuda(q, k, v, settings=s)
prof.disable()
torch.cuda.synchronize()
pstats.Stats(prof).sort_stats("tottime").print_stats(18)
