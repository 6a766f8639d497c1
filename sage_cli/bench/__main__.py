"""``python -m sage_cli.bench``: the bench without the CLI's dependencies (for device runs and scripts).

Prints the table as plain aligned text and, with ``--json PATH``, writes the whole report. The user-facing
command is ``sage bench`` (sage_cli/cli.py); this entry exists so the bench runs on a bare GPU machine.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import SageUserError
from . import AccuracySlice, BenchReport, render_rows, run_bench


def _sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1024 if part.endswith("k") else 1
        out.append(int(part.rstrip("k")) * mult)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sage_cli.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--seq", default="4k,32k", help="sequence lengths, e.g. 1k,4k,32k")
    ap.add_argument("--head-dim", default="128", help="head dims, e.g. 64,128")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--heads-kv", type=int, default=None)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    ap.add_argument("--peers", default=None, help="comma-separated peer names (default: all but sdpa-math)")
    ap.add_argument("--slice-queries", type=int, default=1024, help="query rows compared against float64")
    ap.add_argument("--device", default=None, choices=("cuda", "cpu"))
    ap.add_argument("--json", default=None, help="write the report here")
    args = ap.parse_args(argv)

    def progress(desc: str, done: int, total: int) -> None:
        print(f"[{done}/{total}] {desc}", file=sys.stderr, flush=True)

    try:
        rep = run_bench(
            _sizes(args.seq), _sizes(args.head_dim), args.batch, args.heads, args.causal,
            dtype=args.dtype, peers=args.peers.split(",") if args.peers else None,
            accuracy_slice=AccuracySlice(queries=args.slice_queries), progress=progress,
            heads_kv=args.heads_kv, device=args.device,
        )
    except (SageUserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep.to_json(), f, indent=1, allow_nan=False)
    print(format_table(rep))
    return 0


def format_table(rep: BenchReport) -> str:
    """The rows as aligned plain text (the CLI uses rich instead)."""
    rows = render_rows(rep)
    head = [f"{rep.device}  torch {rep.torch_version}  CUDA {rep.cuda_version}  " + json.dumps(
        {k: rep.params[k] for k in ("batch", "heads", "heads_kv", "causal", "dtype")})]
    if rows:
        cols = list(rows[0])
        width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols if c != "note"}
        head.append("  ".join(c.ljust(width[c]) if c in width else c for c in cols))
        for r in rows:
            head.append("  ".join(r[c].ljust(width[c]) if c in width else r[c][:110] for c in cols))
    head += [f"note: {n}" for n in rep.notes]
    return "\n".join(head)


if __name__ == "__main__":
    sys.exit(main())
