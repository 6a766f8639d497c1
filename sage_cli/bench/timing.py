"""GPU timing: CUDA events around each call, after warm-up, rotating input sets, median of many calls.

Why each part:
- events, not host clocks: launches are asynchronous; an event pair measures what the GPU spent.
- warm-up: the first calls pay for JIT compilation, autotuning, cuBLAS/cuDNN handle creation.
- rotation: `calls[i]` reads input set ``i``; cycling through sets larger than L2 in total means each call
  reads its inputs from device memory, as in a real model, instead of from a warm cache.
- a head start: a short GPU sleep before the timed loop lets the host queue launches ahead of the GPU, so a
  call's events do not include the host's own launch latency (unless the host cannot keep up at all).
- CUDA graphs: each call is captured once per input set and the graph is replayed, so the time is what
  the GPU spends (every kernel of the call, quantization included) without Python and launch overhead,
  which otherwise dominates calls under ~0.2 ms and would rank implementations by their Python wrappers.
  A call that cannot be captured (a host sync inside, say) is timed eagerly and says so.
- median (with p10/p90 for the spread): robust to the odd preempted or clock-throttled call.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

WARMUP_MS = 50.0  # at least this much warm-up work after the first call of each set
TARGET_MS = 300.0  # aim for this much timed work per implementation and size
MIN_REPS = 20
MAX_REPS = 500
HEAD_START_CYCLES = 20_000_000  # ~10 ms at H100 clocks


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    reps: int
    mode: str  # "cuda graph" or "eager (<why the capture failed>)"


def time_rotating(
    calls: Sequence[Callable[[], Any]], *, target_ms: float = TARGET_MS, use_graphs: bool = True
) -> Timing:
    """Time ``calls`` (one per input set) in rotation; every call is timed by its own event pair.

    The number of timed calls is chosen from a warm-up estimate so the whole takes about ``target_ms``,
    within [`MIN_REPS`, `MAX_REPS`]. With ``use_graphs`` each call is replayed from a CUDA graph when it
    can be captured (see the module docstring).
    """
    if not calls:
        raise ValueError("time_rotating needs at least one call")
    n = len(calls)
    for c in calls:  # first use of every set: compilation, allocator growth, lazy init
        c()
    torch.cuda.synchronize()
    mode = "eager"
    if use_graphs:
        try:
            calls = _capture_all(calls)
            mode = "cuda graph"
        except Exception as e:  # noqa: BLE001 (any capture failure: time eagerly instead, and say why)
            torch.cuda.synchronize()
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            mode = f"eager (graph capture failed: {first[:120]})"

    # Warm-up doubles as the estimate of one call's time.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    rounds, spent = 0, 0.0
    while spent < WARMUP_MS and rounds < 64:
        start.record()
        for c in calls:
            c()
        end.record()
        end.synchronize()
        spent += start.elapsed_time(end)
        rounds += 1
    per_call = max(spent / (rounds * n), 1e-3)
    reps = int(min(MAX_REPS, max(MIN_REPS, target_ms / per_call)))

    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(HEAD_START_CYCLES)
    for i in range(reps):
        starts[i].record()
        calls[i % n]()
        ends[i].record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return Timing(
        median_ms=statistics.median(times),
        p10_ms=times[int(0.1 * (reps - 1))],
        p90_ms=times[int(0.9 * (reps - 1))],
        reps=reps,
        mode=mode,
    )


def _capture_all(calls: Sequence[Callable[[], Any]]) -> list[Callable[[], Any]]:
    """One CUDA graph per call, sharing one memory pool, as replay functions.

    Capture needs the call warmed up on a side stream first (lazy init must not happen inside a capture).
    A kernel launched on some other stream than the capturing one would run once at capture time and be
    missing from the graph, which would then time as nearly free; so the first graph's output is poisoned
    with NaN and must be fully rewritten by a replay, or the capture is rejected.
    """
    pool = torch.cuda.graph_pool_handle()
    replays, outputs = [], []
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        calls[0]()
    torch.cuda.current_stream().wait_stream(side)
    for c in calls:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            out = c()
        replays.append(g.replay)
        outputs.append(_first_tensor(out))  # kept alive: the pool must not hand its memory to another graph
    probe = outputs[0]
    torch.cuda.synchronize()  # all streams: nothing launched during capture may land after the poison
    if probe is not None and probe.is_floating_point():
        probe.fill_(float("nan"))
        replays[0]()
        torch.cuda.synchronize()
        if not bool(torch.isfinite(probe).all()):
            raise RuntimeError("graph replay did not rewrite the output (work launched outside the capture?)")
    torch.cuda.synchronize()
    return replays


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((t for t in out if isinstance(t, torch.Tensor)), None)
    return None
