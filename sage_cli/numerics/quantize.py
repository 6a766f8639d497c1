"""Smoothing and quantization of Q, K (INT8/INT4) and V (FP8 E4M3), exactly as the kernels do it.

Conventions (the contract with csrc/quant/):

* Everything is computed in float32 from the input dtype.
* ``k_mean`` is the mean over the ``Nk`` real tokens; ``K' = K - k_mean``.
* Smooth Q: the mean of each block of ``SMOOTH_Q_BLOCK`` rows is taken over the block's *real* rows
  (the last block may be partial); pad rows stay zero in ``Q'`` (they are not ``-mean``).
* Symmetric quantization, ``scale = max(amax_group, SCALE_FLOOR) / qmax``, ``inv = reciprocal(scale)`` (the
  float32 nearest to ``1 / scale``), ``x_int = round(x * inv)`` with the product exact (not rounded to
  float32 first: one FMA in the kernels, float64 here) and ``torch.round`` (round half to even), clamped
  to ``[-qmax, qmax]``. Groups follow
  ``settings.q_group_index`` / ``k_group_index`` over the padded length (``SEQ_PAD``); pad rows are zero.
* ``ds = q_mean . K'^T`` in float32 with the unquantized ``K'`` (pad tokens give 0).
* V: ``scale_c = max(amax_c, SCALE_FLOOR) / 448`` over the real tokens of ``V'`` (``V - v_mean`` with smooth
  V), or the static scale given; ``v_fp8 = e4m3(clamp(V' * reciprocal(scale_c), -448, 448))`` with the
  product rounded to float32 first (RN, saturating).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..settings import (
    FP8_MAX,
    QMAX,
    SCALE_FLOOR,
    SEQ_PAD,
    SMOOTH_Q_BLOCK,
    SageSettings,
    k_group_index,
    num_k_groups,
    num_q_groups,
    q_group_index,
)

FP8_DTYPE = torch.float8_e4m3fn


def padded_len(n: int) -> int:
    """``n`` rounded up to a multiple of ``SEQ_PAD`` (at least one ``SEQ_PAD``, so buffers are never empty)."""
    return max(-(-n // SEQ_PAD), 1) * SEQ_PAD


def pad_tokens(x: torch.Tensor, n_pad: int) -> torch.Tensor:
    """Zero-pad dim 2 (tokens) of ``[B, H, N, D]`` to ``n_pad``."""
    n = x.shape[2]
    if n == n_pad:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, n_pad - n))


@dataclass
class QuantizedQK:
    """Q and K after smoothing and quantization (the Q and K buffers ``sage_quantize`` writes).

    q_int   ``[B, Hq, Nq_pad, D]`` int8 (INT4 values as int8 in ``[-7, 7]``)
    q_scale ``[B, Hq, n_q_groups]`` float32
    k_int   ``[B, Hkv, Nk_pad, D]`` int8, from the smoothed ``K'``
    k_scale ``[B, Hkv, n_k_groups]`` float32
    k_mean  ``[B, Hkv, D]`` float32
    q_mean  ``[B, Hq, Nq_pad / 64, D]`` float32 with smooth Q, else None
    ds      ``[B, Hq, Nq_pad / 64, Nk_pad]`` float32 with smooth Q, else None
    """

    q_int: torch.Tensor
    q_scale: torch.Tensor
    k_int: torch.Tensor
    k_scale: torch.Tensor
    k_mean: torch.Tensor
    q_mean: Optional[torch.Tensor]
    ds: Optional[torch.Tensor]


@dataclass
class QuantizedV:
    """V in FP8 (the V buffers ``sage_quantize`` writes, but NOT transposed).

    v_fp8   ``[B, Hkv, Nk_pad, D]`` float8_e4m3fn (pad tokens zero)
    v_scale ``[B, Hkv, D]`` float32, each channel's scale (V' was multiplied by its reciprocal)
    v_mean  ``[B, Hkv, D]`` float32 with smooth V, else None
    """

    v_fp8: torch.Tensor
    v_scale: torch.Tensor
    v_mean: Optional[torch.Tensor]


def reciprocal(scale: torch.Tensor) -> torch.Tensor:
    """The float32 nearest to ``1 / scale`` (``__frcp_rn``): computed in float64 and rounded once more, which
    is exact here because float64 carries more than twice float32's precision plus two bits."""
    return (1.0 / scale.to(torch.float64)).to(torch.float32)


