"""`sage accelerate`: calibrate, verify, build the kernels for this GPU, and write the launcher."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .artifact import artifact_dir
from .progress import ProgressFn, report


@dataclass
class AccelerateResult:
    calibration: object  # calibrate.CalibrationResult
    verification: object  # verify.VerifyReport
    kernels: str  # what happened to the kernel build, one line
    launcher: Path


def build_local_kernels() -> str:
    """Build (or find cached) the kernels for the local GPU; a line saying what happened."""
    import torch

    if not torch.cuda.is_available():
        return "no GPU here: kernels not built (sage runs through the reference; `sage build` compiles ahead of time)"
    try:
        from .kernels import build, status
    except ImportError as e:
        return f"kernels unavailable: {e}"
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}" + ("a" if major == 9 else "")
    try:
        paths = build([arch])
    except Exception as e:  # a failed build falls back to full precision, reported, not a crash
        return f"kernel build for sm_{arch} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    st = status()
    return f"kernels for sm_{arch}: {paths[0] if paths else 'cached'}" + ("" if st.available else f" (unusable: {st.reason})")


def accelerate(model_path: Optional[str], *, out: Optional[Path] = None, prompt: str, prompts_file=None,
               heldout_file=None, max_l1: float, min_cos: float, max_ppl_increase: float, arch=None,
               backend: str = "auto", max_new_tokens: int = 32, progress: Optional[ProgressFn] = None) -> AccelerateResult:
    from . import model as M
    from .calibrate import calibrate
    from .launch import write_launcher
    from .verify import verify

    report(progress, "building kernels", 0, 1)
    kernels = build_local_kernels()
    report(progress, "building kernels", 1, 1)
    loaded = M.load(model_path)
    cal = calibrate(model_path, prompts_file=prompts_file, out=out, max_l1=max_l1, min_cos=min_cos, arch=arch,
                    backend=backend, progress=progress, loaded=loaded)
    ver = verify(model_path, out=out, prompt=prompt, heldout_file=heldout_file, backend=backend,
                 max_new_tokens=max_new_tokens, max_ppl_increase=max_ppl_increase, progress=progress, loaded=loaded)
    launcher = write_launcher(loaded.path, artifact_dir(loaded.path, out), loaded.name)
    return AccelerateResult(cal, ver, kernels, launcher)
