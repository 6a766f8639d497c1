"""Running statistics of Q, K and V at one attention site.

Per (head, channel): amax and mean of Q, K and V over every token seen; the spread of the per-64-row Q block
means (how much smooth Q can remove); NaN/Inf counts. They are what the artifact keeps (static V scales
come from V's amax, see `static_v_scale`) and what `sage calibrate` shows per site.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..settings import FP8_MAX, SMOOTH_Q_BLOCK

# Static V scales map twice the calibrated channel amax to 448. E4M3 is floating point, so the headroom
# costs one octave at the bottom of its range (values under 2^-6 of the scale go subnormal) and no relative
# precision above it, while V on new text may exceed what calibration saw: without headroom it saturates
# (on SmolLM2, 6 of 30 sites fell under cos 0.999 on held-out text).
STATIC_V_HEADROOM = 2.0


def static_v_scale(v_amax: torch.Tensor) -> torch.Tensor:
    return (v_amax.float().clamp_min(1e-8) * STATIC_V_HEADROOM / FP8_MAX).contiguous()


@dataclass
class _Channel:
    """amax and running mean over tokens, per [heads, D]."""

    amax: Optional[torch.Tensor] = None
    total: Optional[torch.Tensor] = None
    tokens: int = 0

    def update(self, x: torch.Tensor) -> None:  # x: [B, H, N, D] float32, finite
        amax = x.abs().amax(dim=(0, 2))
        total = x.sum(dim=(0, 2), dtype=torch.float64)
        if self.amax is None or self.amax.shape != amax.shape:
            self.amax, self.total, self.tokens = amax, total, 0
        else:
            self.amax = torch.maximum(self.amax, amax)
            self.total = self.total + total
        self.tokens += x.shape[0] * x.shape[2]

    @property
    def mean(self) -> torch.Tensor:
        return (self.total / max(self.tokens, 1)).float()


@dataclass
class SiteStats:
    q: _Channel = field(default_factory=_Channel)
    k: _Channel = field(default_factory=_Channel)
    v: _Channel = field(default_factory=_Channel)
    calls: int = 0
    nonfinite: int = 0
    masked_calls: int = 0
    q_block_mean_spread: float = 0.0  # max over calls of std over Q blocks of the block mean (avg over channels)
    shapes: set = field(default_factory=set)

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masked: bool) -> bool:
        """Add one call (HND tensors). Returns False when the call had NaN/Inf (then it is only counted)."""
        self.calls += 1
        self.masked_calls += int(masked)
        self.shapes.add((tuple(q.shape), tuple(k.shape)))
        bad = sum(int((~torch.isfinite(t)).sum()) for t in (q, k, v))
        if bad:
            self.nonfinite += bad
            return False
        qf, kf, vf = (t.detach().float() for t in (q, k, v))
        self.q.update(qf)
        self.k.update(kf)
        self.v.update(vf)
        n = qf.shape[2] // SMOOTH_Q_BLOCK * SMOOTH_Q_BLOCK
        if n >= 2 * SMOOTH_Q_BLOCK:
            blocks = qf[:, :, :n].unflatten(2, (-1, SMOOTH_Q_BLOCK)).mean(dim=3)  # [B, H, nblk, D]
            self.q_block_mean_spread = max(self.q_block_mean_spread, float(blocks.std(dim=2).mean()))
        return True

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the artifact stores for this site (float32, per kv/q head and channel)."""
        out: dict[str, torch.Tensor] = {}
        for name, ch in (("q", self.q), ("k", self.k), ("v", self.v)):
            if ch.amax is not None:
                out[f"{name}_amax"] = ch.amax.float().contiguous()
                out[f"{name}_mean"] = ch.mean.contiguous()
        if self.v.amax is not None:
            out["v_scale"] = static_v_scale(self.v.amax)
        return out

    def summary(self) -> dict:
        def peak(ch: _Channel) -> Optional[float]:
            return None if ch.amax is None else float(ch.amax.max())

        def mean_ratio(ch: _Channel) -> Optional[float]:
            # How far the channel means sit from zero relative to the channel amax: K's is what smooth K
            # removes; large Q ratios are what smooth Q is for.
            if ch.amax is None:
                return None
            return float((ch.mean.abs() / ch.amax.clamp_min(1e-8)).max())

        return {
            "calls": self.calls,
            "tokens": self.k.tokens,
            "nonfinite_values": self.nonfinite,
            "masked_calls": self.masked_calls,
            "q_amax": peak(self.q),
            "k_amax": peak(self.k),
            "v_amax": peak(self.v),
            "q_mean_over_amax": mean_ratio(self.q),
            "k_mean_over_amax": mean_ratio(self.k),
            "q_block_mean_spread": self.q_block_mean_spread,
        }
