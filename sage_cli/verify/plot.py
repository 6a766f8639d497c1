"""report.png: error by site, sage against the model's own full-precision attention (both vs float64)."""
from __future__ import annotations

import io
from pathlib import Path

from ..artifact import write_bytes_atomic


def plot_site_errors(rows: list[dict], path: Path, title: str, budget: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8.0, 0.28 * n + 2), 6.5), sharex=True)
    xs = list(range(n))
    colors = ["tab:gray" if r["fallback"] else "tab:blue" for r in rows]
    ax1.bar(xs, [r["rel_l1"] for r in rows], color=colors, label="sage (grey: full precision)")
    ax1.plot(xs, [r["fp_rel_l1"] for r in rows], "k.", ms=4, label="model dtype attention")
    budget = budget or {}
    if "max_rel_l1" in budget:
        ax1.axhline(budget["max_rel_l1"], color="tab:red", lw=1, ls="--", label="budget")
    if "min_cos" in budget:
        ax2.axhline(1.0 - budget["min_cos"], color="tab:red", lw=1, ls="--")
    ax1.set_ylabel("relative L1 vs float64")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.bar(xs, [max(1.0 - r["cos"], 1e-9) for r in rows], color=colors)
    ax2.set_yscale("log")
    ax2.set_ylabel("1 - cosine vs float64")
    step = max(1, n // 40)
    ax2.set_xticks(xs[::step])
    ax2.set_xticklabels([r["site"] for r in rows][::step], rotation=90, fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(Path(path), buf.getvalue())
