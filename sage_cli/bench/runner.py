"""`run_bench`: every (seq, head_dim), every implementation, timed and checked against float64.

Per size: draw the input sets (one fixed seed per run), compute the float64 reference on the accuracy slice
of set 0, then for each implementation: prepare every set (untimed), call it once on set 0 (a refusal here
becomes the skip reason; the output gives its accuracy), time it in rotation over all sets, free it.
"""
from __future__ import annotations

import gc
import warnings
from typing import Optional, Sequence

import torch

from ..errors import SageUserError
from ..progress import ProgressFn, report
from ..settings import SEQ_PAD, SageSettings
from . import impls as _impls
from .impls import Impl
from .inputs import DTYPES, Case, l2_bytes, make_qkv, num_sets
from .report import AccuracySlice, BenchReport, BenchRow
from .timing import time_rotating

CPU_MAX_SEQ = 1024  # without a GPU only the reference runs: cap the work
GPU_MEMORY_FRACTION = 0.3  # of free memory, for the rotating input sets (outputs and peers' copies need the rest)
DEFAULT_SEED = 0
NO_GPU_NOTE = "no GPU: accuracy only; timings need a GPU"


class BenchError(SageUserError):
    """A bench request that cannot be run as asked (bad size, unknown peer or dtype)."""


def run_bench(
    seqs: Sequence[int],
    head_dims: Sequence[int],
    batch: int,
    heads: int,
    causal: bool,
    *,
    dtype: str = "bf16",
    peers: Optional[Sequence[str]] = None,
    accuracy_slice: AccuracySlice = AccuracySlice(),
    progress: Optional[ProgressFn] = None,
    heads_kv: Optional[int] = None,
    settings: Optional[SageSettings] = None,
    seed: int = DEFAULT_SEED,
    device: Optional[str] = None,
) -> BenchReport:
    """Time sage and every installed peer, and measure their accuracy against float64.

    Parameters
    ----------
    seqs, head_dims : sizes to run; every combination is one group of rows (Nq = Nk = seq).
    batch, heads : B and the number of query heads Hq. Q is ``[B, Hq, N, D]``, K/V ``[B, Hkv, N, D]`` (HND).
    causal : causal mask (top-left, as Nq == Nk).
    dtype : "bf16" or "fp16", of Q/K/V and of the outputs.
    peers : names from `impls.PEERS` (default: all but "sdpa-math"); a missing one becomes a skipped row.
    accuracy_slice : what part of the output is compared against float64 (see `AccuracySlice`).
    progress : called as ``progress(description, done, total)`` once per implementation and size.
    heads_kv : Hkv for GQA (default: Hq).
    settings : sage's settings (default: sageattn's own choice for this GPU).
    seed : inputs are drawn from this seed; the same seed gives the same inputs.
    device : "cuda" or "cpu" (default: cuda when available). On the CPU nothing is timed and sequences
        are capped at `CPU_MAX_SEQ`; the notes say so.

    Returns
    -------
    BenchReport with one row per (seq, head_dim) x implementation, in the order run.
    """
    if dtype not in DTYPES:
        raise BenchError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    hkv = heads if heads_kv is None else heads_kv
    for label, value in (("batch", batch), ("heads", heads), ("heads_kv", hkv)):
        if value < 1:
            raise BenchError(f"{label} must be >= 1, got {value}")
    if heads % hkv:
        raise BenchError(f"heads ({heads}) must be a multiple of heads_kv ({hkv})")
    if not seqs or not head_dims:
        raise BenchError("give at least one sequence length and one head dim")
    if any(s < 1 for s in seqs) or any(d < 1 for d in head_dims):
        raise BenchError("sequence lengths and head dims must be positive")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("device 'cuda' asked for, but torch sees no CUDA GPU")
    try:
        peer_list = [_impls.peer_impl(p, dtype) for p in (peers if peers is not None else _impls.DEFAULT_PEERS)]
    except ValueError as e:
        raise BenchError(str(e)) from None

    notes: list[str] = []
    run_seqs = list(seqs)
    if dev.type == "cpu":
        notes.append(NO_GPU_NOTE)
        if max(run_seqs) > CPU_MAX_SEQ:
            notes.append(f"sequence lengths capped at {CPU_MAX_SEQ} on the CPU (asked: {', '.join(map(str, seqs))})")
            run_seqs = sorted({min(s, CPU_MAX_SEQ) for s in run_seqs})
    else:
        notes.append(
            "times: median GPU time per call of CUDA-graph replays (no Python or launch overhead), rotating"
            " input sets larger than 2x L2 so inputs are read cold; TOPS = 4*B*H*N^2*D/t (half when causal)"
        )
    notes.append(
        f"accuracy: against float64 on batch[:{accuracy_slice.batch}], the first {accuracy_slice.heads} query"
        f" heads (whole GQA groups) and the last ~{accuracy_slice.queries} queries against all keys; inputs: seeded normal"
        " with outlier channels in Q/K and a per-channel mean in K"
    )

    impl_list: list[Impl] = []
    if dev.type == "cuda":
        impl_list += [_impls.sage_whole_op(settings), _impls.sage_kernel_only(settings)]
    impl_list.append(_impls.sage_reference(settings, dev))
    impl_list += peer_list

    rep = BenchReport(
        device=_device_name(dev),
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        params={
            "seqs": run_seqs,
            "head_dims": list(head_dims),
            "batch": batch,
            "heads": heads,
            "heads_kv": hkv,
            "causal": causal,
            "dtype": dtype,
            "peers": [p.name for p in peer_list],
            "accuracy_slice": {"batch": accuracy_slice.batch, "heads": accuracy_slice.heads,
                               "queries": accuracy_slice.queries},
            "settings": settings.to_json() if settings is not None else "default",
            "seed": seed,
        },
        notes=notes,
    )

    total = len(run_seqs) * len(head_dims) * len(impl_list)
    done = 0
    for seq in run_seqs:
        for d in head_dims:
            case = Case(batch, heads, hkv, seq, d, causal, DTYPES[dtype], dev)
            for row, impl in _bench_case(case, impl_list, accuracy_slice, seed, rep.notes):
                rep.rows.append(row)
                done += 1
                report(progress, f"seq {seq} d {d}: {impl.name}", done, total)
            _add_speedups(rep.rows, seq, d)
    return rep


