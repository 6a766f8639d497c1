"""A/B of kernel variants in one device call: each variant's csrc/ in its own process, alternating (run on a GPU).

    python3 bench/ab_variants.py A=path/to/csrc_a B=path/to/csrc_b --order A,B,A,B --out ab.json
    python3 bench/ab_variants.py A=... --cases 32k:128,32k:128:causal,4k:64
    python3 bench/ab_variants.py A=. B=. --env B:NAME=VALUE --order A,B,A,B   # one tree, an environment knob

A variant is a csrc/ folder, or a tree holding csrc/ and its own sage_cli/ (a branch that changes the ABI
or the Python side too: ``git archive BRANCH csrc sage_cli | tar x -C DIR``), whose process then imports that
sage_cli. Every process sets ``SAGE_CSRC_DIR`` to its variant's csrc/ (the library is built, or taken from
``$SAGE_CACHE_DIR`` when a build of those exact sources is there: build them beforehand with
``SAGE_CSRC_DIR=... sage build --arch 90a``) and runs sage bench's own library (`run_bench`, no peers) over
the cases: whole op and kernel alone, CUDA-graph timed, and the accuracy of both against float64 and of the
reference emulating that kernel (numerics/ with the kernel's K block and row sum). Variants run in
the order given, so that drift between the first and the last call shows when a variant is repeated.
``--env LABEL:NAME=VALUE`` sets a variable in one variant's process only (the branch `quant-kv-clusters`
compared its two K/V routes, ``SAGE_QUANT_KV=passes`` or not, in one library this way).
Decisions come from here; the figures we claim come from `sage bench` beside the peers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CASES = "32k:128,32k:128:causal,32k:64,4k:128,4k:64"
SAGE_ROWS = {"sage (whole op)": "whole", "sage (kernel only)": "kernel", "sage reference (GPU)": "reference",
             "sage reference (CPU)": "reference"}


def parse_case(text: str) -> tuple[int, int, bool]:
    """'32k:128:causal' -> (32768, 128, True); the length is read as `sage bench --seq` reads it."""
    sys.path.insert(0, os.environ.get("SAGE_AB_TREE", str(ROOT)))  # a variant tree's own sage_cli first
    from sage_cli.cli import _sizes

    parts = text.split(":")
    return _sizes(parts[0])[0], int(parts[1]), len(parts) > 2 and parts[2] == "causal"


def measure(cases: list[tuple[int, int, bool]], heads: int) -> list[dict]:
    """This process's variant over every case (sage's rows of run_bench, no peers)."""
    from sage_cli.bench.runner import run_bench

    out = []
    for seq, d, causal in cases:
        rep = run_bench([seq], [d], 1, heads, causal, peers=[])
        for row in rep.rows:
            kind = SAGE_ROWS.get(row.implementation)
            if kind is None:
                continue
            out.append({"seq": seq, "d": d, "causal": causal, "kind": kind, "tops": row.tops,
                        "ms": row.time_ms, "rel_l1": row.rel_l1, "cos": row.cos, "skipped": row.skipped})
    return out


def run_variant(label: str, csrc: str, cases: str, heads: int, extra_env: dict[str, str]) -> list[dict]:
    env = dict(os.environ, SAGE_CSRC_DIR=str(Path(csrc).resolve()), PYTHONUNBUFFERED="1")
    env.update(extra_env)
    if (Path(csrc) / "sage_cli").is_dir():  # a tree: its csrc/ and its sage_cli
        env.update(SAGE_CSRC_DIR=str((Path(csrc) / "csrc").resolve()), SAGE_AB_TREE=str(Path(csrc).resolve()))
    cmd = [sys.executable, __file__, "--inner", "--cases", cases, "--heads", str(heads)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"[{label}] failed:\n{res.stderr[-3000:]}", file=sys.stderr)
        return []
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    for r in rows:
        r["variant"] = label
    return rows


def summarize(rows: list[dict], labels: list[str]) -> str:
    """Per case and variant: the TOPS of every run (whole op / kernel), and the relL1 against float64 of the
    kernel and of its reference."""
    tops, rel = defaultdict(list), {}
    for r in rows:
        at = (r["seq"], r["d"], r["causal"], r["variant"], r["kind"])
        if r["tops"]:
            tops[at].append(f"{r['tops']:.0f}")
        if r["rel_l1"] is not None:
            rel.setdefault(at, r["rel_l1"])
    keys = sorted({(r["seq"], r["d"], r["causal"]) for r in rows})
    lines = ["case | " + " | ".join(f"{lb} whole / kernel" for lb in labels) + " | relL1 kernel (ref)"]
    for key in keys:
        cells, acc = [], []
        for lb in labels:
            cells.append(" / ".join("/".join(tops[(*key, lb, kind)]) or "-" for kind in ("whole", "kernel")))
            kr, rr = rel.get((*key, lb, "kernel")), rel.get((*key, lb, "reference"))
            acc.append(f"{lb} {kr:.4f} ({rr:.4f})" if kr is not None and rr is not None else f"{lb} -")
        seq = f"{key[0] // 1024}k" if key[0] % 1024 == 0 else str(key[0])
        name = f"{seq} D={key[1]}{' causal' if key[2] else ''}"
        lines.append(f"{name} | " + " | ".join(cells) + " | " + ", ".join(acc))
    return "\n".join(lines)


def geomean_whole(rows: list[dict], label: str) -> float:
    xs = [r["tops"] for r in rows if r["variant"] == label and r["kind"] == "whole" and r["tops"]]
    return statistics.geometric_mean(xs) if xs else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", help="LABEL=CSRC_DIR or LABEL=TREE (csrc/ + sage_cli/)")
    ap.add_argument("--order", help="comma-separated labels, repeats allowed (default: each once)")
    ap.add_argument("--cases", default=DEFAULT_CASES, help="SEQ:D[:causal],... (B=1)")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--env", action="append", default=[], metavar="LABEL:NAME=VALUE",
                    help="an environment variable for one variant's process (repeatable)")
    ap.add_argument("--out", help="write every row as JSON here")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cases = [parse_case(c) for c in args.cases.split(",") if c]
    if args.inner:
        print(json.dumps(measure(cases, args.heads)))
        return 0
    dirs = dict(v.split("=", 1) for v in args.variants)
    labels = list(dirs)
    order = args.order.split(",") if args.order else labels
    envs: dict[str, dict[str, str]] = defaultdict(dict)
    for spec in args.env:
        lb, _, assignment = spec.partition(":")
        name, eq, value = assignment.partition("=")
        if lb not in dirs or not name or not eq:
            ap.error(f"--env {spec!r}: expected LABEL:NAME=VALUE with LABEL one of {', '.join(labels)}")
        envs[lb][name] = value
    rows: list[dict] = []
    for lb in order:
        got = run_variant(lb, dirs[lb], args.cases, args.heads, envs[lb])
        print(f"[{lb}] {len(got)} rows", flush=True)
        rows += got
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print(summarize(rows, labels))
    scores = {lb: geomean_whole(rows, lb) for lb in labels}
    print("geomean whole-op TOPS: " + ", ".join(f"{lb} {s:.1f}" for lb, s in scores.items()))
    print("BEST", max(scores, key=scores.get))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