def quantize_groups(
    x: torch.Tensor, group: torch.Tensor, n_groups: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-group quantization along dim 2.

    Parameters
    ----------
    x : ``[B, H, N_pad, D]`` float32
    group : ``[N_pad]`` int64 group id of each row/token
    n_groups : number of groups

    Returns
    -------
    (``[B, H, N_pad, D]`` int8 in ``[-qmax, qmax]``, scale ``[B, H, n_groups]`` float32)
    """
    b, h, n, _ = x.shape
    row_amax = x.abs().amax(dim=-1)  # [B, H, N]
    amax = torch.zeros(b, h, n_groups, dtype=torch.float32, device=x.device)
    amax = amax.scatter_reduce(2, group.expand(b, h, n), row_amax, reduce="amax", include_self=True)
    scale = amax.clamp_min(SCALE_FLOOR) / qmax
    row_inv = reciprocal(scale).index_select(2, group).to(torch.float64)  # [B, H, N]
    x_int = torch.round(x.to(torch.float64) * row_inv[..., None]).clamp_(-qmax, qmax).to(torch.int8)
    return x_int, scale


def _block_means(x: torch.Tensor, n_valid: int, block: int) -> torch.Tensor:
    """Mean of each block of ``block`` rows of zero-padded ``x [B, H, N_pad, D]`` over its real rows."""
    b, h, n_pad, d = x.shape
    sums = x.reshape(b, h, n_pad // block, block, d).sum(dim=3)
    starts = torch.arange(0, n_pad, block, device=x.device)
    counts = (n_valid - starts).clamp(0, block).to(torch.float32)  # real rows per block (0 for pad blocks)
    return sums / counts.clamp_min(1.0)[:, None]


def quantize_qk(q: torch.Tensor, k: torch.Tensor, settings: SageSettings) -> QuantizedQK:
    """Smooth K (always) and Q (``settings.smooth_q``), then quantize both to ``settings.qk_dtype``.

    q ``[B, Hq, Nq, D]``, k ``[B, Hkv, Nk, D]`` (any strides, fp16/bf16/fp32). See the module docstring
    for the exact conventions and ``QuantizedQK`` for the shapes.
    """
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    qmax = QMAX[settings.qk_dtype]
    gran = settings.granularity
    nq_pad, nk_pad = padded_len(nq), padded_len(nk)

    kf = k.to(torch.float32)
    k_mean = kf.mean(dim=2)  # [B, Hkv, D]
    k_s = pad_tokens(kf - k_mean[:, :, None], nk_pad)

    q_s = pad_tokens(q.to(torch.float32), nq_pad)
    q_mean = ds = None
    if settings.smooth_q:
        q_mean = _block_means(q_s, nq, SMOOTH_Q_BLOCK)  # [B, Hq, Nq_pad/64, D]
        rows_mean = q_mean.repeat_interleave(SMOOTH_Q_BLOCK, dim=2)
        real = (torch.arange(nq_pad, device=q.device) < nq)[:, None]
        q_s = torch.where(real, q_s - rows_mean, 0.0)  # pad rows stay zero
        g = hq // hkv
        nqb = nq_pad // SMOOTH_Q_BLOCK
        ds = torch.matmul(q_mean.reshape(b, hkv, g * nqb, d), k_s.transpose(-1, -2)).reshape(b, hq, nqb, nk_pad)

    q_rows = torch.arange(nq_pad, device=q.device)
    k_rows = torch.arange(nk_pad, device=q.device)
    q_int, q_scale = quantize_groups(q_s, q_group_index(q_rows, gran), num_q_groups(nq_pad, gran), qmax)
    k_int, k_scale = quantize_groups(k_s, k_group_index(k_rows, gran), num_k_groups(nk_pad, gran), qmax)
    return QuantizedQK(q_int, q_scale, k_int, k_scale, k_mean, q_mean, ds)


def static_v_scale(v_scale: torch.Tensor, b: int, hkv: int, d: int, device: torch.device) -> torch.Tensor:
    """Broadcast a calibrated ``[Hkv, D]`` or ``[B, Hkv, D]`` scale to ``[B, Hkv, D]`` float32."""
    shape = tuple(v_scale.shape)
    if shape not in ((hkv, d), (b, hkv, d)):
        raise ValueError(f"static v_scale must have shape [Hkv, D]={[hkv, d]} or [B, Hkv, D]={[b, hkv, d]}, got {list(shape)}")
    s = v_scale.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError("static v_scale must be finite and positive")
    return s.expand(b, hkv, d).contiguous()


def to_fp8(x: torch.Tensor) -> torch.Tensor:
    """float32 -> float8_e4m3fn, round to nearest even, saturating at +-448 (explicit clamp: never NaN)."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_v(v: torch.Tensor, settings: SageSettings) -> QuantizedV:
    """Per-channel FP8 E4M3 quantization of ``v [B, Hkv, Nk, D]`` (optionally smoothed, optionally static).

    Returns ``QuantizedV`` with ``v_fp8 [B, Hkv, Nk_pad, D]`` (tokens not transposed), ``v_scale [B, Hkv, D]``.
    """
    b, hkv, nk, d = v.shape
    vf = v.to(torch.float32)
    v_mean = None
    if settings.smooth_v:
        v_mean = vf.mean(dim=2)
        vf = vf - v_mean[:, :, None]
    if settings.v_scale is not None:
        scale = static_v_scale(settings.v_scale, b, hkv, d, v.device)
    else:
        scale = vf.abs().amax(dim=2).clamp_min(SCALE_FLOOR) / FP8_MAX
    v_fp8 = to_fp8(pad_tokens(vf * reciprocal(scale)[:, :, None], padded_len(nk)))
    return QuantizedV(v_fp8, scale, v_mean)


def pack_int4(x: torch.Tensor) -> torch.Tensor:
    """INT4 values (int8 in ``[-8, 7]``, ``[..., D]``) to the ABI's packed bytes ``[..., D / 2]`` uint8.

    Two values a byte, the even channel in the low nibble (two's complement nibbles): the layout
    ``sage_abi.h`` gives ``q_int``/``k_int`` for ``SAGE_QK_INT4``.
    """
    if x.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even last dimension, got {x.shape[-1]}")
    lo = x[..., 0::2].to(torch.int16) & 0xF
    hi = x[..., 1::2].to(torch.int16) & 0xF
    return (lo | (hi << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_int4``: ``[..., D / 2]`` uint8 to ``[..., D]`` int8 in ``[-8, 7]``."""
    p = packed.to(torch.int16)
    lo, hi = p & 0xF, (p >> 4) & 0xF
    both = torch.stack((lo, hi), dim=-1).flatten(-2)
    return torch.where(both >= 8, both - 16, both).to(torch.int8)
