"""numerics/ results in the ABI layout, so GPU tests compare the CUDA quantization buffer by buffer.

numerics.quantize_qk keeps INT4 values one per int8 and numerics.quantize_v keeps V un-transposed; the
kernels pack INT4 two per byte (even channel in the low nibble) and write V^T ``[B, Hkv, D, Nk_pad]``.
"""
from __future__ import annotations

import torch

from ..numerics.quantize import QuantizedQK, QuantizedV, pack_int4
from .ops import QuantBuffers


def qk_to_abi(qk: QuantizedQK, qk_dtype: str) -> QuantBuffers:
    """numerics.quantize_qk's result with the ABI's ``q_int`` / ``k_int`` encoding (packed for INT4)."""
    enc = pack_int4 if qk_dtype == "int4" else (lambda t: t)
    return QuantBuffers(q_int=enc(qk.q_int), q_scale=qk.q_scale, k_int=enc(qk.k_int), k_scale=qk.k_scale,
                        k_mean=qk.k_mean, q_mean=qk.q_mean, ds=qk.ds)


def v_to_abi(qv: QuantizedV) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """numerics.quantize_v's result as the ABI's ``(v_fp8 [B, Hkv, D, Nk_pad], v_scale, v_mean)``."""
    return qv.v_fp8.transpose(-1, -2).contiguous(), qv.v_scale, qv.v_mean
