"""Which library and which kernel family serve a call, and why not when none does.

Targets by compute capability: 8.0 -> ``80``; 8.6/8.7 -> ``86``; 8.9 -> ``89``; 9.0 -> ``90a``. Newer
chips are not served (sm_90a code does not run on them; the mma.sync family would, but is untested there).
Families: ``wgmma`` (csrc/sm90, sm_90a only: INT8 QK + FP8 PV) and ``mma_sync`` (csrc/sm80, every target;
on sm_90a it is native for FP16 PV and emulated for INT4). ``auto`` picks wgmma on sm_90a for INT8 + FP8,
mma_sync for FP16 PV there, and refuses INT4 on sm_90a (emulated, ~25x slower than INT8: never picked;
force ``family="mma_sync"`` to run it, as the tests do).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Optional

import torch

from ..settings import SEQ_PAD, SMOOTH_Q_BLOCK, SageSettings
from .builder import library_path
from .errors import KernelBuildError, KernelUnavailable
from .library import Library

FAMILIES = ("auto", "mma_sync", "wgmma")
HEAD_DIMS = (64, 128)
DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class KernelStatus:
    """Whether the kernels can run on the current CUDA device; ``reason`` says why not (or what is loaded)."""

    available: bool
    reason: str
    arch: Optional[str]


def arch_of(capability: tuple[int, int]) -> Optional[str]:
    """The library target for a compute capability, or None when no target serves it."""
    major, minor = capability
    if major == 8:
        return {0: "80", 6: "86", 7: "86", 9: "89"}.get(minor)
    if (major, minor) == (9, 0):
        return "90a"
    return None


_libs: dict[str, Library] = {}
_lib_errors: dict[str, str] = {}
_lock = threading.Lock()


def load(arch: str) -> Library:
    """The library for ``arch``, loaded once per process (built on first use unless SAGE_NO_JIT=1).

    A failure is remembered, so a failed build is not retried on every call.
    """
    with _lock:
        if arch in _libs:
            return _libs[arch]
        if arch in _lib_errors:
            raise KernelUnavailable(_lib_errors[arch])
        try:
            lib = Library(library_path(arch))
        except (KernelBuildError, KernelUnavailable) as e:
            _lib_errors[arch] = _summarize(str(e))
            raise KernelUnavailable(_lib_errors[arch]) from e
        _libs[arch] = lib
        return lib


def _summarize(msg: str) -> str:
    """One line from a build error: its first line and nvcc's first error line."""
    lines = msg.splitlines() or ["unknown error"]
    return f"{lines[0].rstrip(':')}: {lines[1].strip()}" if len(lines) > 1 else lines[0]


def reset() -> None:
    """Forget loaded libraries and remembered failures (tests; after `sage build`)."""
    with _lock:
        _libs.clear()
        _lib_errors.clear()
    from . import ops  # noqa: PLC0415 (ops imports this module)

    ops._kernel_for.cache_clear()


def device_arch(device: Optional[torch.device] = None) -> str:
    """The target of ``device`` (default: the current CUDA device); KernelUnavailable when none serves it."""
    if not torch.cuda.is_available():
        raise KernelUnavailable("no CUDA device (torch.cuda.is_available() is False)")
    cap = torch.cuda.get_device_capability(device)
    arch = arch_of(cap)
    if arch is None:
        name = torch.cuda.get_device_name(device)
        low = cap < (8, 0)
        raise KernelUnavailable(
            f"{name} is sm_{cap[0]}{cap[1]}; the kernels need "
            + ("sm_80 or newer (INT8 mma)" if low else "sm_80/86/89/90 (no target for this arch yet)")
        )
    return arch


def library_for(device: torch.device) -> Library:
    return load(device_arch(device))


@torch.compiler.assume_constant_result
def status() -> KernelStatus:
    """Can the kernels run here? Builds the library for this GPU on first call (unless SAGE_NO_JIT=1).

    Under torch.compile the answer is taken once at trace time, as a constant (no graph break).
    """
    try:
        arch = device_arch()
    except KernelUnavailable as e:
        return KernelStatus(False, str(e), None)
    try:
        lib = load(arch)
    except KernelUnavailable as e:
        return KernelStatus(False, str(e), arch)
    return KernelStatus(True, f"loaded {lib.path}", arch)


