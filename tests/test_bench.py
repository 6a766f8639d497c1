"""sage bench: the library API on the CPU (accuracy only) and, with a GPU, end to end with timings."""
from __future__ import annotations

import json

import pytest
import torch

from sage_cli.bench import (
    NO_GPU_NOTE,
    AccuracySlice,
    BenchError,
    BenchReport,
    BenchRow,
    render_rows,
    run_bench,
)
from sage_cli.bench import impls, inputs, runner
from sage_cli.numerics import reference_attention

CPU = dict(batch=1, heads=2, dtype="bf16", device="cpu")


@pytest.fixture(scope="module")
def cpu_report() -> BenchReport:
    return run_bench([128], [64], causal=True, peers=["sdpa-flash", "sdpa-efficient", "fa3", "fa3-fp8",
                                                      "sageattention"], **CPU)


def _row(rep: BenchReport, name: str) -> BenchRow:
    found = [r for r in rep.rows if r.implementation == name]
    assert len(found) == 1, f"{name}: {[r.implementation for r in rep.rows]}"
    return found[0]


def test_cpu_run_gives_accuracy_rows_and_no_timings(cpu_report: BenchReport) -> None:
    assert NO_GPU_NOTE in cpu_report.notes
    assert all(r.time_ms is None and r.tops is None for r in cpu_report.rows)
    ref = _row(cpu_report, "sage reference (CPU)")
    assert ref.skipped is None, ref.skipped
    # INT8 QK + FP8 PV on outlier-laden inputs: close to float64, but not bit-exact.
    assert 0.99 < ref.cos < 1.0
    assert 1e-4 < ref.rel_l1 < 0.08
    flash = _row(cpu_report, "sdpa-flash")  # torch's CPU flash kernel, bf16: near bf16 rounding
    assert flash.skipped is None, flash.skipped
    assert flash.cos > 0.9999 and flash.rel_l1 < 0.01
    # The quantized method must be measurably less exact than plain bf16 attention on the same inputs.
    assert ref.rel_l1 > flash.rel_l1


def test_missing_or_refusing_peers_are_skipped_with_reasons(cpu_report: BenchReport) -> None:
    for name in ("fa3-bf16", "fa3-fp8", "sageattention"):
        assert "needs a CUDA GPU" in (_row(cpu_report, name).skipped or "")
    eff = _row(cpu_report, "sdpa-efficient")  # no CPU kernel: torch's own refusal is the reason
    assert eff.skipped and "RuntimeError" in eff.skipped
    assert eff.cos is None


def test_fa3_missing_module_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(impls, "FA3_MODULES", ("no_such_fa3_module_xyz",))
    monkeypatch.setattr(impls, "_needs_hopper", lambda case: None)
    case = inputs.Case(1, 1, 1, 64, 64, False, torch.bfloat16, torch.device("cpu"))
    reason = impls._fa3_unavailable(case)
    assert reason and "pip install fa3-fwd" in reason and "no_such_fa3_module_xyz" in reason


def test_sdpa_refusal_warnings_are_condensed() -> None:
    noise = "Flash attention has been runtime disabled. (Triggered internally at /pytorch/x.h:540.)"
    why = ("For dense input, both fused kernels require query, key and value to have the same num_heads. "
           "(Triggered internally at /pytorch/aten/src/ATen/native/transformers/sdp_utils_cpp.h:418.)")
    assert runner._clean_warning(noise) == ""
    kept = runner._clean_warning(why)
    assert kept.startswith("For dense input") and "Triggered internally" not in kept


def test_to_json_round_trips(cpu_report: BenchReport) -> None:
    data = cpu_report.to_json()
    text = json.dumps(data, allow_nan=False)  # standard JSON: no bare NaN
    assert json.loads(text) == data
    again = BenchReport.from_json(json.loads(text))
    assert again.to_json() == data
    assert data["params"]["causal"] is True and data["params"]["seqs"] == [128]


def test_nan_metrics_survive_json() -> None:
    rep = BenchReport("x", "t", None, {}, rows=[BenchRow(64, 64, "a", "peer", cos=float("nan"))])
    data = json.loads(json.dumps(rep.to_json(), allow_nan=False))
    back = BenchReport.from_json(data)
    assert back.rows[0].cos != back.rows[0].cos  # NaN again


def test_cpu_caps_sequence_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "CPU_MAX_SEQ", 64)
    rep = run_bench([64, 256], [64], causal=False, peers=["sdpa-math"], **CPU)
    assert rep.params["seqs"] == [64]
    assert any("capped at 64" in n and "256" in n for n in rep.notes)
    assert {r.seq for r in rep.rows} == {64}
    assert _row(rep, "sdpa-math").cos > 0.9999


