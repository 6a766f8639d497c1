"""Benchmark inputs: attention-like Q/K/V with channel outliers, enough sets to defeat the L2 cache.

Real LLM activations are not unit Gaussians: a few channels of Q and K carry values several times larger
than the rest, and K carries a per-channel mean (what smooth K removes). Pure ``randn`` would flatter any
quantizer, so the inputs here add both, from a fixed seed: a run is reproducible and every implementation
sees exactly the same tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

OUTLIER_EVERY = 32  # one outlier channel per 32 channels (4 of 128)
OUTLIER_GAIN = 8.0  # outlier channels are this many times larger than the rest
K_MEAN_STD = 2.0  # spread of K's per-(head, channel) mean offset
V_MEAN_STD = 0.5  # V gets a milder per-channel offset
DEFAULT_L2_BYTES = 50 * 2**20  # H100's L2 when the device does not say
MAX_SETS = 64  # enough for a 2x L2 rotation down to ~3 MB sets; smaller ones say so in the notes


@dataclass(frozen=True)
class Case:
    """One benchmarked shape: Q ``[B, Hq, N, D]``, K/V ``[B, Hkv, N, D]``, HND, contiguous."""

    batch: int
    heads_q: int
    heads_kv: int
    seq: int
    head_dim: int
    causal: bool
    dtype: torch.dtype
    device: torch.device

    @property
    def sm_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def flops(self) -> float:
        """Multiply-adds of QK^T and PV counted as 2 flops each: 4*B*H*N*N*D, half of it when causal."""
        f = 4.0 * self.batch * self.heads_q * self.seq * self.seq * self.head_dim
        return f / 2 if self.causal else f

    @property
    def set_bytes(self) -> int:
        """Bytes of one Q/K/V set, what one call must read at least."""
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return elem * self.batch * self.seq * self.head_dim * (self.heads_q + 2 * self.heads_kv)


def make_qkv(case: Case, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Q/K/V set (see the module docstring), drawn from ``generator`` on ``case.device``.

    Returns q ``[B, Hq, N, D]`` and k, v ``[B, Hkv, N, D]`` in ``case.dtype``, contiguous.
    """
    b, hq, hkv, n, d = case.batch, case.heads_q, case.heads_kv, case.seq, case.head_dim
    dev = case.device

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=dev, dtype=torch.float32)

    # The same outlier channels in Q and K (in real models they line up, so their product dominates scores).
    gain = torch.ones(d, device=dev)
    gain[OUTLIER_EVERY // 2 :: OUTLIER_EVERY] = OUTLIER_GAIN
    q = randn(b, hq, n, d) * gain
    k = randn(b, hkv, n, d) * gain + K_MEAN_STD * randn(1, hkv, 1, d)
    v = randn(b, hkv, n, d) + V_MEAN_STD * randn(1, hkv, 1, d)
    return q.to(case.dtype), k.to(case.dtype), v.to(case.dtype)


def l2_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or DEFAULT_L2_BYTES)


def num_sets(case: Case, *, memory_budget: int) -> int:
    """How many input sets to rotate through so that each timed call reads data not left in L2.

    Enough sets to cover twice the L2 between two uses of the same set, at least 2 on a GPU, at most
    `MAX_SETS`, and never more than fit in ``memory_budget`` bytes (then at least one, said by the caller).
    On the CPU there is no timing, so one set.
    """
    if case.device.type != "cuda":
        return 1
    want = max(2, math.ceil(2 * l2_bytes(case.device) / case.set_bytes) + 1)
    fit = max(1, memory_budget // case.set_bytes)
    return int(min(want, MAX_SETS, fit))
