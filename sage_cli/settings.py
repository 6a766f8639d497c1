"""Per-site settings of the quantized attention, and the quantization groups they imply.

One `SageSettings` describes how one attention call site is computed. The reference (numerics/) and the
CUDA kernels (csrc/, through kernels/) read the same object, so a setting means the same thing on both.

Quantization groups (the contract between numerics/ and csrc/)
----------------------------------------------------------------
Both mma.sync m16n8kK (sm80/86/89) and wgmma m64nNkK (sm90) give each thread the same accumulator
fragment: inside a 16-row slice of the tile, rows ``lane/4`` and ``lane/4 + 8``; inside each 8-column
slice, columns ``2*(lane%4)`` and ``2*(lane%4) + 1``. A `per_thread` scale is shared by exactly the Q rows
and the K tokens one thread's fragment touches, so dequantizing a score is one multiply of the int32
accumulator by ``q_scale[g_q] * k_scale[g_k]``. Because both arches share the fragment, the grouping is the
same on every arch:

==============  ===========================================  =======================================
granularity     Q group of row ``r``                          K group of token ``t``
==============  ===========================================  =======================================
per_thread      ``(r // 16) * 8 + r % 8``  (8 per 16 rows)    ``(t // 64) * 4 + (t % 8) // 2`` (4 per 64)
per_warp        ``r // 16``                                   ``t // 64``
per_block       ``r // 64``                                   ``t // 64``
==============  ===========================================  =======================================

Scales are float32, ``amax(group) / qmax`` (qmax 127 for INT8, 7 for INT4), with a tiny floor so an
all-zero group never divides by zero. Q smoothing subtracts the mean of each block of `SMOOTH_Q_BLOCK`
rows. Sequence lengths are padded to multiples of `SEQ_PAD` in the quantized buffers (pad rows are zero).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

QK_DTYPES = ("int8", "int4")
GRANULARITIES = ("per_thread", "per_warp", "per_block")
PV_DTYPES = ("fp8", "fp16")
PV_ACCUMS = ("two_level", "narrow")
ROW_SUMS = ("fp32", "mma")

QMAX = {"int8": 127, "int4": 7}
FP8_MAX = 448.0  # largest finite float8_e4m3fn; also the static scale of P
SMOOTH_Q_BLOCK = 64  # rows per Q-smoothing block (one sm90 consumer warpgroup, four sm80 warps)
K_BLOCK = 64  # tokens per K scale block
SEQ_PAD = 128  # quantized Q/K/V buffers are padded to a multiple of this many tokens
SCALE_FLOOR = 1e-8  # amax floor: an all-zero group gets a tiny scale instead of a division by zero
NARROW_ACC_MANTISSA_BITS = 13  # FP8 MMA accumulates in about 22 bits: sign, 8 exponent, ~13 mantissa


def q_group_index(rows: torch.Tensor, granularity: str) -> torch.Tensor:
    """Group id of each Q row (see the module docstring)."""
    if granularity == "per_thread":
        return (rows // 16) * 8 + rows % 8
    if granularity == "per_warp":
        return rows // 16
    if granularity == "per_block":
        return rows // 64
    raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")


def k_group_index(tokens: torch.Tensor, granularity: str) -> torch.Tensor:
    """Group id of each K token (see the module docstring)."""
    if granularity == "per_thread":
        return (tokens // K_BLOCK) * 4 + (tokens % 8) // 2
    if granularity in ("per_warp", "per_block"):
        return tokens // K_BLOCK
    raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")


def num_q_groups(seq_pad: int, granularity: str) -> int:
    return {"per_thread": seq_pad // 2, "per_warp": seq_pad // 16, "per_block": seq_pad // 64}[granularity]


def num_k_groups(seq_pad: int, granularity: str) -> int:
    return {"per_thread": seq_pad // 16, "per_warp": seq_pad // 64, "per_block": seq_pad // 64}[granularity]


@dataclass(frozen=True)
class SageSettings:
    """How one attention site is computed.

    qk_dtype:     "int8" or "int4" for Q and K after smoothing.
    granularity:  "per_thread", "per_warp" or "per_block" scale groups for Q and K.
    smooth_q:     subtract the mean of each 64-row Q block; the bias dS = mean(Q).K'^T is added in fp32.
    smooth_v:     subtract the per-channel mean of V before FP8 quantization; added back to the output.
    pv_dtype:     "fp8" (E4M3 P and V, static P scale 448, per-channel V scale) or "fp16" (V as given,
                  P in the input dtype, fp32 accumulation).
    pv_accum:     "two_level" (narrow FP8-MMA accumulator for one K block, then into fp32) or "narrow"
                  (one narrow accumulator for the whole row; exists to show why two-level matters).
    v_scale:      optional static per-channel V scales, shape [Hkv, D] (or [B, Hkv, D]); values that would
                  overflow saturate at +-448.
    blk_k:        tokens per K block of the online softmax (and of the two-level flush); the kernels tell
                  the reference theirs so that both round P at the same running maximum.
    row_sum:      how the FP8 path's softmax denominator l is summed: "fp32" (the fp32 P before rounding,
                  on CUDA cores: the mma.sync kernels) or "mma" (the FP8-rounded P~ through the P.V MMA,
                  as a column of ones in V: the wgmma kernel, where it saves an add per score). Like
                  blk_k, a property of the kernel that runs, told to the reference (kernels.reference_settings).
    """

    qk_dtype: str = "int8"
    granularity: str = "per_thread"
    smooth_q: bool = False
    smooth_v: bool = False
    pv_dtype: str = "fp8"
    pv_accum: str = "two_level"
    v_scale: Optional[torch.Tensor] = field(default=None, compare=False, repr=False)
    blk_k: int = 64
    row_sum: str = "fp32"

    def __post_init__(self) -> None:
        _check("qk_dtype", self.qk_dtype, QK_DTYPES)
        _check("granularity", self.granularity, GRANULARITIES)
        _check("pv_dtype", self.pv_dtype, PV_DTYPES)
        _check("pv_accum", self.pv_accum, PV_ACCUMS)
        _check("row_sum", self.row_sum, ROW_SUMS)
        if self.blk_k <= 0 or self.blk_k % K_BLOCK:
            raise ValueError(f"blk_k must be a positive multiple of {K_BLOCK}, got {self.blk_k}")

    def replace(self, **changes: Any) -> "SageSettings":
        return dataclasses.replace(self, **changes)

    def label(self) -> str:
        """Short human name, e.g. 'int8/fp8 +sq' for tables."""
        tags = [f"{self.qk_dtype}/{self.pv_dtype}"]
        if self.granularity != "per_thread":
            tags.append(self.granularity)
        if self.smooth_q:
            tags.append("+sq")
        if self.smooth_v:
            tags.append("+sv")
        if self.pv_accum != "two_level":
            tags.append(self.pv_accum)
        return " ".join(tags)

    def to_json(self) -> dict:
        return {
            "qk_dtype": self.qk_dtype,
            "granularity": self.granularity,
            "smooth_q": self.smooth_q,
            "smooth_v": self.smooth_v,
            "pv_dtype": self.pv_dtype,
            "pv_accum": self.pv_accum,
            "static_v_scale": self.v_scale is not None,
        }

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "SageSettings":
        """Build from sageattn's keyword settings; an unknown keyword is an error, never ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown sageattn setting(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**kwargs)


