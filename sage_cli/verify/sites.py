"""Per-site error: at every attention call of a full-precision forward, compute sage's output on the same
Q/K/V and compare both it and the model's own full-precision attention with float64 attention.

The model keeps running in full precision, so each site is judged on exactly the inputs it sees in the
unquantized model: errors do not compound here (the end-to-end figures show the compounded effect).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..calibrate.evaluate import last_query_rows
from ..settings import SageSettings


@dataclass
class SiteError:
    site: str
    settings: str  # label, or "full precision"
    fallback: Optional[str]
    calls: int = 0
    cos: float = 1.0
    rel_l1: float = 0.0
    rmse: float = 0.0
    max_abs: float = 0.0
    fp_rel_l1: float = 0.0  # the model's own dtype attention vs float64: the floor any method sits on
    backends: dict = field(default_factory=dict)

    def add(self, m: dict, fp: dict) -> None:
        self.calls += 1
        self.cos = min(self.cos, m["cos"])
        self.rel_l1 = max(self.rel_l1, m["rel_l1"])
        self.rmse = max(self.rmse, m["rmse"])
        self.max_abs = max(self.max_abs, m["max_abs"])
        self.fp_rel_l1 = max(self.fp_rel_l1, fp["rel_l1"])

    def to_json(self) -> dict:
        return dict(self.__dict__)


def make_handler(policy: dict[str, Optional[SageSettings]], backend: str, errors: dict[str, SiteError],
                 fallbacks: dict[str, str], max_queries: int = 1024):
    from ..attention import sageattn
    from ..numerics import error_metrics, reference_attention

    def handler(call):
        settings = policy.get(call.site)
        err = errors.get(call.site)
        if err is None:
            label = settings.label() if settings is not None else "full precision"
            why = None if settings is not None else fallbacks.get(call.site, "not calibrated")
            err = errors[call.site] = SiteError(call.site, label, why)
        if call.mask is not None:
            return None  # such calls run in full precision under sage too (counted by the installer)
        q = last_query_rows(call.q, max_queries)
        k, v = call.k, call.v
        scale = call.scale if call.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        ref, _ = reference_attention(q, k, v, is_causal=call.is_causal, sm_scale=scale)
        fp = sageattn(q, k, v, is_causal=call.is_causal, sm_scale=scale, backend="sdpa")
        fp_m = error_metrics(fp, ref)
        if settings is None:
            err.add(fp_m, fp_m)
            return None
        qs, ks, vs = (t.to(torch.bfloat16) if t.dtype == torch.float32 else t for t in (q, k, v))
        out = sageattn(qs, ks, vs, is_causal=call.is_causal, sm_scale=scale, backend=backend, settings=settings)
        err.add(error_metrics(out, ref), fp_m)
        err.backends[backend] = err.backends.get(backend, 0) + 1
        return None

    return handler
