"""Install sage at the attention sites of a loaded model, per a policy, and count what actually ran."""
from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..settings import SageSettings
from .hooks import AttentionCall, hooked

if TYPE_CHECKING:
    from .loading import LoadedModel

SAGE_DTYPES = (torch.float16, torch.bfloat16)
_MISSING = object()


@dataclass
class SageRunReport:
    """Which backend computed each call, per site: ``counts[site][label]``.

    Labels: "sage-cuda" (the compiled kernels), "sage-reference" (numerics/ in plain torch), or
    "sdpa (<reason>)" for a call that ran in full precision and why.
    """

    backend: str
    counts: dict[str, Counter[str]] = field(default_factory=dict)

    def record(self, site: str, label: str) -> None:
        self.counts.setdefault(site, Counter())[label] += 1

    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for per_site in self.counts.values():
            total.update(per_site)
        return total

    def to_json(self) -> dict:
        return {
            "backend": self.backend,
            "totals": dict(self.totals()),
            "sites": {site: dict(c) for site, c in self.counts.items()},
        }


def _lookup(policy: Mapping[str, SageSettings | None], call: AttentionCall) -> object:
    """The policy entry for a call: by site (``path#index``) first, then by module path alone."""
    settings = policy.get(call.site, _MISSING)
    if settings is _MISSING:
        settings = policy.get(call.module_path, _MISSING)
    return settings


def fallback_reason(call: AttentionCall) -> str | None:
    """Why sage cannot compute this call (it runs in full precision instead), or None when it can."""
    if call.unsupported is not None:
        return call.unsupported
    if call.mask is not None:
        return "mask other than causal"
    if call.is_causal and call.q.shape[2] != call.k.shape[2]:
        # transformers' SDPA path crops K/V for a causal prefill into a static cache (top-left alignment);
        # sage aligns causal bottom-right. Rather than guess which one the model means, run it exactly.
        return "causal with Nq != Nk"
    if call.head_dim not in sage_head_dims():
        return f"head dim {call.head_dim}"
    return None


def sage_head_dims() -> tuple[int, ...]:
    """Head dims sageattn serves, as sage_cli/attention.py declares them (native, and zero-padded)."""
    from .. import attention

    return tuple(attention.KERNEL_HEAD_DIMS) + tuple(attention.PADDED_HEAD_DIMS)


@contextlib.contextmanager
def sage_installed(
    loaded: LoadedModel,
    policy: Mapping[str, SageSettings | None],
    *,
    backend: str = "auto",
) -> Iterator[SageRunReport]:
    """Run the model's attention with sage where the policy says so, full precision elsewhere.

    Parameters
    ----------
    policy : settings per site (``"path#index"``, or a bare module path for every call of that module).
        A value None, a site missing from the policy, a mask other than plain causal, an unsupported head
        dim, dropout/softcap/sinks: full precision, with the reason counted.
    backend : passed to ``sage_cli.attention.sageattn``: "auto" (the CUDA kernels, or SDPA where they cannot
        serve a call, counted with sageattn's reason), "cuda", or "reference" (what the CPU tool uses).

    Q/K/V in float32 (a model on CPU, typically) are cast to bfloat16 for sage, which computes in fp16/bf16
    only, and the output is cast back to float32; the model's other layers stay in float32.

    Yields
    ------
    SageRunReport with per-site counts of which backend ran.
    """
    from .. import attention  # lazily: sage_cli.attention imports the numerics

    report = SageRunReport(backend=backend)

    def handler(call: AttentionCall) -> Tensor | None:
        settings = _lookup(policy, call)
        if settings is _MISSING:
            report.record(call.site, "sdpa (site not in policy)")
            return None
        if settings is None:
            report.record(call.site, "sdpa (policy: full precision)")
            return None
        reason = fallback_reason(call)
        if reason is not None:
            report.record(call.site, f"sdpa ({reason})")
            return None
        q, k, v = call.q, call.k, call.v
        if q.dtype not in SAGE_DTYPES:
            q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
        scale = call.scale if call.scale is not None else call.head_dim ** -0.5
        before = Counter(attention.fallback_counts()) if backend == "auto" else None
        out = attention.sageattn(
            q, k, v, tensor_layout="HND", is_causal=call.is_causal, sm_scale=scale, backend=backend,
            settings=settings,
        )
        report.record(call.site, _label(backend, before, attention.fallback_counts()))
        return out.to(call.q.dtype)

    with hooked(loaded, handler):
        yield report


def _label(backend: str, before: Counter[str] | None, after: Mapping[str, int]) -> str:
    if backend == "auto":
        new = Counter(after) - (before or Counter())
        return f"sdpa ({next(iter(new))})" if new else "sage-cuda"
    return {"cuda": "sage-cuda", "reference": "sage-reference"}.get(backend, f"sdpa (backend {backend})")