@pytest.mark.parametrize("causal", [False, True])
def test_accuracy_slice_matches_full_reference(causal: bool) -> None:
    """The slice's float64 reference must equal the same rows of the full problem's reference (GQA too)."""
    case = inputs.Case(2, 4, 2, 300, 32, causal, torch.float32, torch.device("cpu"))
    q, k, v = inputs.make_qkv(case, torch.Generator().manual_seed(3))
    full, _ = reference_attention(q, k, v, is_causal=causal, dtype=torch.float64)
    sl = AccuracySlice(batch=1, heads=1, queries=100)
    qs, ks, vs, slice_case, first, heads = runner._accuracy_slice(q, k, v, case, sl)
    # one head asked, rounded up to the GQA group of 2; the last >= 100 rows, starting on a SEQ_PAD boundary
    assert heads == 2 and first == 128 and ks.shape[2] == 300
    part = runner._reference(qs, ks, vs, slice_case)
    torch.testing.assert_close(part, full[:1, :2, first:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_sage_reference_on_slice_is_the_full_runs_rows(causal: bool) -> None:
    """The quantized reference on the slice must give the same rows as on the whole problem (K mean, V scales
    and scale groups unchanged), else the reference row would not be the kernel's yardstick."""
    from sage_cli.attention import sageattn

    case = inputs.Case(1, 4, 2, 320, 64, causal, torch.bfloat16, torch.device("cpu"))
    q, k, v = inputs.make_qkv(case, torch.Generator().manual_seed(5))
    full = sageattn(q, k, v, is_causal=causal, backend="reference")
    qs, ks, vs, _, first, heads = runner._accuracy_slice(q, k, v, case, AccuracySlice(heads=2, queries=150))
    part = sageattn(qs, ks, vs, is_causal=causal, backend="reference")
    assert first == 128 and heads == 2
    torch.testing.assert_close(part.float(), full[:1, :2, first:].float(), rtol=0, atol=0)


def test_inputs_reproducible_with_outliers() -> None:
    case = inputs.Case(1, 2, 2, 256, 64, False, torch.bfloat16, torch.device("cpu"))
    a = inputs.make_qkv(case, torch.Generator().manual_seed(7))
    b = inputs.make_qkv(case, torch.Generator().manual_seed(7))
    c = inputs.make_qkv(case, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    amax = a[1].float().abs().amax(dim=(0, 1, 2))  # per channel of K
    assert amax.max() > 4 * amax.median()  # outlier channels are there
    k_mean = a[1].float().mean(dim=2)
    assert k_mean.abs().max() > 1.0  # and K carries a per-channel mean for smooth K to remove


def test_num_sets_covers_l2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "l2_bytes", lambda dev: 50 * 2**20)
    small = inputs.Case(1, 8, 8, 1024, 128, False, torch.bfloat16, torch.device("cuda"))
    n = inputs.num_sets(small, memory_budget=2**40)
    assert n * small.set_bytes > 2 * 50 * 2**20 and n <= inputs.MAX_SETS
    big = inputs.Case(1, 32, 32, 32768, 128, False, torch.bfloat16, torch.device("cuda"))
    assert inputs.num_sets(big, memory_budget=2**40) == 2
    assert inputs.num_sets(big, memory_budget=big.set_bytes) == 1
    on_cpu = inputs.Case(1, 8, 8, 1024, 128, False, torch.bfloat16, torch.device("cpu"))
    assert inputs.num_sets(on_cpu, memory_budget=2**40) == 1  # nothing is timed on the CPU


def test_flops_halved_when_causal() -> None:
    full = inputs.Case(2, 3, 3, 100, 64, False, torch.bfloat16, torch.device("cpu"))
    causal = inputs.Case(2, 3, 3, 100, 64, True, torch.bfloat16, torch.device("cpu"))
    assert full.flops == 4 * 2 * 3 * 100 * 100 * 64 and causal.flops == full.flops / 2


def test_render_rows_speedup_against_preferred_baseline() -> None:
    rows = [
        BenchRow(4096, 128, "sage (whole op)", "sage", time_ms=1.0, tops=500.0, cos=0.9999, rel_l1=0.02),
        BenchRow(4096, 128, "sdpa-flash", "peer", time_ms=3.0, tops=160.0, cos=1.0, rel_l1=0.003),
        BenchRow(4096, 128, "fa3-bf16", "peer", time_ms=2.0, tops=250.0, cos=1.0, rel_l1=0.003),
        BenchRow(4096, 128, "sageattention", "peer", skipped="sageattention not importable: x"),
    ]
    runner._add_speedups(rows, 4096, 128)
    assert rows[0].speedup == {"sdpa-flash": 3.0, "fa3-bf16": 2.0}
    rep = BenchReport("GPU", "t", "13.0", {}, rows=rows)
    table = render_rows(rep)
    assert [t["implementation"] for t in table] == [r.implementation for r in rows]
    assert table[0]["speedup"] == "2.00x" and table[0]["vs"] == "fa3-bf16"
    assert table[2]["speedup"] == "" and table[2]["vs"] == ""  # the baseline against itself: nothing
    assert table[3]["note"].startswith("skipped: ") and table[3]["time_ms"] == ""
    assert all(list(t) == list(table[0]) for t in table)  # same columns in every row


def test_bench_table_keeps_every_figure_whole_in_an_80_column_terminal() -> None:
    """Printed to a narrow terminal or a pipe, the table keeps its width: no figure is cut to '…' or dropped."""
    from rich.console import Console

    from sage_cli.render import bench_table, print_whole

    rows = [
        BenchRow(32768, 128, "sage (kernel only)", "sage", time_ms=21.259, tops=827.5, cos=0.999212, rel_l1=0.0343,
                 note="attention kernel; inputs quantized beforehand"),
        BenchRow(32768, 128, "fa3-bf16", "peer", time_ms=24.049, tops=731.5, cos=0.999999, rel_l1=0.0014),
    ]
    runner._add_speedups(rows, 32768, 128)
    console = Console(width=80, record=True)
    print_whole(bench_table(render_rows(BenchReport("GPU", "t", "13.0", {}, rows=rows)), title="t"), console)
    text = console.export_text()
    for figure in ("21.259", "827.5", "0.999212", "0.0343", "24.049", "731.5", "1.13x", "sage (kernel only)",
                   "attention kernel; inputs quantized beforehand"):
        assert figure in text, (figure, text)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(peers=["nope"]), "unknown peer"),
        (dict(heads=3, heads_kv=2), "multiple of heads_kv"),
        (dict(dtype="fp32"), "dtype must be"),
        (dict(batch=0), "batch must be"),
    ],
)
def test_bad_requests_are_one_line_errors(kwargs: dict, match: str) -> None:
    args = dict(CPU)
    args.update(kwargs)
    with pytest.raises(BenchError, match=match) as info:
        run_bench([64], [64], causal=False, **args)
    assert "\n" not in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bench_end_to_end() -> None:
    rep = run_bench([1024], [128], batch=1, heads=8, causal=True, dtype="bf16",
                    peers=["sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "fa3", "fa3-fp8", "sageattention"])
    assert NO_GPU_NOTE not in rep.notes
    measured = [r for r in rep.rows if r.time_ms is not None]
    assert measured, [(r.implementation, r.skipped) for r in rep.rows]
    for r in measured:
        assert r.time_ms > 0 and r.tops > 0 and r.reps >= 20 and r.timing
        # Per-tensor E4M3 Q/K/V (fa3-fp8) is rough on outlier channels (rel_l1 ~0.1-0.2); the rest are close.
        floor = 0.9 if r.implementation == "fa3-fp8" else 0.99
        assert r.cos is not None and r.cos > floor, (r.implementation, r.cos)
    flash = _row(rep, "sdpa-flash")
    assert flash.skipped is None and flash.rel_l1 < 0.01
    assert all(r.skipped or r.cos is not None for r in rep.rows)
    # Where the sage kernels ran, they compute the method the reference specifies: the same error vs float64.
    spec = _row(rep, "sage reference (GPU)")
    for name in ("sage (whole op)", "sage (kernel only)"):
        r = _row(rep, name)
        assert r.skipped or abs(r.rel_l1 - spec.rel_l1) < 0.25 * spec.rel_l1, (name, r.rel_l1, spec.rel_l1, r.skipped)
    json.dumps(rep.to_json(), allow_nan=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_timing_graphs_and_eager_fallback() -> None:
    from sage_cli.bench.timing import time_rotating

    sets = [torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    t = time_rotating([lambda x=x: x @ x for x in sets], target_ms=30)
    assert t.mode == "cuda graph" and 0 < t.p10_ms <= t.median_ms <= t.p90_ms and t.reps >= 20
    # A host sync cannot be captured: timed eagerly, and the mode says why.
    e = time_rotating([lambda x=x: (x @ x).sum().item() for x in sets], target_ms=30)
    assert e.mode.startswith("eager (graph capture failed") and e.median_ms > 0
    # Work launched on another stream is not in the graph: the poisoned output exposes it.
    other = torch.cuda.Stream()
    bufs = [torch.empty_like(x) for x in sets]

    def off_stream(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        with torch.cuda.stream(other):  # no event joins it to the capturing stream: runs outside the graph
            torch.matmul(x, x, out=out)
        return out

    o = time_rotating([lambda x=x, b=b: off_stream(x, b) for x, b in zip(sets, bufs)], target_ms=30)
    assert o.mode.startswith("eager"), o.mode
    after = sets[0] @ sets[0]  # the failed captures left the device usable
    torch.cuda.synchronize()
    assert torch.isfinite(after.float()).all()
