"""Rich rendering of what the libraries return. No logic beyond formatting lives here."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .progress import ProgressFn

out = Console()
err = Console(stderr=True)


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Optional[ProgressFn]]:
    """A ProgressFn that draws one bar per description on stderr."""
    if not enabled:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bars:
        tasks: dict[str, int] = {}

        def update(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bars.add_task(description, total=total)
            bars.update(tasks[description], completed=done, total=total)

        yield update


def _f(x, fmt: str = ".4f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return format(x, fmt)
    return str(x)


def inspect_tables(info: dict) -> list:
    m = info["model"]
    t1 = Table(title="model", show_header=False)
    for k, v in m.items():
        t1.add_row(str(k), str(v))
    t2 = Table(title=f"attention sites ({len(info['sites'])})")
    cols = ["path", "heads_q", "heads_kv", "head_dim", "kind", "causal", "served"]
    for c in cols:
        t2.add_column(c)
    for s in info["sites"]:
        t2.add_row(*[str(s.get(c, "-")) for c in cols])
    mc = info["machine"]
    t3 = Table(title="this machine", show_header=False)
    t3.add_row("GPU", str(mc["gpu"] or "none"))
    t3.add_row("arch", str(mc["arch"] or "-"))
    t3.add_row("sage paths", ", ".join(mc["paths"]) or "-")
    t3.add_row("kernels", mc["kernels"])
    return [t1, t2, t3]


def calibration_table(result) -> Table:
    t = Table(title=f"calibration of {result.model_name} for sm_{result.target_arch} -> {result.path}")
    t.add_column("site", no_wrap=True)
    t.add_column("choice", no_wrap=True)
    for c in ("cos", "relL1", "q mean/amax", "k mean/amax", "why full precision"):
        t.add_column(c, overflow="fold")
    for site, r in result.sites.items():
        p, st = r.policy, r.stats.summary()
        err = p.error or {}
        t.add_row(site, p.settings.label() if p.settings else "[yellow]full precision[/]", _f(err.get("cos"), ".5f"),
                  _f(err.get("rel_l1")), _f(st["q_mean_over_amax"], ".2f"), _f(st["k_mean_over_amax"], ".2f"),
                  p.fallback or "")
    return t


def verify_tables(rep) -> list:
    t = Table(title=f"per-site error vs float64 ({rep.backend})")
    t.add_column("site", no_wrap=True)
    t.add_column("settings", no_wrap=True)
    for c in ("calls", "cos", "relL1", "RMSE", "max abs", "model-dtype relL1"):
        t.add_column(c)
    for s in rep.sites:
        t.add_row(s.site, s.settings, str(s.calls), _f(s.cos, ".5f"), _f(s.rel_l1), _f(s.rmse, ".2e"),
                  _f(s.max_abs, ".2e"), _f(s.fp_rel_l1, ".1e"))
    e = Table(title="end to end", show_header=False)
    for k, v in rep.end_to_end.items():
        e.add_row(k, _f(v, ".5f") if isinstance(v, float) else str(v))
    c = Table(title="checks")
    for col in ("check", "result", "detail"):
        c.add_column(col)
    for ch in rep.checks:
        c.add_row(ch["name"], "[green]pass[/]" if ch["ok"] else "[red]FAIL[/]", ch["detail"])
    return [t, e, c]


def print_whole(table: Table, console: Optional[Console] = None) -> None:
    """Print a table at its natural width even where the terminal (or a pipe, 80 columns to rich) is
    narrower: the terminal then wraps lines, but no figure is cut to '…' or dropped."""
    console = console or out
    natural = Measurement.get(console, console.options.update(width=10_000), table).maximum
    width = console.width
    console.width = max(width, natural)  # print() caps its width at the console's, so widen the console
    try:
        console.print(table)
    finally:
        console.width = width


def bench_table(rows: list[dict], title: str) -> Table:
    t = Table(title=title)
    if not rows:
        return t
    # Columns empty in every row (timings without a GPU) are left out rather than drawn blank.
    cols = [c for c in rows[0] if any(r.get(c) not in (None, "") for r in rows)]
    for c in cols:
        t.add_column(str(c), no_wrap=c != "note")
    for r in rows:
        t.add_row(*[_f(r[c], ".3f") if isinstance(r[c], float) else ("-" if r[c] is None else str(r[c])) for c in cols])
    return t
