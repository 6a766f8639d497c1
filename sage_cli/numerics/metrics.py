"""Error metrics of an output against a reference, all in float64."""
from __future__ import annotations

import torch


def error_metrics(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Compare ``out`` with ``ref`` (same shape, any dtype; computed in float64 on the flattened tensors).

    Returns
    -------
    dict with ``cos`` (cosine similarity), ``rel_l1`` (``sum|o - r| / sum|r|``), ``rmse`` and ``max_abs``.
    A NaN or Inf anywhere in ``out`` makes every metric NaN, so it cannot pass a threshold by accident.
    """
    if out.shape != ref.shape:
        raise ValueError(f"error_metrics: shapes differ, {tuple(out.shape)} vs {tuple(ref.shape)}")
    o = out.detach().to(torch.float64).flatten()
    r = ref.detach().to(torch.float64).flatten().to(o.device)
    if not bool(torch.isfinite(o).all()):
        nan = float("nan")
        return {"cos": nan, "rel_l1": nan, "rmse": nan, "max_abs": nan}
    diff = o - r
    denom = (o.norm() * r.norm()).item()
    # Two all-zero tensors are identical: cosine 1. One zero and one not: cosine 0.
    cos = (torch.dot(o, r).item() / denom) if denom > 0 else (1.0 if o.abs().sum() == r.abs().sum() == 0 else 0.0)
    ref_l1 = r.abs().sum().item()
    err_l1 = diff.abs().sum().item()
    rel_l1 = err_l1 / ref_l1 if ref_l1 > 0 else (0.0 if err_l1 == 0 else float("inf"))
    return {
        "cos": float(cos),
        "rel_l1": float(rel_l1),
        "rmse": float(diff.pow(2).mean().sqrt().item()) if diff.numel() else 0.0,
        "max_abs": float(diff.abs().max().item()) if diff.numel() else 0.0,
    }
