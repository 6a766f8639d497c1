"""The P.V product of one K block, and the accumulator it lands in.

The FP8 MMA (mma.sync m16n8k32 e4m3 and wgmma e4m3) does not accumulate in full fp32: its adder keeps
about 22 bits (sign, 8 exponent bits, ~13 mantissa bits) and drops the rest toward zero after every
instruction, i.e. after every 32-token k-step. Summed over a long row, that truncation bias grows with the
number of steps. The two-level scheme bounds it: the narrow accumulator only ever sums one K block
(``blk_k / 32`` k-steps) and is then added, in real fp32, into the row's buffer.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..settings import FP8_MAX, NARROW_ACC_MANTISSA_BITS
from .quantize import to_fp8

K_STEP = 32  # tokens per FP8 MMA instruction (the k of m16n8k32 / wgmma k32 for e4m3)


def truncate_mantissa(x: torch.Tensor, bits: int = NARROW_ACC_MANTISSA_BITS) -> torch.Tensor:
    """Keep ``bits`` of the 23 fp32 mantissa bits, truncating toward zero (clear the low bits).

    Sign-magnitude: clearing bits shrinks ``|x|``, which is truncation toward zero for either sign.
    """
    drop = 23 - bits
    if drop <= 0:
        return x
    keep = ~((1 << drop) - 1)  # as an int32 mask: the high 9 + bits bits are kept
    return (x.contiguous().view(torch.int32) & keep).view(torch.float32)


def pv_fp8_steps(p: torch.Tensor, v8: torch.Tensor) -> torch.Tensor:
    """Per-k-step partial products of FP8 P and V.

    Parameters
    ----------
    p : ``[B, H, R, L]`` float32 probabilities in [0, 1] (L a multiple of 32)
    v8 : ``[B, H, L, D]`` float32 holding FP8 E4M3 values of ``V / v_scale``

    Returns
    -------
    ``[B, H, L/32, R, D]`` float32: step ``s`` is ``e4m3(448 p[:, :, :, 32s:32s+32]) @ v8[32s:32s+32]``.
    """
    b, h, r, length = p.shape
    steps = length // K_STEP
    p8 = to_fp8(p * FP8_MAX).to(torch.float32)
    p8 = p8.reshape(b, h, r, steps, K_STEP).transpose(2, 3)  # [B, H, S, R, 32]
    return torch.matmul(p8, v8.reshape(b, h, steps, K_STEP, v8.shape[-1]))


def accumulate_fp8(
    acc: torch.Tensor, alpha: torch.Tensor, p: torch.Tensor, v8: torch.Tensor, pv_accum: str
) -> torch.Tensor:
    """Rescale ``acc [B, H, R, D]`` by ``alpha [B, H, R]`` (the online-max correction) and add this block.

    ``two_level``: the block is summed in a fresh narrow accumulator, then added to ``acc`` in fp32.
    ``narrow``: ``acc`` itself is the narrow accumulator for the whole row (rescale included).
    """
    steps = pv_fp8_steps(p, v8)
    if pv_accum == "two_level":
        blk = torch.zeros_like(acc)
        for s in range(steps.shape[2]):
            blk = truncate_mantissa(blk + steps[:, :, s])
        return acc * alpha[..., None] + blk
    acc = acc * alpha[..., None]
    for s in range(steps.shape[2]):
        acc = truncate_mantissa(acc + steps[:, :, s])
    return acc


def accumulate_fp16(
    acc: torch.Tensor, alpha: torch.Tensor, p: torch.Tensor, v: torch.Tensor, p_dtype: Optional[torch.dtype]
) -> torch.Tensor:
    """FP16/BF16 P.V with fp32 accumulation: P is rounded to the input dtype (not for float32 inputs)."""
    if p_dtype is not None:
        p = p.to(p_dtype).to(torch.float32)
    return acc * alpha[..., None] + torch.matmul(p, v)