SUPPORTED_ARCHS = ("80", "86", "89", "90")


def normalize_arch(arch: str) -> str:
    """'sm_90a', '90a', 'sm90', '9.0' -> '90'; an unknown arch is a ValueError naming the supported ones."""
    a = arch.strip().lower().replace("sm_", "").replace("sm", "").replace(".", "").rstrip("a")
    if a not in SUPPORTED_ARCHS:
        raise ValueError(f"unknown target arch {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
    return a


def as_the_kernel_runs(settings: SageSettings, arch: Optional[str]) -> SageSettings:
    """``settings`` with the K block and row sum of the kernel that runs it on ``arch`` ("sm_90", "90a",
    "89", ...; None: the reference defaults). On sm_90, INT8 QK with FP8 PV runs the wgmma kernel (K block
    128, row sum through the P.V MMA); everything else runs the mma.sync kernels (K block 64, fp32 row sum).
    Calibration measures candidates with it and installs the artifact's choices with it, so that a run on
    the CPU for an H100 computes what the H100 will; on a GPU, kernels.reference_settings asks the library
    itself (tests/test_kernels_gpu.py checks that the two agree)."""
    if arch is not None and normalize_arch(arch) == "90" and settings.qk_dtype == "int8" and settings.pv_dtype == "fp8":
        return settings.replace(blk_k=128, row_sum="mma")
    return settings.replace(blk_k=64, row_sum="fp32")


def _check(name: str, value: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