def _bench_case(case: Case, impl_list: list[Impl], sl: AccuracySlice, seed: int, notes: list[str]):
    """Yield (row, impl) for each implementation at one size."""
    gen = torch.Generator(device=case.device).manual_seed(seed)
    budget = _memory_budget(case.device)
    n_sets = num_sets(case, memory_budget=budget)
    sets = [make_qkv(case, gen) for _ in range(n_sets)]
    if case.device.type == "cuda" and n_sets * case.set_bytes < 2 * l2_bytes(case.device):
        notes.append(
            f"seq {case.seq} d {case.head_dim}: {n_sets} input sets of {case.set_bytes / 2**20:.1f} MiB do not"
            " cover twice the L2; timings may read warm cache"
        )
    q0, k0, v0 = sets[0]
    qs, ks, vs, slice_case, first_row, heads_sl = _accuracy_slice(q0, k0, v0, case, sl)
    ref = _reference(qs, ks, vs, slice_case)

    for impl in impl_list:
        row = BenchRow(case.seq, case.head_dim, impl.name, impl.kind, note=impl.note)
        reason = impl.unavailable(case)
        if reason:
            row.skipped = reason
            yield row, impl
            continue
        try:
            if impl.slice_only:
                out = _trial(impl.prepare(qs, ks, vs, slice_case))
                _set_accuracy(row, out, ref)
            else:
                prepared = [impl.prepare(q, k, v, case) for q, k, v in sets]
                out = _trial(prepared[0])
                sliced = prepared[0].to_hnd(out)[: sl.batch, :heads_sl, first_row:]
                _set_accuracy(row, sliced, ref)
                del out, sliced
                if impl.timed and case.device.type == "cuda":
                    t = time_rotating([p.run for p in prepared])
                    row.time_ms, row.time_p10_ms, row.time_p90_ms, row.reps = t.median_ms, t.p10_ms, t.p90_ms, t.reps
                    row.timing = t.mode
                    row.tops = case.flops / (t.median_ms * 1e-3) / 1e12
                del prepared
        except Exception as e:  # a peer's refusal or failure is a row, not the end of the run
            row.skipped = ("not timed: " if row.cos is not None else "") + _reason(e)
        finally:
            _free(case.device)
        yield row, impl


