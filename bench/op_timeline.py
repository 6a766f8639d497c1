"""Where the whole op's time goes between kernels: a CUPTI timeline of the op replayed as a CUDA graph (as
`sage bench` times it) and called eagerly, each kernel's start, end, length and gap to the one before.

    python3 bench/op_timeline.py [--seq 4096] [--head-dim 128]      # run on a GPU; B=1, H=32, bf16

A negative gap is overlap: programmatic dependent launch lets a kernel's blocks start (and wait) while the
one before it finishes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sage_cli.kernels import ops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--head-dim", type=int, default=128)
    args = ap.parse_args()
    q, k, v = (torch.randn(1, 32, args.seq, args.head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    fn = lambda: ops.sageattn_cuda(q, k, v)  # noqa: E731
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
        with torch.cuda.graph(graph, stream=stream):
            fn()
    torch.cuda.synchronize()
    for mode, run in (("graph", graph.replay), ("eager", fn)):
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(4):
                run()
            torch.cuda.synchronize()
        events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                        key=lambda e: e.time_range.start)
        t0, prev_end = events[0].time_range.start, None
        print(f"== {mode}, seq {args.seq}, head_dim {args.head_dim} (us: start, end, length, gap to the previous)")
        for e in events:
            start, end = e.time_range.start - t0, e.time_range.end - t0
            gap = "" if prev_end is None else f"gap {start - prev_end:+.1f}"
            print(f"{start:9.1f} {end:9.1f} {end - start:7.1f}  {gap:12s} {e.name[:70]}")
            prev_end = end


if __name__ == "__main__":
    main()
