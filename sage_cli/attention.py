"""The public op: ``sageattn``, SageAttention's signature on sage's backends.

    from sage_cli.attention import sageattn
    o = sageattn(q, k, v, is_causal=True)                       # HND: q [B, Hq, N, D], k/v [B, Hkv, N, D]
    o, lse = sageattn(q, k, v, tensor_layout="NHD", return_lse=True, qk_dtype="int8", smooth_q=True)

Backends
--------
``"cuda"``       the compiled kernels (``sage_cli.kernels.sageattn_cuda``); a case they cannot serve is an error.
``"reference"``  ``sage_cli.numerics``: the same quantized attention in plain torch (slow, CPU or GPU).
``"sdpa"``       full-precision ``torch.nn.functional.scaled_dot_product_attention``.
``"auto"``       ``"cuda"`` when the inputs are CUDA tensors the kernels serve, else ``"sdpa"``; every fall-back
                 is logged once per distinct reason on ``logging.getLogger("sage")`` and counted
                 (``fallback_counts()``). The decision reads only metadata (device, dtype, shape), so
                 ``torch.compile`` can trace it.

All preprocessing (validation, NHD->HND views, head-dim padding) lives in ``_prepare`` and all
postprocessing (slicing the padding off, the layout back, the K-smoothing LSE correction) in ``_finish``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .numerics import lse_smoothing_correction, quantized_attention_core, reference_attention
from .numerics.masks import fully_masked_rows, visible_mask
from .settings import SageSettings

BACKENDS = ("auto", "cuda", "reference", "sdpa")
LAYOUTS = ("HND", "NHD")
KERNEL_HEAD_DIMS = (64, 128)  # what the kernels compute natively
PADDED_HEAD_DIMS = {80: 128, 96: 128}  # zero-padded to 128: q.k and the kept output channels are unchanged
SAGE_DTYPES = (torch.float16, torch.bfloat16)

log = logging.getLogger("sage")
_fallbacks: Counter[str] = Counter()


class AttentionInputError(ValueError):
    """Inputs or options ``sageattn`` cannot compute with the requested backend (one-line reason)."""


class KernelBackendError(RuntimeError):
    """``backend="cuda"`` was requested but the compiled kernels cannot run this call (one-line reason)."""


def fallback_counts() -> dict[str, int]:
    """How many ``backend="auto"`` calls fell back to full-precision SDPA, by reason."""
    return dict(_fallbacks)


def reset_fallback_counts() -> None:
    """Forget the fall-back counts (the once-per-reason log messages are logged again after this)."""
    _fallbacks.clear()


def _record_fallback(reason: str) -> None:
    # torch.compile cannot trace logging calls: under compilation the reason is counted, not logged.
    if reason not in _fallbacks and not torch.compiler.is_compiling():
        log.warning("sage: falling back to full-precision SDPA: %s", reason)
    _fallbacks[reason] += 1


@dataclass
class _Prepared:
    """HND views of the inputs and what the sage backends need to know about them."""

    q: torch.Tensor  # [B, Hq, Nq, D]
    k: torch.Tensor  # [B, Hkv, Nk, D]
    v: torch.Tensor  # [B, Hkv, Nk, D]
    layout: str
    head_dim: int  # D as given (before any padding)
    sm_scale: float  # from the original D unless given
    unsupported: Optional[str]  # why the sage numerics cannot take these inputs (dtype, head dim), or None

    def padded(self, settings: SageSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, SageSettings]:
        """q, k, v (and a static V scale) with D 80/96 zero-padded to 128; 64/128 untouched (no copy)."""
        target = PADDED_HEAD_DIMS.get(self.head_dim)
        if target is None:
            return self.q, self.k, self.v, settings
        pad = target - self.head_dim
        q, k, v = (F.pad(t, (0, pad)) for t in (self.q, self.k, self.v))
        vs = settings.v_scale
        if vs is not None and vs.shape[-1] == self.head_dim:
            # Pad channels of V are zero, so any positive scale is exact there; 1 keeps it simple.
            settings = settings.replace(v_scale=F.pad(vs.to(torch.float32), (0, pad), value=1.0))
        return q, k, v, settings


def _prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensor_layout: str, sm_scale: Optional[float]) -> _Prepared:
    """Validate the inputs (errors every backend shares) and view them as HND without copying."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise AttentionInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise AttentionInputError(f"{name} must be 4-D ({tensor_layout}), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise AttentionInputError(f"{name} must be floating point, got {t.dtype}")
    if tensor_layout not in LAYOUTS:
        raise AttentionInputError(f"tensor_layout must be one of {LAYOUTS}, got {tensor_layout!r}")
    if not (q.dtype == k.dtype == v.dtype):
        raise AttentionInputError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise AttentionInputError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if tensor_layout == "NHD":
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    b, hq, nq, d = q.shape
    if k.shape != v.shape:
        raise AttentionInputError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)} (HND)")
    if k.shape[0] != b or k.shape[3] != d:
        raise AttentionInputError(f"q {tuple(q.shape)} and k {tuple(k.shape)} (HND) differ in batch size or head dim")
    hkv, nk = k.shape[1], k.shape[2]
    if hkv == 0 or hq % hkv:
        raise AttentionInputError(f"query heads ({hq}) must be a multiple of kv heads ({hkv})")
    if nk == 0:
        raise AttentionInputError("k and v have no tokens (Nk = 0)")
    if sm_scale is not None and not (isinstance(sm_scale, (int, float)) and math.isfinite(sm_scale)):
        raise AttentionInputError(f"sm_scale must be a finite number, got {sm_scale!r}")
    unsupported = None
    if q.dtype not in SAGE_DTYPES:
        unsupported = f"dtype {q.dtype} (sage computes float16 and bfloat16)"
    elif d not in KERNEL_HEAD_DIMS and d not in PADDED_HEAD_DIMS:
        unsupported = f"head dim {d} (sage computes 64 and 128, and pads 80 and 96 to 128)"
    scale = float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(d)
    return _Prepared(q, k, v, tensor_layout, d, scale, unsupported)


