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
  consumer skew   the spread of the consumers' last K steps (latest - earliest)
  phase           per K step of each CTA's second tile: how far apart the consumers' QK waits return, as
                  the closest pair's offset in steps on the circle of one step (0: two consumers in step;
                  1/2 with two consumers, 1/3 with three: evenly spread), and the mean step time at each
  segments        per K step n of the second tile: QK(n) wait -> P.V(n) wait, and P.V(n) wait -> QK(n+1)
                  wait. Three consumers: softmax + P.V, then the fold + the next QK. Two: P.V(n) is waited
                  for in step n + 1, after QK(n + 1), so the second segment is negative

The stamps cost a little and move ptxas's allocation (more spills at D=128): compare traced builds with each
other, and take speed from `sage bench`. Every figure is a distribution over the CTAs' tiles and over the
consumers (two or three, csrc/sm90/traits.cuh); with three, "last P.V" is 0 clocks (P.V is waited for inside
each step).
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

CTAS, ROLES, SLOTS, STEPS = 160, 4, 80, 64  # csrc/sm90/trace.cuh
PRODUCER, START, QWAIT, FIRST, LAST, LAST_PV, EPILOGUE, K_TILES, EXIT = 0, 0, 1, 2, 3, 4, 5, 6, 7
QK, PV = 0, 1  # the two stamps of a K step (g_trace_steps)


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


def consumer_roles(tiles, ncta: int) -> list[int]:
    """The roles (1..3) of the consumers that stamped a tile."""
    return [r for r in range(1, ROLES) if tiles[:ncta, r, :, START].any()]


def tile_rows(tiles, ncta: int) -> dict:
    """Per consumer tile (two K tiles or more, finished): each segment of its time, in clocks."""
    import numpy as np

    rows = {k: [] for k in ("q wait", "first step", "last P.V", "epilogue", "gap", "per-step", "k tiles", "tile time")}
    roles = consumer_roles(tiles, ncta)
    for c in range(ncta):
        for role in roles:
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
                rows["per-step"].append((ev[LAST] - ev[FIRST]) / (n - 1))
                rows["k tiles"].append(n)
                rows["tile time"].append(ev[EPILOGUE] - ev[START])
    skew = []
    for c in range(ncta):
        for s in range(SLOTS - 1):
            ev = tiles[c, roles, s]
            if not ev[:, EPILOGUE].all():
                break
            skew.append(ev[:, LAST].max() - ev[:, LAST].min())
    rows["skew"] = skew
    return {k: np.asarray(v, dtype=float) for k, v in rows.items()}


def phase_table(qk, bins: int = 5):
    """qk[cta, consumer, n]: the clock of each consumer's K step n (0: not stamped). Returns the median step
    and, per bin of the closest pair's offset (in steps, on the circle of one step; at most 1/consumers):
    (low, high, K steps, mean step time)."""
    import numpy as np

    k = qk.shape[1]
    seen = (qk != 0).all(axis=1)
    both = seen[:, 1:] & seen[:, :-1]  # step n - 1 -> n stamped by every consumer
    if not both.any():
        return None, []
    dt = np.diff(qk, axis=2).mean(axis=1)
    step = float(np.median(dt[both]))
    phases = np.sort(((qk - qk[:, :1]) / step) % 1.0, axis=1)  # consumer 0 at 0
    gaps = np.diff(np.concatenate([phases, phases[:, :1] + 1.0], axis=1), axis=1)
    closest = gaps.min(axis=1)[:, 1:]  # aligned with dt: the step that ends at n
    top = 1.0 / k
    out = []
    for i in range(bins):
        lo, hi = top * i / bins, top * (i + 1) / bins
        m = both & (closest >= lo - 1e-9) & ((closest < hi) if i < bins - 1 else (closest <= hi + 1e-9))
        if m.any():
            out.append((lo, hi, int(m.sum()), float(dt[m].mean())))
    return step, out


def step_segments(steps) -> tuple:
    """steps[cta, consumer, n, (QK, PV)]: the medians of QK(n) -> P.V(n) and P.V(n) -> QK(n + 1), in clocks."""
    import numpy as np

    qk, pv = steps[..., QK], steps[..., PV]
    first = (qk != 0) & (pv != 0)
    second = first[..., :-1] & (qk[..., 1:] != 0)
    a = (pv - qk)[first]
    b = (qk[..., 1:] - pv[..., :-1])[second]
    med = lambda x: float(np.median(x)) if x.size else float("nan")  # noqa: E731
    return med(a), med(b)


def report(tiles, steps, ncta: int) -> None:
    import numpy as np

    rows = tile_rows(tiles, ncta)
    k = len(consumer_roles(tiles, ncta))
    step = float(np.median(rows["per-step"]))
    print(f"  per-step      {quantiles(rows['per-step'])}   (K tiles a tile: median {np.median(rows['k tiles']):.0f}, "
          f"{k} consumers)")
    for name in ("q wait", "first step", "last P.V", "epilogue", "gap"):
        x = rows[name]
        print(f"  {name:13s} {quantiles(x)}   = {x.mean() / step:.2f} steps")
    over = rows["tile time"] - rows["k tiles"] * step
    print(f"  tile overhead {quantiles(over)}   = {over.mean() / step:.2f} steps")
    print(f"  consumer skew {quantiles(rows['skew'])}   = {rows['skew'].mean() / step:.2f} steps")
    ps, table = phase_table(steps[:ncta, :k, :, QK])
    if ps is None:
        return
    print(f"  phase (K steps of each CTA's second tile, {sum(t[2] for t in table)} in all; step median {ps:.0f}; "
          f"closest pair's offset, {1 / k:.2f} = evenly spread):")
    for lo, hi, count, mean in table:
        print(f"    offset {lo:.2f}-{hi:.2f}: {count:6d} steps, mean step {mean:6.0f}")
    a, b = step_segments(steps[:ncta, :k])
    print(f"  segments      QK(n) -> P.V(n) {a:6.0f}   P.V(n) -> QK(n+1) {b:6.0f}   (medians, clocks)")


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
    tiles = np.zeros(CTAS * ROLES * SLOTS * 8, dtype=np.uint64)
    steps = np.zeros(CTAS * (ROLES - 1) * STEPS * 2, dtype=np.uint64)
    assert lib.sage_trace_read(ctypes.c_void_p(tiles.ctypes.data), ctypes.c_size_t(tiles.nbytes),
                               ctypes.c_void_p(steps.ctypes.data), ctypes.c_size_t(steps.nbytes)) == 0
    tiles = tiles.reshape(CTAS, ROLES, SLOTS, 8).astype(np.int64)
    steps = steps.reshape(CTAS, ROLES - 1, STEPS, 2).astype(np.int64)
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
