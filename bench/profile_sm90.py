"""Run sage's attention kernel alone a few times on one shape, for Nsight Compute (run on a GPU).

    ncu --kernel-name regex:sm90_attn --launch-skip 2 --launch-count 1 --section WarpStateStats \
        python3 bench/profile_sm90.py --seq 8192 --head-dim 128 [--causal] [--family wgmma]

Inputs are quantized once, outside the launches ncu sees; the kernel then runs --repeat times.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()

    from sage_cli import kernels
    from sage_cli.settings import SageSettings

    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (args.batch, args.heads, args.seq, args.head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    prepared = kernels.prepare(q, k, v, SageSettings(), is_causal=args.causal, sm_scale=args.head_dim**-0.5)
    for _ in range(args.repeat):
        kernels.attention_only(prepared)
    torch.cuda.synchronize()
    print("ran", args.repeat, "launches of", shape, "causal" if args.causal else "non-causal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
