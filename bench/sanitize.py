"""compute-sanitizer memcheck + racecheck over sage's kernels on a few small shapes (run on a GPU).

    python3 bench/sanitize.py            # builds/loads the library, then runs both tools; exit 1 on errors

Only kernels whose name contains "sage" are instrumented (torch's own kernels are not ours to check).
The inner workload (``--inner``) runs quantization and every available family on shapes with partial
tiles (17, 127, 1000 tokens), GQA, both masks, INT8/INT4 and FP8/FP16 PV.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def inner() -> None:
    from sage_cli import kernels
    from sage_cli.settings import SageSettings

    arch = kernels.status().arch
    fams = ["wgmma", "mma_sync"] if arch == "90a" else ["mma_sync"]
    # the fourth: D=64 non-causal whose last 192-row Q block (sm90) passes the padded rows; the last: causal
    # with more work tiles (48 heads x 3 Q blocks of 192 rows) than an H100 has SMs, so the dynamic scheduler
    # hands tiles out after the first round
    shapes = [(1, 2, 1, 17, 127, 64, True), (2, 4, 2, 127, 300, 128, False), (1, 3, 3, 300, 1000, 128, True),
              (1, 4, 2, 1000, 300, 64, False), (1, 48, 8, 500, 1000, 64, True)]
    settings = [SageSettings(), SageSettings(qk_dtype="int4", smooth_q=True, smooth_v=True),
                SageSettings(pv_dtype="fp16", granularity="per_warp"), SageSettings(smooth_v=True, granularity="per_block")]
    for b, hq, hkv, nq, nk, d, causal in shapes:
        q = torch.randn(b, hq, nq, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, hkv, nk, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, hkv, nk, d, device="cuda", dtype=torch.bfloat16)
        for s in settings:
            kernels.quantize(q, k, v, s)
            for fam in fams:
                try:
                    kernels.sageattn_cuda(q, k, v, is_causal=causal, return_lse=True, settings=s, family=fam)
                    print(f"ran {fam} {(b, hq, hkv, nq, nk, d, causal)} {s.label()}")
                except kernels.KernelUnavailable as e:
                    print(f"skip {fam} {s.label()}: {e}")
    torch.cuda.synchronize()


def main() -> int:
    from sage_cli import kernels

    st = kernels.status()  # build outside the sanitizer
    print(st)
    if not st.available:
        return 1
    bad = 0
    for tool in ("memcheck", "racecheck"):
        cmd = ["compute-sanitizer", f"--tool={tool}", "--kernel-name", "kns=sage", "--error-exitcode=9",
               "--print-limit=20", sys.executable, str(Path(__file__).resolve()), "--inner"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        print(f"==== {tool}: exit {proc.returncode}\n{tail}")
        bad += proc.returncode != 0
    print("SANITIZE", "FAILED" if bad else "CLEAN")
    return 1 if bad else 0


if __name__ == "__main__":
    if "--inner" in sys.argv:
        inner()
    else:
        sys.exit(main())
