"""Exact attention in float64: the yardstick every accuracy figure is measured against."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .masks import visible_mask

MAX_SCORE_ELEMS = 1 << 26  # query rows are processed in chunks whose score matrix stays below this size


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    sm_scale: Optional[float] = None,
    return_lse: bool = False,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Softmax attention computed in ``dtype`` (float64 by default), no quantization.

    Parameters
    ----------
    q : ``[B, Hq, Nq, D]``;  k, v : ``[B, Hkv, Nk, D]`` with ``Hq % Hkv == 0`` (GQA: query head ``h`` reads
        kv head ``h // (Hq // Hkv)``). Any dtype and strides.
    is_causal : bottom-right aligned causal mask (see ``masks.py``).
    sm_scale : softmax scale, default ``1 / sqrt(D)``.

    Returns
    -------
    (o ``[B, Hq, Nq, D]`` in ``dtype``, natural-log LSE ``[B, Hq, Nq]`` in ``dtype`` or None).
    Rows that see no key give o = 0 and LSE = -inf.
    """
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of kv heads ({hkv})")
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    g = hq // hkv
    # Group the query heads of one kv head into its rows: no copy of K/V per query head.
    qg = q.to(dtype).reshape(b, hkv, g, nq, d)
    kt, vd = k.to(dtype).transpose(-1, -2), v.to(dtype)
    cols = torch.arange(nk, device=q.device)
    # Query rows in chunks so the score matrix stays below MAX_SCORE_ELEMS (512 MiB in float64).
    chunk = max(1, MAX_SCORE_ELEMS // max(1, b * hq * nk))
    outs, lses = [], []
    for start in range(0, nq, chunk):
        rows = torch.arange(start, min(start + chunk, nq), device=q.device)
        s = torch.matmul(qg[:, :, :, start : start + chunk], kt[:, :, None]) * scale  # [B, Hkv, G, n, Nk]
        vis = visible_mask(rows, cols, seq_q=nq, seq_k=nk, is_causal=is_causal)
        s = s.masked_fill(~vis, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)  # -inf on rows with no visible key
        finite = torch.isfinite(lse)
        p = torch.exp(s - torch.where(finite, lse, torch.zeros_like(lse))[..., None])
        outs.append(torch.matmul(p, vd[:, :, None]))  # rows with no key: exp(-inf) = 0, so o = 0
        lses.append(lse)
    o = torch.cat(outs, dim=3).reshape(b, hq, nq, v.shape[-1])
    return o, (torch.cat(lses, dim=3).reshape(b, hq, nq) if return_lse else None)