def _finish(
    x: _Prepared, o: torch.Tensor, lse: Optional[torch.Tensor], k_mean: Optional[torch.Tensor], return_lse: bool
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Slice the head-dim padding off, restore the layout, add the K-smoothing correction to the LSE."""
    if o.shape[-1] != x.head_dim:
        o = o[..., : x.head_dim]
    if x.layout == "NHD":
        o = o.transpose(1, 2)
    if not return_lse:
        return o
    if k_mean is not None:
        # Padded channels of q and k_mean are zero, so the original (unpadded) q gives the same correction.
        lse = lse + lse_smoothing_correction(x.q, k_mean[..., : x.head_dim], x.sm_scale)
    return o, lse


def _sdpa(x: _Prepared, is_causal: bool, return_lse: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Full-precision SDPA with sage's causal alignment; fully masked rows are 0 (SDPA would give NaN)."""
    q, k, v = x.q, x.k, x.v
    nq, nk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    mask = None
    if is_causal and nq != nk:  # SDPA's is_causal is top-left aligned; sage's is bottom-right
        rows, cols = torch.arange(nq, device=q.device), torch.arange(nk, device=q.device)
        mask = visible_mask(rows, cols, seq_q=nq, seq_k=nk, is_causal=True)
    o = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal and mask is None, scale=x.sm_scale, enable_gqa=gqa
    )
    dead = fully_masked_rows(nq, nk, is_causal)
    if dead:
        keep = torch.arange(nq, device=q.device) >= dead
        o = o.masked_fill(~keep[:, None], 0.0)
    return o, (_lse_fp32(x, is_causal) if return_lse else None)


def _lse_fp32(x: _Prepared, is_causal: bool) -> torch.Tensor:
    """Natural-log LSE of ``sm_scale * Q K^T`` in float32, ``[B, Hq, Nq]`` (SDPA does not return one)."""
    return reference_attention(x.q, x.k, x.v, is_causal=is_causal, sm_scale=x.sm_scale, return_lse=True,
                               dtype=torch.float32)[1]


def _kernels():
    """The compiled-kernel module, imported lazily (it may be absent or unbuildable here)."""
    from . import kernels  # noqa: PLC0415 (lazy on purpose)

    return kernels


def _auto_reason(x: _Prepared, padded: tuple, is_causal: bool) -> Optional[str]:
    """Why ``auto`` cannot use the kernels for these inputs, from metadata only; None when it can.

    ``padded`` is ``x.padded(settings)``: the kernels are asked about the tensors they would be given.
    """
    if x.q.device.type != "cuda":
        return f"inputs are on {x.q.device.type}; the sage kernels need CUDA tensors"
    if x.unsupported is not None:
        return f"unsupported {x.unsupported}"
    try:
        kernels = _kernels()
        kernels.sageattn_cuda  # noqa: B018 (presence check)
    except (ImportError, AttributeError) as e:
        return f"sage kernels not available ({e})"
    status = getattr(kernels, "status", None)
    if status is not None:
        st = status()
        if not st.available:
            return str(st.reason)
    # Optional per-case hook: a metadata-only check of what the built kernels serve (arch, family, sizes).
    check = getattr(kernels, "unsupported_reason", None)
    if check is not None:
        q, k, v, settings = padded
        return check(q, k, v, is_causal=is_causal, settings=settings)
    return None


def _run_cuda(x: _Prepared, padded: tuple, is_causal: bool, return_lse: bool):
    """The kernels on the head-dim-padded inputs: ``(o, lse without the K-smoothing term or None, k_mean)``."""
    q, k, v, settings = padded
    return _kernels().sageattn_cuda(
        q, k, v, is_causal=is_causal, sm_scale=x.sm_scale, return_lse=return_lse, settings=settings
    )


