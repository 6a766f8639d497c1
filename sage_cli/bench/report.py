"""What `sage bench` measured: plain dataclasses that serialize to JSON and flatten into table rows.

The library never prints; the CLI renders `render_rows(report)` with rich and can save `report.to_json()`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class AccuracySlice:
    """The part of the output that is compared against float64 (a slice keeps float64 cheap at 32k tokens).

    batch:   how many leading batch entries.
    heads:   how many leading query heads (rounded up to whole GQA groups so the slice stays valid).
    queries: how many leading query rows, against every key they can see.
    """

    batch: int = 1
    heads: int = 2
    queries: int = 1024

    def __post_init__(self) -> None:
        for name in ("batch", "heads", "queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"accuracy slice: {name} must be >= 1, got {getattr(self, name)}")


@dataclass
class BenchRow:
    """One implementation at one (seq, head_dim).

    time_ms is the median of the timed calls (None without a GPU, for accuracy-only rows, or when skipped);
    time_p10_ms / time_p90_ms give the spread; timing says how (CUDA-graph replays, or eager and why).
    tops counts 4*B*H*N*N*D (half for causal) per call.
    speedup maps every other timed implementation of the same (seq, head_dim) to ``its time / this time``
    (> 1: this one is faster). Accuracy (cos, rel_l1, rmse, max_abs) is against float64 on the slice.
    skipped says why nothing was measured (missing package, unsupported shape, the backend's own refusal).
    """

    seq: int
    head_dim: int
    implementation: str
    kind: str  # "sage", "peer" or "reference"
    time_ms: Optional[float] = None
    time_p10_ms: Optional[float] = None
    time_p90_ms: Optional[float] = None
    reps: int = 0
    timing: Optional[str] = None  # "cuda graph" (GPU time of graph replays) or "eager (why)"
    tops: Optional[float] = None
    speedup: dict[str, float] = field(default_factory=dict)
    cos: Optional[float] = None
    rel_l1: Optional[float] = None
    rmse: Optional[float] = None
    max_abs: Optional[float] = None
    skipped: Optional[str] = None
    note: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class BenchReport:
    """Everything one `run_bench` call measured, and on what."""

    device: str
    torch_version: str
    cuda_version: Optional[str]
    params: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    rows: list[BenchRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A dict of plain JSON types (NaN/inf become strings so ``json.dumps`` stays standard JSON)."""
        return {
            "device": self.device,
            "torch_version": self.torch_version,
            "cuda_version": self.cuda_version,
            "params": self.params,
            "notes": list(self.notes),
            "rows": [r.to_json() for r in self.rows],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BenchReport":
        names = {f.name for f in dataclasses.fields(BenchRow)}
        rows = [BenchRow(**{k: _from_json_number(v) for k, v in r.items() if k in names}) for r in data["rows"]]
        return cls(
            device=data["device"],
            torch_version=data["torch_version"],
            cuda_version=data.get("cuda_version"),
            params=dict(data.get("params", {})),
            notes=list(data.get("notes", [])),
            rows=rows,
        )

    def row(self, implementation: str, seq: int, head_dim: int) -> Optional[BenchRow]:
        """The row of one implementation at one size, or None."""
        for r in self.rows:
            if (r.implementation, r.seq, r.head_dim) == (implementation, seq, head_dim):
                return r
        return None


# The peer the "speedup" column compares against: the strongest baseline that was timed at that size.
BASELINE_PREFERENCE = ("fa3-bf16", "fa3-fp16", "sdpa-cudnn", "sdpa-flash", "sdpa-efficient", "sdpa-math")


NOTE_WIDTH = 90  # a table cell; the JSON keeps the whole reason


def render_rows(report: BenchReport) -> list[dict[str, str]]:
    """Plain rows for a table: every value is a display string ("" where there is nothing).

    Keys, in order: seq, head_dim, implementation, time_ms, TOPS, speedup, vs, cos, rel_l1, note.
    ``speedup`` is against ``vs``, the first of `BASELINE_PREFERENCE` timed at that (seq, head_dim); the full
    mapping against every peer is in the JSON. ``note`` carries the skip reason when a row was skipped
    (cut to `NOTE_WIDTH` characters; the JSON has it whole).
    """
    baselines: dict[tuple[int, int], str] = {}
    for r in report.rows:
        if r.time_ms is None:
            continue
        key = (r.seq, r.head_dim)
        rank = BASELINE_PREFERENCE.index(r.implementation) if r.implementation in BASELINE_PREFERENCE else None
        current = baselines.get(key)
        if rank is not None and (current is None or rank < BASELINE_PREFERENCE.index(current)):
            baselines[key] = r.implementation

    out = []
    for r in report.rows:
        base = baselines.get((r.seq, r.head_dim))
        sp = r.speedup.get(base) if base else None
        if r.skipped:
            note = f"skipped: {r.skipped}"
        else:
            eager = r.timing if r.timing and r.timing != "cuda graph" else None
            note = "; ".join(x for x in (r.note, eager) if x)
        out.append(
            {
                "seq": str(r.seq),
                "head_dim": str(r.head_dim),
                "implementation": r.implementation,
                "time_ms": _fmt(r.time_ms, "{:.3f}"),
                "TOPS": _fmt(r.tops, "{:.1f}"),
                "speedup": _fmt(sp, "{:.2f}x"),
                "vs": base if sp is not None else "",
                "cos": _fmt(r.cos, "{:.6f}"),
                "rel_l1": _fmt(r.rel_l1, "{:.4f}"),
                "note": note if len(note) <= NOTE_WIDTH else note[: NOTE_WIDTH - 1] + "…",
            }
        )
    return out


def _fmt(value: Optional[float], spec: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return spec.format(value)


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": standard JSON has no such numbers
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    return value


def _from_json_number(value: Any) -> Any:
    if value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, dict):
        return {k: _from_json_number(v) for k, v in value.items()}
    return value
