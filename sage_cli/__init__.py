"""sage: SageAttention2-style quantized attention for real models, with proof that they stayed accurate.

    from sage_cli import sageattn
    o = sageattn(q, k, v, is_causal=True)             # q [B, Hq, N, D], k/v [B, Hkv, N, D]

The command-line tool is `sage` (see `sage --help`).
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `sage --help` and the artifact readers don't import torch's attention stack up front.
    if name in ("sageattn", "fallback_counts", "reset_fallback_counts"):
        from . import attention

        return getattr(attention, name)
    if name == "SageSettings":
        from .settings import SageSettings

        return SageSettings
    raise AttributeError(f"module 'sage_cli' has no attribute {name!r}")


__all__ = ["sageattn", "SageSettings", "fallback_counts", "reset_fallback_counts", "__version__"]