def _trial(prepared) -> torch.Tensor:
    """The first call; a backend that refuses says why in its warnings (SDPA) or its exception."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return prepared.run()
        except Exception as e:
            why = [m for m in (_clean_warning(str(w.message)) for w in caught) if m]
            if why:
                raise _Refused(f"{_reason(e)} ({'; '.join(dict.fromkeys(why))})") from e
            raise


# SDPA explains a refusal in warnings, one per backend, most of them saying only that the other backends
# were switched off by sdpa_kernel; keep the sentences that say why the pinned backend refused.
_NOISE = ("not used because", "has been runtime disabled", "math backend has been disabled")
_MAX_REASON = 200


def _clean_warning(message: str) -> str:
    text = " ".join(message.split())
    cut = text.find("(Triggered internally")
    if cut >= 0:
        text = text[:cut].strip()
    if not text or any(n in text for n in _NOISE):
        return ""
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


class _Refused(RuntimeError):
    pass


def _reason(e: BaseException) -> str:
    if isinstance(e, _Refused):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _accuracy_slice(q, k, v, case: Case, sl: AccuracySlice):
    """The leading batch entries and query heads (whole GQA groups), the LAST query rows, and every key.

    The last rows, because the causal mask is aligned bottom-right: query rows [N-S, N) given alone with
    all N keys see exactly the keys they see in the full problem, so K and V stay whole and everything
    computed over the tokens (K mean, V scales, K groups) is the same as in the full run; with the first
    rows K would have to be cut, which changes those. The start is a multiple of `SEQ_PAD` so the Q scale
    groups and smoothing blocks of the slice coincide with the full run's. They also see the most keys.

    Returns (q, k, v of the slice, its Case, the first query row, the number of query heads).
    """
    group = case.heads_q // case.heads_kv
    heads = min(case.heads_q, -(-sl.heads // group) * group)
    first = max(0, case.seq - sl.queries) // SEQ_PAD * SEQ_PAD
    b = min(case.batch, sl.batch)
    qs = q[:b, :heads, first:]
    ks = k[:b, : heads // group]
    vs = v[:b, : heads // group]
    slice_case = Case(b, heads, heads // group, case.seq - first, case.head_dim, case.causal, case.dtype, case.device)
    # slice_case.seq is the number of query rows; the slice keeps all case.seq keys.
    return qs, ks, vs, slice_case, first, heads


def _reference(q, k, v, case: Case) -> torch.Tensor:
    from ..numerics.reference import reference_attention

    out, _ = reference_attention(q, k, v, is_causal=case.causal, sm_scale=case.sm_scale, dtype=torch.float64)
    return out


def _set_accuracy(row: BenchRow, out: torch.Tensor, ref: torch.Tensor) -> None:
    from ..numerics.metrics import error_metrics

    m = error_metrics(out, ref)
    row.cos, row.rel_l1, row.rmse, row.max_abs = m["cos"], m["rel_l1"], m["rmse"], m["max_abs"]


def _add_speedups(rows: list[BenchRow], seq: int, d: int) -> None:
    timed = [r for r in rows if r.seq == seq and r.head_dim == d and r.time_ms]
    for r in timed:
        r.speedup = {o.implementation: o.time_ms / r.time_ms for o in timed if o is not r}


def _memory_budget(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * GPU_MEMORY_FRACTION)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        return f"{torch.cuda.get_device_name(dev)} (sm_{major}{minor})"
    import platform

    return f"CPU ({platform.processor() or platform.machine()})"
