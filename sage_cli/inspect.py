"""`sage inspect`: what is in the checkpoint, every attention site, and what this machine can run."""
from __future__ import annotations

from typing import Optional

import torch


def gpu_capabilities() -> dict:
    """The local GPU and which sage paths it has (see DESIGN.md, Dispatch)."""
    from .backends import kernels_unavailable_reason

    if not torch.cuda.is_available():
        return {"gpu": None, "arch": None, "paths": [], "kernels": "no GPU: the reference (numerics/) computes sage on CPU"}
    major, minor = torch.cuda.get_device_capability()
    arch = major * 10 + minor
    if arch >= 90:
        paths = ["INT8 QK + FP8 PV (wgmma)"]
    elif arch >= 89:
        paths = ["INT4/INT8 QK + FP8 PV (mma.sync)"]
    elif arch >= 80:
        paths = ["INT4/INT8 QK + FP16 PV (mma.sync)"]
    else:
        paths = []
    reason = kernels_unavailable_reason()
    return {"gpu": torch.cuda.get_device_name(), "arch": f"sm_{arch}", "paths": paths,
            "kernels": "ready" if reason is None else f"not usable: {reason}"}


def inspect_model(model_path: Optional[str]) -> dict:
    from . import model as M
    from .model.install import sage_head_dims

    loaded = M.load(model_path)
    sites = M.sites(loaded)
    served = sage_head_dims()
    return {
        "model": loaded.summary(),
        "sites": [
            {**(s.to_json() if hasattr(s, "to_json") else dict(s.__dict__)),
             "served": s.head_dim in served and s.heads_q % max(s.heads_kv, 1) == 0}
            for s in sites
        ],
        "machine": gpu_capabilities(),
    }
