"""Measure each candidate's error on the Q/K/V one attention call captured.

The inputs are what the model really produced at that site; the yardstick is float64 attention on them.
Long sequences keep their last `max_queries` rows (whole 64-row blocks): queries are independent, and taking
the *last* rows keeps a causal mask exact, since the mask is aligned bottom-right.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..settings import SMOOTH_Q_BLOCK, SageSettings


def unsupported_reason(q: torch.Tensor, k: torch.Tensor) -> Optional[str]:
    """Why sage cannot serve this site at all (it then stays in full precision), or None."""
    from ..model.install import sage_head_dims

    d = q.shape[-1]
    if d not in sage_head_dims():
        return f"head dim {d} is not served by the kernels (64, 128; 80/96 padded)"
    if q.shape[1] % k.shape[1]:
        return f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads"
    return None


def last_query_rows(q: torch.Tensor, max_queries: int) -> torch.Tensor:
    n = q.shape[2]
    if n <= max_queries:
        return q
    keep = max(SMOOTH_Q_BLOCK, max_queries // SMOOTH_Q_BLOCK * SMOOTH_Q_BLOCK)
    return q[:, :, n - keep:]


def measure(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool, scale: Optional[float],
    candidates: list[SageSettings], backend: str, max_queries: int = 1024,
) -> list[dict]:
    """Errors of each candidate against float64 attention: one dict of metrics per candidate, plus
    `backend` (what computed it). HND tensors in; they are cast to bf16 first where they are float32, as
    the quantized op takes fp16/bf16."""
    from ..attention import sageattn
    from ..numerics import error_metrics, reference_attention

    q = last_query_rows(q, max_queries)
    if q.dtype == torch.float32:
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    sm_scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    ref, _ = reference_attention(q, k, v, is_causal=is_causal, sm_scale=sm_scale)
    results = []
    for cand in candidates:
        used = backend
        out = None
        if backend == "cuda":
            from ..attention import KernelBackendError

            try:
                out = sageattn(q, k, v, is_causal=is_causal, sm_scale=sm_scale, backend="cuda", settings=cand)
            except KernelBackendError:
                used = "reference"  # e.g. INT4 on Hopper: the accuracy is the same, the speed is not measured here
        if out is None:
            out = sageattn(q, k, v, is_causal=is_causal, sm_scale=sm_scale, backend="reference", settings=cand)
        m = error_metrics(out, ref)
        m["backend"] = used
        results.append(m)
    return results
