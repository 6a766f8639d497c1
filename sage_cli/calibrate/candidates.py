"""Which settings calibration may choose at a site, cheapest first, for each target arch.

Order is cost: INT4 QK runs the mma at twice the INT8 rate where the hardware has it (sm80/86/89); smooth Q
adds the dS bias (a small GEMM and one more add per score); smooth V adds a channel-mean pass. On sm_90 INT4
mma is emulated (about 25x slower than INT8), so Hopper never gets INT4; and its fast kernel is FP8 PV only.
"""
from __future__ import annotations

from ..settings import SageSettings, as_the_kernel_runs, normalize_arch


def candidates(arch: str) -> list[SageSettings]:
    """The settings to measure, cheapest first, each with the numerics of the kernel that runs it on `arch`."""
    arch = normalize_arch(arch)
    if arch == "90":
        base = SageSettings(qk_dtype="int8", pv_dtype="fp8")
        found = [base, base.replace(smooth_q=True), base.replace(smooth_q=True, smooth_v=True)]
    elif arch == "89":
        i4 = SageSettings(qk_dtype="int4", pv_dtype="fp8")
        i8 = SageSettings(qk_dtype="int8", pv_dtype="fp8")
        found = [i4, i4.replace(smooth_q=True), i8, i8.replace(smooth_q=True), i8.replace(smooth_q=True, smooth_v=True)]
    else:
        i4 = SageSettings(qk_dtype="int4", pv_dtype="fp16")
        i8 = SageSettings(qk_dtype="int8", pv_dtype="fp16")
        found = [i4, i4.replace(smooth_q=True), i8, i8.replace(smooth_q=True)]
    return [as_the_kernel_runs(s, arch) for s in found]
