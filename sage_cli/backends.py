"""Which implementation computes "sage" for a loaded model: one rule shared by calibrate, verify and the
launcher, so that what is measured is what runs."""
from __future__ import annotations

from typing import Optional

import torch

CHOICES = ("auto", "cuda", "reference")


def resolve(device: torch.device | str, requested: str = "auto") -> tuple[str, str]:
    """Return (sageattn backend, human label).

    auto: the CUDA kernels when the model is on a GPU they serve ("auto" inside sageattn, so a call they
    cannot serve falls back to full precision and is counted instead of failing mid-generation); otherwise
    the reference (numerics/), which computes the same quantized attention in plain torch, slowly.
    """
    if requested not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {requested!r}")
    on_gpu = str(device).startswith("cuda")
    if requested == "reference":
        return "reference", "reference (numerics/, plain torch)"
    reason = kernels_unavailable_reason() if on_gpu else "the model is not on a GPU"
    if reason is None:
        return ("cuda" if requested == "cuda" else "auto"), "CUDA kernels"
    if requested == "cuda":
        from .errors import SageUserError

        raise SageUserError(f"--backend cuda asked for, but the kernels cannot run: {reason}")
    return "reference", f"reference (numerics/, plain torch; kernels not used: {reason})"


def kernels_unavailable_reason() -> Optional[str]:
    try:
        from .kernels import status
    except ImportError as e:
        return f"kernels module missing ({e})"
    st = status()
    return None if st.available else st.reason
