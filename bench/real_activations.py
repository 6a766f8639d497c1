"""Kernels against the reference on REAL activations: the post-RoPE Q/K/V of the bundled SmolLM2.

    python -m bench.real_activations capture OUT.pt     # CPU or GPU: run the demo, keep Q/K/V of every site
    python -m bench.real_activations check OUT.pt       # GPU: each setting through the kernels (forced
                                                        # family where needed) and through numerics/, both
                                                        # against float64, site by site

On an H100 the INT4 rows run the mma.sync family, where INT4 mma is emulated (slow but exact): this checks
that the INT4 path stays within the error numerics/ predicts on real LLM activations, not its speed.
"""
from __future__ import annotations

import math
import statistics
import sys

import torch

PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden screw press into a system that could produce books at a "
    "scale no scribe could match. Within fifty years presses were working in more than two hundred cities.",
]
SETTINGS = {  # label -> (SageSettings kwargs, kernel family)
    "int8/fp8": (dict(qk_dtype="int8", pv_dtype="fp8"), "auto"),
    "int8/fp8 +sq": (dict(qk_dtype="int8", pv_dtype="fp8", smooth_q=True), "auto"),
    "int4/fp8": (dict(qk_dtype="int4", pv_dtype="fp8"), "mma_sync"),
    "int4/fp8 +sq": (dict(qk_dtype="int4", pv_dtype="fp8", smooth_q=True), "mma_sync"),
    "int4/fp8 +sq +sv": (dict(qk_dtype="int4", pv_dtype="fp8", smooth_q=True, smooth_v=True), "mma_sync"),
    "int8/fp16": (dict(qk_dtype="int8", pv_dtype="fp16"), "mma_sync"),
}


def capture(path: str) -> None:
    from sage_cli import model as M

    loaded = M.load(None)
    calls: dict[str, tuple] = {}

    def keep(call):
        if call.site not in calls:
            calls[call.site] = tuple(t.detach().to("cpu", torch.bfloat16).contiguous() for t in (call.q, call.k, call.v)) + (call.is_causal,)
        return None

    with torch.inference_mode(), M.hooked(loaded, keep):
        for p in PROMPTS:
            M.calibration_forward(loaded, p)
    torch.save(calls, path)
    print(f"saved {len(calls)} sites to {path}")


def check(path: str) -> None:
    from sage_cli.kernels import sageattn_cuda
    from sage_cli.numerics import error_metrics, lse_smoothing_correction, quantized_attention, reference_attention
    from sage_cli.settings import SageSettings

    calls = torch.load(path)
    rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in SETTINGS}
    for site, (q, k, v, causal) in calls.items():
        q, k, v = (t.cuda() for t in (q, k, v))
        scale = 1.0 / math.sqrt(q.shape[-1])
        ref, _ = reference_attention(q, k, v, is_causal=causal, sm_scale=scale)
        for label, (kw, family) in SETTINGS.items():
            s = SageSettings(**kw)
            o_ker, _, _ = sageattn_cuda(q, k, v, is_causal=causal, sm_scale=scale, settings=s, family=family)
            o_num, _ = quantized_attention(q, k, v, is_causal=causal, sm_scale=scale, settings=s)
            mk, mn = error_metrics(o_ker, ref), error_metrics(o_num, ref)
            rows[label].append((mk["rel_l1"], mn["rel_l1"], error_metrics(o_ker, o_num.double())["rel_l1"]))
    print(f"{len(calls)} SmolLM2 sites, {q.shape[2]} tokens, relL1 vs float64 (mean / worst over sites)")
    print(f"{'setting':18} {'kernel':>17} {'numerics':>17} {'kernel vs numerics (worst)':>28}")
    for label, r in rows.items():
        ker, num, diff = zip(*r)
        print(f"{label:18} {statistics.mean(ker):8.4f} / {max(ker):6.4f} {statistics.mean(num):8.4f} / {max(num):6.4f} {max(diff):28.2e}")


if __name__ == "__main__":
    {"capture": capture, "check": check}[sys.argv[1]](sys.argv[2])
