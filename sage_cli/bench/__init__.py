"""`sage bench`: kernel speed and accuracy of sage beside every attention installed (SDPA, FA3, SageAttention).

    from sage_cli.bench import run_bench, render_rows
    report = run_bench([4096, 32768], [64, 128], batch=1, heads=32, causal=False)
    rows = render_rows(report)          # plain display rows for a table
    json.dumps(report.to_json())        # everything measured, with device and versions

How it measures is in timing.py and inputs.py (and bench/NOTES.md).
"""
from .impls import DEFAULT_PEERS, PEERS
from .report import AccuracySlice, BenchReport, BenchRow, render_rows
from .runner import CPU_MAX_SEQ, NO_GPU_NOTE, BenchError, run_bench

__all__ = [
    "AccuracySlice",
    "BenchError",
    "BenchReport",
    "BenchRow",
    "CPU_MAX_SEQ",
    "DEFAULT_PEERS",
    "NO_GPU_NOTE",
    "PEERS",
    "render_rows",
    "run_bench",
]
