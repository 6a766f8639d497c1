"""Every attention implementation the bench can run: sage itself and the peers it is compared with.

Each implementation answers two questions: `unavailable(case)` (a reason it cannot run here, known
without trying: a missing package, no GPU, the wrong arch) and `prepare(q, k, v, case)` (everything done
once per input set and not timed: layout changes, FP8 pre-quantization for the kernel-alone rows). The
runner then calls `Prepared.run()` to time it and to get the output for the accuracy check. A backend that
refuses a shape at run time (SDPA's "No available kernel", an unsupported head dim) raises on its first
call; the runner reports that message as the skip reason.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..settings import FP8_MAX, SageSettings
from .inputs import Case


@dataclass
class Prepared:
    """One implementation bound to one input set."""

    run: Callable[[], Any]  # the call that is timed
    to_hnd: Callable[[Any], torch.Tensor] = lambda out: out  # its output as ``[B, Hq, N, D]``


@dataclass
class Impl:
    """An implementation: its row name, kind ("sage", "peer", "reference") and how to run it.

    timed:      False for accuracy-only rows (the torch reference of the quantized method).
    slice_only: run on the accuracy slice alone, not on the full inputs (the reference is too slow for that).
    """

    name: str
    kind: str
    prepare: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Case], Prepared]
    unavailable: Callable[[Case], Optional[str]] = lambda case: None
    timed: bool = True
    slice_only: bool = False
    note: Optional[str] = None


# ----------------------------------------------------------------------------------------------- helpers
def _needs_gpu(case: Case) -> Optional[str]:
    return None if case.device.type == "cuda" else "needs a CUDA GPU"


def _needs_hopper(case: Case) -> Optional[str]:
    if case.device.type != "cuda":
        return "needs a CUDA GPU"
    major, minor = torch.cuda.get_device_capability(case.device)
    return None if major == 9 else f"FlashAttention-3 needs a Hopper GPU (sm_90); this one is sm_{major}{minor}"


def _nhd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous()


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def settings_kwargs(settings: Optional[SageSettings]) -> dict[str, Any]:
    """sageattn's keyword settings for ``settings`` (empty: let sageattn pick its defaults for the arch)."""
    if settings is None:
        return {}
    kw = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    if kw.get("v_scale") is None:
        kw.pop("v_scale", None)
    return kw


# --------------------------------------------------------------------------------------------------- sage
def sage_whole_op(settings: Optional[SageSettings]) -> Impl:
    """sageattn end to end: smoothing, quantization and the attention kernel, as a model would call it."""

    def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> Prepared:
        from ..attention import sageattn

        kw = settings_kwargs(settings)
        return Prepared(
            lambda: sageattn(
                q, k, v, tensor_layout="HND", is_causal=case.causal, sm_scale=case.sm_scale, backend="cuda", **kw
            )
        )

    return Impl("sage (whole op)", "sage", prepare, _needs_gpu, note="smoothing + quantization + attention")


def sage_kernel_only(settings: Optional[SageSettings]) -> Impl:
    """The attention kernel alone, on inputs smoothed and quantized beforehand (not timed)."""

    def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> Prepared:
        from .. import kernels

        prepared = kernels.prepare(q, k, v, settings or SageSettings(), is_causal=case.causal, sm_scale=case.sm_scale)
        return Prepared(lambda: kernels.attention_only(prepared))

    return Impl("sage (kernel only)", "sage", prepare, _needs_gpu, note="attention kernel; inputs quantized beforehand")


def sage_reference(settings: Optional[SageSettings], device: torch.device) -> Impl:
    """The plain-torch executable spec of the quantized method: its accuracy is what the kernel should match."""

    def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> Prepared:
        from ..attention import sageattn

        kw = settings_kwargs(_kernel_numerics_here(settings, case))
        return Prepared(
            lambda: sageattn(
                q, k, v, tensor_layout="HND", is_causal=case.causal, sm_scale=case.sm_scale, backend="reference", **kw
            )
        )

    where = "CPU" if device.type == "cpu" else "GPU"
    return Impl(
        f"sage reference ({where})",
        "reference",
        prepare,
        timed=False,
        slice_only=True,
        note="torch emulation of the kernel numerics; accuracy slice only",
    )


def _kernel_numerics_here(settings: Optional[SageSettings], case: Case) -> Optional[SageSettings]:
    """On a GPU the kernels serve, the reference takes the kernel's K block and row sum, so that both round P
    at the same running maximum and divide by the same l (kernels.reference_settings); elsewhere the settings
    stay as given."""
    if case.device.type != "cuda":
        return settings
    try:
        from .. import kernels

        return kernels.reference_settings(case.head_dim, settings or SageSettings(), device=case.device)
    except Exception:  # noqa: BLE001 (no kernels here: the reference keeps its own defaults)
        return settings


# -------------------------------------------------------------------------------------------------- peers
_SDPA_BACKENDS = {
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-math": "MATH",
}
MATH_SCORE_LIMIT_BYTES = 4 * 2**30  # the math backend materializes [B, H, N, N] scores


