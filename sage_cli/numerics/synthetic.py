"""Synthetic Q/K/V that look like real post-RoPE LLM activations, for tests and benchmarks.

Real Q and K carry a few channels with 10-50x the typical magnitude and a per-channel offset (mean) that is
several times their spread; some tokens (the first one, punctuation) are much larger than the rest. Those
are exactly what smoothing and fine quantization groups exist for, so plain ``randn`` would test too little.
"""
from __future__ import annotations

import math

import torch


def llm_like_qkv(
    b: int,
    hq: int,
    hkv: int,
    nq: int,
    nk: int,
    d: int,
    *,
    seed: int,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    n_outliers: int = 4,
    k_offset: float = 4.0,
    q_offset: float = 1.0,
    logit_std: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HND ``q [B, Hq, Nq, D]``, ``k, v [B, Hkv, Nk, D]`` with channel outliers and offsets.

    ``n_outliers`` channels of Q and K are scaled by 10-50x (the same channels in both, as RoPE pairs them),
    K gets a per-channel offset of ``k_offset`` x its spread, Q one of ``q_offset``, 2% of tokens are 8x
    larger, and Q is rescaled so that ``sm_scale * q . (k - mean k)`` has standard deviation ``logit_std``
    (so the softmax is neither uniform nor one-hot). V is plain normal. Deterministic in ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, hkv, nk, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, hkv, nk, d, generator=gen, dtype=torch.float64)
    chans = torch.randperm(d, generator=gen)[: min(n_outliers, d)]
    factors = 10.0 + 40.0 * torch.rand(chans.numel(), generator=gen, dtype=torch.float64)
    q[..., chans] *= factors
    k[..., chans] *= factors
    for x, n in ((q, nq), (k, nk)):
        big = torch.rand(n, generator=gen) < 0.02
        x[:, :, big] *= 8.0
    spread_k = k.std(dim=(0, 1, 2))
    k += k_offset * spread_k * torch.randn(hkv, 1, d, generator=gen, dtype=torch.float64)
    spread_q = q.std(dim=(0, 1, 2))
    q += q_offset * spread_q * torch.randn(hq, 1, d, generator=gen, dtype=torch.float64)
    # Set the logit spread (measured on the smoothed K, which is what the softmax sees).
    g = hq // hkv
    ks = k - k.mean(dim=2, keepdim=True)
    rows = q[:, :, : min(nq, 64)]
    logits = torch.matmul(rows.reshape(b, hkv, g * rows.shape[2], d), ks.transpose(-1, -2)) / math.sqrt(d)
    q *= logit_std / max(float(logits.std()), 1e-12)
    return tuple(t.to(dtype=dtype, device=device) for t in (q, k, v))  # type: ignore[return-value]
