"""The sm90 attention kernel's own GPU time (CUPTI) inside the whole op and alone, on the same inputs.

    python3 bench/attn_in_context.py [--seq 32768] [--head-dim 128]      # run on a GPU

`sage bench` times the whole op (quantization + attention) and the attention alone as two CUDA graphs; when
their difference is more than the quantization's own time, this says whether the attention kernel itself ran
longer after the quantization (eager calls, B=1, H=32, bf16, causal and not; 6 calls each after 2 warm-ups).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sage_cli.kernels import ops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=32768)
    ap.add_argument("--head-dim", type=int, default=128)
    args = ap.parse_args()
    for causal in (True, False):
        q, k, v = (torch.randn(1, 32, args.seq, args.head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        prepared = ops.prepare(q, k, v, is_causal=causal)
        runs = {"whole op": lambda: ops.sageattn_cuda(q, k, v, is_causal=causal),
                "alone": lambda: ops.attention_only(prepared)}
        for name, fn in runs.items():
            for _ in range(2):
                fn()
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(6):
                    fn()
                torch.cuda.synchronize()
            for e in prof.key_averages():
                if "sm90_attn" in e.key:
                    print(f"{'causal' if causal else 'non-causal':<11}{name:<9} attention kernel "
                          f"{e.device_time_total / e.count / 1000:.3f} ms (x{e.count})")


if __name__ == "__main__":
    main()