def resolve_family(arch: str, settings: SageSettings, family: str = "auto") -> str:
    """The family that runs ``settings`` on ``arch``; KernelUnavailable with the reason when none may."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if settings.pv_dtype == "fp8" and arch in ("80", "86"):
        raise KernelUnavailable(f"FP8 P.V needs sm_89 or newer (this GPU is sm_{arch}); use pv_dtype='fp16'")
    if family == "wgmma":
        if arch != "90a":
            raise KernelUnavailable(f"the wgmma family needs sm_90a, this GPU is sm_{arch}")
        if settings.qk_dtype != "int8" or settings.pv_dtype != "fp8":
            raise KernelUnavailable("the wgmma family serves INT8 QK with FP8 P.V only")
        return family
    if family == "mma_sync":
        return family
    if arch == "90a":
        if settings.qk_dtype == "int4":
            raise KernelUnavailable(
                "INT4 QK on sm_90a is emulated (~25x slower than INT8), so it is never picked; use qk_dtype='int8'"
            )
        return "wgmma" if settings.pv_dtype == "fp8" else "mma_sync"
    return "mma_sync"


def input_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    """What in the inputs' metadata the kernels cannot take (device, dtype, rank, head dim, GQA), or None."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.device.type != "cuda":
            return f"{name} is on {t.device.type}; the kernels need CUDA tensors"
        if t.dim() != 4:
            return f"{name} must be 4-D [B, H, N, D] (HND), got {t.dim()}-D"
        if t.dtype not in DTYPES:
            return f"{name} is {t.dtype}; the kernels take float16 or bfloat16"
    if not (q.dtype == k.dtype == v.dtype):
        return f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
    if not (q.device == k.device == v.device):
        return "q, k, v are on different devices"
    b, hq, nq, d = q.shape
    if d not in HEAD_DIMS:
        return f"head dim {d} is not served (64 or 128)"
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        return f"k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}"
    hkv, nk = k.shape[1], k.shape[2]
    if hq % hkv:
        return f"Hq={hq} is not a multiple of Hkv={hkv}"
    if min(b, hq, nq, nk) == 0:
        return "empty input (a zero-sized dimension)"
    if max(nq, nk) > 2**31 - 256:
        return "sequence too long for 32-bit token indices"
    return None


# The smooth-Q bias ds is materialized in fp32, [B, Hq, Nq_pad/64, Nk_pad]: it grows with Nq * Nk, so at
# video-diffusion lengths it would take gigabytes. Past this budget a smooth-Q call is refused (sageattn's
# auto path then runs it in full precision and counts why) rather than risk running out of memory mid-run.
MAX_SMOOTH_Q_BIAS_BYTES = int(os.environ.get("SAGE_MAX_SMOOTH_Q_BIAS_BYTES", 1 << 30))


def smooth_q_bias_problem(q_shape: tuple, k_shape: tuple, smooth_q: bool) -> Optional[str]:
    """Why the smooth-Q bias would be too large for these shapes ([B, Hq, Nq, D], [B, Hkv, Nk, D]), or None."""
    if not smooth_q:
        return None
    b, hq, nq = q_shape[0], q_shape[1], q_shape[2]
    nk_pad = -(-k_shape[2] // SEQ_PAD) * SEQ_PAD
    need = 4 * b * hq * (-(-nq // SEQ_PAD) * SEQ_PAD // SMOOTH_Q_BLOCK) * nk_pad
    if need <= MAX_SMOOTH_Q_BIAS_BYTES:
        return None
    return (f"smooth Q would need a {need / 2**30:.1f} GiB bias at Nq={nq}, Nk={k_shape[2]} (limit "
            f"{MAX_SMOOTH_Q_BIAS_BYTES / 2**30:.1f} GiB, SAGE_MAX_SMOOTH_Q_BIAS_BYTES)")


def unsupported_reason(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool = False,
    settings: Optional[SageSettings] = None, family: str = "auto",
) -> Optional[str]:
    """Why the kernels cannot serve this call, from metadata only (loads the library once); None if they can.

    Safe under torch.compile(fullgraph=True): the metadata checks trace, the library part is a constant.
    """
    del is_causal  # both masks are served
    problem = input_problem(q, k, v)
    if problem is not None:
        return problem
    s = settings or SageSettings()
    too_big = smooth_q_bias_problem(tuple(q.shape), tuple(k.shape), s.smooth_q)
    if too_big is not None:
        return too_big
    reason = _config_reason(q.device.index or 0, s.qk_dtype, s.pv_dtype, family)
    return reason or None


@torch.compiler.assume_constant_result
def _config_reason(device_index: int, qk_dtype: str, pv_dtype: str, family: str) -> str:
    """'' when this device's library serves the configuration, else why not. A constant under
    torch.compile (it loads the library: file locks and ctypes are not traceable)."""
    try:
        arch = device_arch(torch.device("cuda", device_index))
        resolve_family(arch, SageSettings(qk_dtype=qk_dtype, pv_dtype=pv_dtype), family)
        load(arch)
    except KernelUnavailable as e:
        return str(e)
    return ""
