"""The quantized attention, step by step as the kernels compute it (see DESIGN.md, "The numerics")."""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..settings import FP8_MAX, SMOOTH_Q_BLOCK, SageSettings, k_group_index, q_group_index
from .accumulate import accumulate_fp8, accumulate_fp16
from .masks import visible_mask
from .quantize import pad_tokens, padded_len, quantize_qk, quantize_v

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def lse_smoothing_correction(q: torch.Tensor, k_mean: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """What smoothing K removed from the LSE: ``sm_scale * q . k_mean`` per query row.

    Softmax is invariant to subtracting ``k_mean`` from every key, but the LSE shifts by exactly this much,
    so ``lse(Q K^T) = lse(Q K'^T) + lse_smoothing_correction(q, k_mean, sm_scale)``.

    Parameters
    ----------
    q : ``[B, Hq, Nq, D]`` the original (unsmoothed) queries, any dtype/strides
    k_mean : ``[B, Hkv, D]`` float32
    sm_scale : the softmax scale

    Returns
    -------
    ``[B, Hq, Nq]`` float32.
    """
    b, hq, nq, d = q.shape
    hkv = k_mean.shape[1]
    qg = q.to(torch.float32).reshape(b, hkv, (hq // hkv) * nq, d)
    corr = torch.matmul(qg, k_mean.to(torch.float32)[..., None]).squeeze(-1)
    return (corr * sm_scale).reshape(b, hq, nq)


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D [B, H, N, D]")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or head dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    if k.shape[2] == 0:
        raise ValueError("attention needs at least one key (Nk = 0)")


def quantized_attention_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    sm_scale: Optional[float] = None,
    settings: SageSettings = SageSettings(),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like ``quantized_attention`` but returns the LSE *without* the K-smoothing correction, and k_mean.

    This is what the CUDA kernels return too; ``sageattn`` applies ``lse_smoothing_correction`` to either.

    Returns
    -------
    (o ``[B, Hq, Nq, D]`` in q.dtype, lse ``[B, Hq, Nq]`` float32 of ``sm_scale * (Q K'^T + ds)``,
    k_mean ``[B, Hkv, D]`` float32)
    """
    _check_shapes(q, k, v)
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    c = scale * LOG2E  # folded into the exponent: p = exp2(s * c - m), m in log2 units
    nq_pad, nk_pad = padded_len(nq), padded_len(nk)
    rows_total = g * nq_pad  # the query rows of one kv head: its G query heads stacked
    dev = q.device

    qk = quantize_qk(q, k, settings)
    # int8 values as float32: every dot product is an integer below D * 127^2 < 2^24 for D <= 1040, so the
    # float32 matmul is exact (as the int32 MMA is) in any summation order, TF32 included.
    if d * 127 * 127 >= 2**24:
        raise ValueError(f"head dim {d} too large for an exact float32 integer dot product")
    q_i = qk.q_int.to(torch.float32).reshape(b, hkv, rows_total, d)
    k_i = qk.k_int.to(torch.float32)
    q_rows = torch.arange(nq_pad, device=dev)
    q_row_scale = qk.q_scale.index_select(2, q_group_index(q_rows, settings.granularity)).reshape(b, hkv, rows_total)
    k_tok_scale = qk.k_scale.index_select(2, k_group_index(torch.arange(nk_pad, device=dev), settings.granularity))

    fp8 = settings.pv_dtype == "fp8"
    # row_sum="mma": l is the P.V product with a column of ones appended to V (FP8 1.0), so it sums the
    # rounded P~ in the same narrow accumulator, with the same two-level flush, as the output does.
    l_from_mma = fp8 and settings.row_sum == "mma"
    if fp8:
        qv = quantize_v(v, settings)
        v_blocks = qv.v_fp8.to(torch.float32)
        if l_from_mma:
            v_blocks = torch.cat([v_blocks, torch.ones_like(v_blocks[..., :1])], dim=-1)
    else:  # FP16 PV reads V as given; smooth_v and static V scales only concern the FP8 path
        qv = None
        v_blocks = pad_tokens(v.to(torch.float32), nk_pad)
    p_dtype = v.dtype if v.dtype in (torch.float16, torch.bfloat16) else None

    m = torch.full((b, hkv, rows_total), float("-inf"), device=dev)
    l = torch.zeros((b, hkv, rows_total), device=dev)
    acc = torch.zeros((b, hkv, rows_total, v_blocks.shape[-1]), device=dev)
    for start in range(0, nk, settings.blk_k):
        end = min(start + settings.blk_k, nk_pad)
        cols = torch.arange(start, end, device=dev)
        s = torch.matmul(q_i, k_i[:, :, start:end].transpose(-1, -2))  # exact integer scores
        s = s * (q_row_scale[..., None] * k_tok_scale[:, :, None, start:end])
        if qk.ds is not None:  # smooth Q bias, per 64-row block, in fp32 before the softmax scale
            ds = qk.ds[..., start:end].repeat_interleave(SMOOTH_Q_BLOCK, dim=2)
            s = s + ds.reshape(b, hkv, rows_total, end - start)
        x = s * c
        vis = visible_mask(q_rows, cols, seq_q=nq, seq_k=nk, is_causal=is_causal).repeat(g, 1)
        x = x.masked_fill(~vis, float("-inf"))
        m_new = torch.maximum(m, x.amax(dim=-1))
        # A row that has seen no visible key yet keeps m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
        m_use = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        alpha = torch.exp2(m - m_use)
        p = torch.exp2(x - m_use[..., None])
        if not l_from_mma:
            l = l * alpha + p.sum(dim=-1)  # the denominator sums the fp32 P, before any rounding of P
        if fp8:
            acc = accumulate_fp8(acc, alpha, p, v_blocks[:, :, start:end], settings.pv_accum)
        else:
            acc = accumulate_fp16(acc, alpha, p, v_blocks[:, :, start:end], p_dtype)
        m = m_new

    if l_from_mma:
        acc, l = acc[..., :-1], acc[..., -1] / FP8_MAX  # P~ carries the static scale 448; l in p units
    seen = l > 0
    o = acc / torch.where(seen, l, torch.ones_like(l))[..., None]
    if fp8:
        o = o * (qv.v_scale / FP8_MAX)[:, :, None, :]
        if qv.v_mean is not None:
            o = o + qv.v_mean[:, :, None, :]
    o = torch.where(seen[..., None], o, torch.zeros_like(o))  # rows with no visible key: exactly 0
    lse = torch.where(seen, (m + torch.log2(torch.where(seen, l, torch.ones_like(l)))) * LN2, float("-inf"))
    o = o.reshape(b, hq, nq_pad, -1)[:, :, :nq].to(q.dtype)
    lse = lse.reshape(b, hq, nq_pad)[:, :, :nq].contiguous()
    return o, lse, qk.k_mean


def quantized_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    sm_scale: Optional[float] = None,
    settings: SageSettings = SageSettings(),
    return_lse: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """SageAttention2-style quantized attention, computed exactly as specified (slowly, in plain torch).

    Parameters
    ----------
    q : ``[B, Hq, Nq, D]``;  k, v : ``[B, Hkv, Nk, D]`` (HND, any strides; fp16, bf16 or float32).
        ``Hq % Hkv == 0``; query head ``h`` reads kv head ``h // (Hq // Hkv)``. Any D (the kernels: 64/128).
    is_causal : bottom-right aligned when ``Nq != Nk`` (query i sees key j iff ``j <= i + Nk - Nq``).
    sm_scale : default ``1 / sqrt(D)``.
    settings : the site's ``SageSettings`` (QK dtype and groups, smoothing, PV dtype and accumulation).
        With ``pv_dtype="fp16"`` V is used as given (P rounded to the input dtype, fp32 accumulation), so
        ``smooth_v``, ``v_scale`` and ``pv_accum`` have no effect there, as in the kernels.
    return_lse : also return the natural-log LSE of ``sm_scale * Q K^T`` (smoothing corrected).

    Notes
    -----
    The steps, in the order the kernels run them: smooth and quantize Q/K (``quantize.py``); per K block of
    ``settings.blk_k`` tokens, exact integer scores times ``q_scale * k_scale`` (+ ``ds``), then
    ``x = s * sm_scale * log2(e)``, running max ``m``, ``p = exp2(x - m)`` in fp32; the denominator ``l``
    sums the fp32 ``p`` (``row_sum="fp32"``) or the rounded ``P~ / 448`` through the P.V accumulator
    (``row_sum="mma"``); ``P~ = e4m3(448 p)`` times FP8 V accumulates as ``accumulate.py`` describes;
    finally ``O = acc / l * v_scale / 448 (+ v_mean)``.

    Returns
    -------
    (o ``[B, Hq, Nq, D]`` in q.dtype, lse ``[B, Hq, Nq]`` float32 or None). Rows that see no key: o = 0,
    lse = -inf.
    """
    o, lse, k_mean = quantized_attention_core(q, k, v, is_causal=is_causal, sm_scale=sm_scale, settings=settings)
    if not return_lse:
        return o, None
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return o, lse + lse_smoothing_correction(q, k_mean, scale)
