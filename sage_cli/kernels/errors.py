"""Errors of the compiled-kernel layer, each with a one-line message."""
from __future__ import annotations

from ..errors import SageUserError


class KernelUnavailable(RuntimeError):
    """The CUDA kernels cannot serve this call (no GPU, arch, head dim, dtype, setting, missing build).

    ``sageattn(backend="auto")`` catches it and falls back; the message says why in one line.
    """


class KernelBuildError(SageUserError):
    """Building the kernel library failed: no nvcc, or nvcc reported errors (the first ones are quoted)."""


class KernelError(RuntimeError):
    """The library rejected a call it should have served or a CUDA call failed (a bug, not a user error)."""