_DEFAULT_SETTINGS = SageSettings()
_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(SageSettings))


def _resolve_settings(kwargs: dict[str, Any]) -> SageSettings:
    if not kwargs:  # the common case; also keeps dataclass introspection out of torch.compile's trace
        return _DEFAULT_SETTINGS
    if "settings" in kwargs:
        given = kwargs.pop("settings")
        if kwargs:
            raise TypeError(f"pass either settings=SageSettings(...) or setting keywords, not both: {', '.join(sorted(kwargs))}")
        if not isinstance(given, SageSettings):
            raise TypeError(f"settings must be a SageSettings, got {type(given).__name__}")
        return given
    if not _SETTING_NAMES.issuperset(kwargs):
        SageSettings.from_kwargs(**kwargs)  # raises its TypeError naming the unknown keywords
    # Constructed directly (same result as from_kwargs) because torch.compile cannot trace
    # dataclasses.fields() on the class; the names were read once at import instead.
    return SageSettings(**kwargs)


def sageattn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    sm_scale: Optional[float] = None,
    return_lse: bool = False,
    backend: str = "auto",
    **settings: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Quantized attention (SageAttention2-style), or full precision where sage cannot serve the call.

    Parameters
    ----------
    q : ``[B, Hq, Nq, D]`` (HND) or ``[B, Nq, Hq, D]`` (NHD); float16 or bfloat16, any strides.
    k, v : ``[B, Hkv, Nk, D]`` / ``[B, Nk, Hkv, D]``; ``Hq % Hkv == 0`` (GQA, never repeated in memory).
    tensor_layout : ``"HND"`` or ``"NHD"``; the output has the same layout.
    is_causal : causal mask, bottom-right aligned when ``Nq != Nk`` (query i sees key j iff
        ``j <= i + Nk - Nq``); query rows that see no key return 0 (LSE -inf).
    sm_scale : softmax scale, default ``1 / sqrt(D)`` of the given D (also when D is padded to 128).
    return_lse : also return the natural-log LSE of ``sm_scale * Q K^T``, float32 ``[B, Hq, Nq]``.
    backend : ``"auto"``, ``"cuda"``, ``"reference"`` or ``"sdpa"`` (see the module docstring).
    **settings : ``SageSettings`` fields (``qk_dtype="int4"``, ``smooth_q=True``, ...) or
        ``settings=SageSettings(...)``. An unknown keyword is a TypeError.

    Returns
    -------
    o in q's dtype and layout, or ``(o, lse)`` with ``return_lse``.

    Raises
    ------
    TypeError on unknown setting keywords; AttentionInputError (a ValueError) on bad inputs or a case the
    requested sage backend cannot compute (head dim other than 64/80/96/128, dtype other than fp16/bf16);
    KernelBackendError when ``backend="cuda"`` cannot run.
    """
    cfg = _resolve_settings(dict(settings))
    if backend not in BACKENDS:
        raise AttentionInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    x = _prepare(q, k, v, tensor_layout, sm_scale)

    if backend == "auto":
        padded = x.padded(cfg) if x.q.device.type == "cuda" and x.unsupported is None else None
        reason = _auto_reason(x, padded, is_causal)
        if reason is None:
            try:
                return _finish(x, *_run_cuda(x, padded, is_causal, return_lse), return_lse)
            except _kernel_unavailable_types() as e:  # a limit only the kernel library knew about
                reason = f"kernel unavailable: {e}"
        _record_fallback(reason)
        backend = "sdpa"

    if backend == "sdpa":
        o, lse = _sdpa(x, is_causal, return_lse)
        return _finish(x, o, lse, None, return_lse)

    if x.unsupported is not None:
        raise AttentionInputError(f"backend {backend!r} cannot compute {x.unsupported}; use backend='auto' or 'sdpa'")
    if backend == "reference":
        qp, kp, vp, cfg = x.padded(cfg)
        o, lse, k_mean = quantized_attention_core(qp, kp, vp, is_causal=is_causal, sm_scale=x.sm_scale, settings=cfg)
        return _finish(x, o, lse, k_mean, return_lse)

    # backend == "cuda"
    if x.q.device.type != "cuda":
        raise AttentionInputError(f"backend 'cuda' needs CUDA tensors, got {x.q.device.type} tensors")
    try:
        result = _run_cuda(x, x.padded(cfg), is_causal, return_lse)
    except ImportError as e:
        raise KernelBackendError(f"backend 'cuda': the sage kernels cannot be imported ({e})") from e
    except _kernel_unavailable_types() as e:
        raise KernelBackendError(f"backend 'cuda': {e}") from e
    return _finish(x, *result, return_lse)


def _kernel_unavailable_types() -> tuple[type[BaseException], ...]:
    """``sage_cli.kernels.KernelUnavailable`` when that module exists, else nothing to catch."""
    try:
        return (_kernels().KernelUnavailable,)
    except (ImportError, AttributeError):
        return ()