def sdpa_peer(name: str) -> Impl:
    """torch's scaled_dot_product_attention pinned to one backend with sdpa_kernel (no silent fallback)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, _SDPA_BACKENDS[name])

    def unavailable(case: Case) -> Optional[str]:
        if name == "sdpa-math" and case.device.type == "cuda":
            scores = 4 * case.batch * case.heads_q * case.seq * case.seq
            if scores > MATH_SCORE_LIMIT_BYTES:
                return f"the math backend would materialize {scores / 2**30:.0f} GiB of scores"
        return None

    def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> Prepared:
        gqa = case.heads_q != case.heads_kv

        def run() -> torch.Tensor:
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=case.causal, scale=case.sm_scale, enable_gqa=gqa
                )

        return Prepared(run)

    return Impl(name, "peer", prepare, unavailable)


FA3_MODULES = ("fa3_fwd_interface", "flash_attn_interface")  # the fa3-fwd wheel; flash-attention's hopper/


def _fa3_module() -> Any:
    errors = []
    for mod in FA3_MODULES:
        try:
            return importlib.import_module(mod)
        except ImportError as e:  # not installed, or installed against another torch
            errors.append(f"{mod}: {e}")
    raise ImportError("FlashAttention-3 not importable (pip install fa3-fwd): " + "; ".join(errors))


def _fa3_unavailable(case: Case) -> Optional[str]:
    reason = _needs_hopper(case)
    if reason:
        return reason
    try:
        _fa3_module()
    except ImportError as e:
        return str(e).splitlines()[0]
    return None


def fa3_peer(dtype_name: str) -> Impl:
    """FlashAttention-3 in the input dtype (its inputs are NHD: transposed copies made before timing)."""

    def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> Prepared:
        fa3 = _fa3_module()
        qn, kn, vn = _nhd(q), _nhd(k), _nhd(v)
        return Prepared(
            lambda: fa3.flash_attn_func(qn, kn, vn, softmax_scale=case.sm_scale, causal=case.causal),
            lambda out: _first(out).transpose(1, 2),
        )

    return Impl(f"fa3-{dtype_name}", "peer", prepare, _fa3_unavailable)


def _fp8_per_tensor(x: torch.Tensor, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """x in E4M3 with one scale for the whole tensor, and FA3's descale tensor ``[B, Hkv]`` holding it."""
    scale = (x.abs().amax().float() / FP8_MAX).clamp_min(1e-12)
    x8 = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    descale = scale.reshape(1, 1).expand(case.batch, case.heads_kv).contiguous()
    return x8, descale


def fa3_fp8_peer() -> Impl:
    """FlashAttention-3 FP8: Q, K, V quantized to E4M3 per tensor beforehand; the kernel alone is timed."""

    def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> Prepared:
        fa3 = _fa3_module()
        (q8, dq), (k8, dk), (v8, dv) = (_fp8_per_tensor(_nhd(x), case) for x in (q, k, v))
        return Prepared(
            lambda: fa3.flash_attn_func(
                q8, k8, v8, softmax_scale=case.sm_scale, causal=case.causal, q_descale=dq, k_descale=dk, v_descale=dv
            ),
            lambda out: _first(out).transpose(1, 2),
        )

    return Impl("fa3-fp8", "peer", prepare, _fa3_unavailable, note="kernel alone; per-tensor FP8 inputs")


def _sageattention_version() -> Optional[str]:
    try:
        return importlib.metadata.version("sageattention")
    except importlib.metadata.PackageNotFoundError:
        return None


def sageattention_peer() -> Impl:
    """thu-ml's SageAttention package (whole op: its own quantization plus attention)."""

    def unavailable(case: Case) -> Optional[str]:
        reason = _needs_gpu(case)
        if reason:
            return reason
        try:
            importlib.import_module("sageattention")
        except ImportError as e:
            return f"sageattention not importable: {str(e).splitlines()[0]}"
        return None

    def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> Prepared:
        import sageattention

        return Prepared(
            lambda: sageattention.sageattn(q, k, v, tensor_layout="HND", is_causal=case.causal, sm_scale=case.sm_scale)
        )

    version = _sageattention_version()
    note = f"v{version}, whole op" if version else "whole op"
    return Impl("sageattention", "peer", prepare, unavailable, note=note)


PEERS = ("sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math", "fa3", "fa3-fp8", "sageattention")
DEFAULT_PEERS = tuple(p for p in PEERS if p != "sdpa-math")
PEER_ALIASES = {"fa3-bf16": "fa3", "fa3-fp16": "fa3"}


def peer_impl(name: str, dtype_name: str) -> Impl:
    """The peer called ``name`` (one of `PEERS` or `PEER_ALIASES`); ValueError for an unknown name."""
    key = PEER_ALIASES.get(name, name)
    if key in _SDPA_BACKENDS:
        return sdpa_peer(key)
    if key == "fa3":
        return fa3_peer(dtype_name)
    if key == "fa3-fp8":
        return fa3_fp8_peer()
    if key == "sageattention":
        return sageattention_peer()
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
