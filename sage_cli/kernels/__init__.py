"""The compiled CUDA kernels: build (nvcc, cached), load (ctypes), dispatch by arch, torch custom ops.

    from sage_cli import kernels
    kernels.status()                        # KernelStatus(available, reason, arch)
    o, lse, k_mean = kernels.sageattn_cuda(q, k, v, is_causal=True, settings=SageSettings())
    kernels.build(["90a", "89"])            # `sage build --arch 90a,89`

Modules: builder.py (nvcc, cache, lock), library.py (ctypes ABI), dispatch.py (arch, family, status),
ops.py (buffers, calls, the ``sage::attn_fwd`` custom op), layout.py (numerics -> ABI layout, for tests).
"""
from .builder import ARCHS, build, cached_library, find_nvcc, library_path
from .dispatch import KernelStatus, resolve_family, status, unsupported_reason
from .errors import KernelBuildError, KernelError, KernelUnavailable
from .ops import Prepared, QuantBuffers, attention_only, prepare, quantize, reference_settings, sageattn_cuda

__all__ = [
    "ARCHS", "KernelBuildError", "KernelError", "KernelStatus", "KernelUnavailable", "Prepared", "QuantBuffers",
    "attention_only", "build", "cached_library", "find_nvcc", "library_path", "prepare", "quantize", "reference_settings",
    "resolve_family", "sageattn_cuda", "status", "unsupported_reason",
]
