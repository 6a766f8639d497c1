"""Where the sm90 attention kernel's time goes per work tile, from clock stamps (run on a GPU).

    python3 bench/tile_trace.py 4k:128 32k:128 32k:128:causal      # B=1, H=32, bf16, like sage bench
    python3 bench/tile_trace.py --csrc path/to/variant/csrc 4k:128  # a variant's sources
    python3 bench/tile_trace.py --build-only                        # build (or find) the traced library, no GPU

Builds its own library: a copy of csrc/ with SAGE_TRACE defined (csrc/sm90/trace.cuh says what is stamped),
cached like any build of those sources, so `--build-only` on a machine with nvcc prepares it for a GPU
machine that shares $SAGE_CACHE_DIR. Then, per case, it times the kernel alone (`ops.attention_only`, ten
launches after five warm-up ones) and runs it once more to read the stamps. Printed, in SM clocks:

  per-step        the steady K step: (after the last step - after the first) / (K tiles - 1), per consumer tile
  q wait          tile start -> the full_q wait returns (includes the q_scale loads issued before it)
  first step      the first K step (no P.V of a previous tile beside it)
  last P.V        the last K step -> its P.V waited for
  epilogue        last P.V -> O and LSE stored
  gap             epilogue end -> the next tile's start
  tile overhead   tile time - K tiles x per-step, in clocks and in steps
  consumer skew   |consumer 0 - consumer 1| at their last K steps
  phase           per K step of each CTA's second tile: the two consumers' offset in steps, folded into
                  [0, 0.5] (0: in step, 0.5: half a step apart), and the mean step time at each offset

The stamps cost a little and move ptxas's allocation (more spills at D=128): compare traced builds with each
other, and take speed from `sage bench`. Every figure is a distribution over the CTAs' tiles. Instances with
three consumers (csrc/sm90/traits.cuh) are traced through their first two; their "last P.V" is 0 clocks (P.V
is waited for inside each step).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CTAS, SLOTS, STEPS = 160, 80, 64  # csrc/sm90/trace.cuh
PRODUCER, START, QWAIT, FIRST, LAST, LAST_PV, EPILOGUE, K_TILES, EXIT = 0, 0, 1, 2, 3, 4, 5, 6, 7


def traced_csrc(src: Path, dst: Path) -> Path:
    """A copy of `src` whose trace.cuh defines SAGE_TRACE (same content every time, so the build caches)."""
    out = dst / "csrc"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__"))
    trace = out / "sm90" / "trace.cuh"
    trace.write_text("#define SAGE_TRACE 1\n" + trace.read_text())
    return out


def quantiles(x) -> str:
    import numpy as np

    x = np.asarray(x, dtype=float)
    return f"median {np.median(x):7.0f}  mean {x.mean():7.0f}  p90 {np.percentile(x, 90):7.0f}"


def report(tiles, steps, ncta: int) -> None:
    import numpy as np

    rows = {k: [] for k in ("q wait", "first step", "last P.V", "epilogue", "gap")}
    per_step, k_tiles, tile_time, skew = [], [], [], []
    for c in range(ncta):
        for role in (1, 2):
            for s in range(SLOTS - 1):
                ev = tiles[c, role, s]
                if ev[START] == 0:
                    break
                n = int(ev[K_TILES])
                if n < 2 or ev[EPILOGUE] == 0:
                    continue
                rows["q wait"].append(ev[QWAIT] - ev[START])
                rows["first step"].append(ev[FIRST] - ev[QWAIT])
                rows["last P.V"].append(ev[LAST_PV] - ev[LAST])
                rows["epilogue"].append(ev[EPILOGUE] - ev[LAST_PV])
                nxt = tiles[c, role, s + 1, START]
                if nxt:
                    rows["gap"].append(nxt - ev[EPILOGUE])
                per_step.append((ev[LAST] - ev[FIRST]) / (n - 1))
                k_tiles.append(n)
                tile_time.append(ev[EPILOGUE] - ev[START])
        for s in range(SLOTS - 1):
            a, b = tiles[c, 1, s], tiles[c, 2, s]
            if not (a[EPILOGUE] and b[EPILOGUE]):
                break
            skew.append(abs(a[LAST] - b[LAST]))
    step = float(np.median(per_step))
    print(f"  per-step      {quantiles(per_step)}   (K tiles a tile: median {np.median(k_tiles):.0f})")
    for name, x in rows.items():
        print(f"  {name:13s} {quantiles(x)}   = {np.mean(x) / step:.2f} steps")
    over = np.asarray(tile_time) - np.asarray(k_tiles) * step
    print(f"  tile overhead {quantiles(over)}   = {over.mean() / step:.2f} steps")
    print(f"  consumer skew {quantiles(skew)}   = {np.mean(skew) / step:.2f} steps")
    # The two consumers' K steps in each CTA's second tile (its K-tile count varies with the CTA when causal).
    c0, c1 = steps[:ncta, 0], steps[:ncta, 1]
    seen = (c0 != 0) & (c1 != 0)
    pair = seen[:, 1:] & seen[:, :-1]  # step n - 1 -> n stamped by both consumers
    if not pair.any():
        return
    dt = (np.diff(c0, axis=1) + np.diff(c1, axis=1)) / 2
    ps = float(np.median(dt[pair]))
    phase = ((c1 - c0) / ps) % 1.0
    dist = np.minimum(phase, 1.0 - phase)[:, 1:]
    print(f"  phase (K steps of each CTA's second tile, {int(pair.sum())} in all; step median {ps:.0f}):")
    for lo in (0.0, 0.1, 0.2, 0.3, 0.4):
        m = pair & (dist >= lo) & ((dist < lo + 0.1) if lo < 0.4 else (dist <= 0.5))
        if m.any():
            print(f"    offset {lo:.1f}-{lo + 0.1:.1f}: {int(m.sum()):6d} steps, mean step {dt[m].mean():6.0f}")


def run_case(text: str, heads: int) -> None:
    import numpy as np
    import torch

    from ab_variants import parse_case  # bench/, this script's folder
    from sage_cli.bench.inputs import Case, make_qkv
    from sage_cli.kernels import ops

    n, d, causal = parse_case(text)
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    case = Case(batch=1, heads_q=heads, heads_kv=heads, seq=n, head_dim=d, causal=causal, dtype=torch.bfloat16, device=dev)
    q, k, v = make_qkv(case, gen)
    prep = ops.prepare(q, k, v, is_causal=causal)
    lib = prep.lib._lib
    if not hasattr(lib, "sage_trace_read"):
        raise SystemExit(f"{prep.lib.path} has no trace stamps (not a SAGE_TRACE build)")
    for _ in range(5):
        ops.attention_only(prep)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        ops.attention_only(prep)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / 10
    tops = case.flops / ms / 1e9
    assert lib.sage_trace_clear() == 0
    ops.attention_only(prep)
    torch.cuda.synchronize()
    tiles = np.zeros(CTAS * 3 * SLOTS * 8, dtype=np.uint64)
    steps = np.zeros(CTAS * 2 * STEPS, dtype=np.uint64)
    assert lib.sage_trace_read(ctypes.c_void_p(tiles.ctypes.data), ctypes.c_size_t(tiles.nbytes),
                               ctypes.c_void_p(steps.ctypes.data), ctypes.c_size_t(steps.nbytes)) == 0
    tiles = tiles.reshape(CTAS, 3, SLOTS, 8).astype(np.int64)
    steps = steps.reshape(CTAS, 2, STEPS).astype(np.int64)
    ncta = int((tiles[:, PRODUCER, SLOTS - 1, START] != 0).sum())
    print(f"\n{text}: kernel alone {ms:.3f} ms ({tops:.0f} TOPS, traced build), grid {ncta}; SM clocks:")
    report(tiles, steps, ncta)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", help="seq:head_dim[:causal], e.g. 4k:128 (default 4k:128 32k:128)")
    ap.add_argument("--csrc", help="sources to trace (default: this checkout's csrc/)")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--build-only", action="store_true", help="build or find the traced sm_90a library and stop")
    args = ap.parse_args()
    src = Path(args.csrc).resolve() if args.csrc else ROOT / "csrc"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SAGE_CSRC_DIR"] = str(traced_csrc(src, Path(tmp)))
        from sage_cli.kernels import builder

        if args.build_only:
            print(builder.library_path("90a"))
            return 0
        for case in args.cases or ["4k:128", "32k:128"]:
            run_case(case, args.heads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
