"""Which keys a query row may see: the causal alignment shared by every backend.

Causal attention with ``Nq != Nk`` is aligned bottom-right (the last query sees every key, as in decoding
with a KV cache): query ``i`` sees key ``j`` iff ``j <= i + (Nk - Nq)``. With ``Nq == Nk`` this is the usual
top-left lower triangle. Rows with ``i < Nq - Nk`` see no key at all; every backend returns 0 for them.
"""
from __future__ import annotations

import torch


def visible_mask(
    rows: torch.Tensor, cols: torch.Tensor, *, seq_q: int, seq_k: int, is_causal: bool
) -> torch.Tensor:
    """Boolean ``[len(rows), len(cols)]``: True where query row ``rows[a]`` may attend key ``cols[b]``.

    ``rows``/``cols`` are absolute indices (int64); keys at or past ``seq_k`` (padding) are never visible.
    """
    cols_ok = (cols < seq_k)[None, :]
    if not is_causal:
        return cols_ok.expand(rows.numel(), cols.numel())
    return cols_ok & (cols[None, :] <= rows[:, None] + (seq_k - seq_q))


def fully_masked_rows(seq_q: int, seq_k: int, is_causal: bool) -> int:
    """Number of leading query rows that see no key (only causal with ``Nq > Nk`` has any)."""
    return max(seq_q - seq_k, 0) if is_causal else 0
