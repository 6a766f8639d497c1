"""The calibration artifact: `<model>/sage/` (or `--out DIR`).

- `config.json`: format and producer versions, the GPU and library versions, the calibration set, the
  budget, and per attention site (key "<module path>#<call index>") the chosen settings or the fall-back
  with its reason, and the measured error of the choice.
- `scales.safetensors`: per-site tensors, keys "<site>/<name>": `v_scale` (static FP8 V scales,
  [Hkv, D]), and the per-channel amax/mean of Q, K and V that calibration recorded.
- `report.json` + `report.png`: written by `sage verify`.

Every file is written to a temporary name and renamed, so an interrupted run never leaves half a file; the
folder is created next to its final place and renamed into it on first write.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from .errors import ArtifactError
from .settings import SageSettings, as_the_kernel_runs

FORMAT_VERSION = 1
ARTIFACT_DIRNAME = "sage"
CONFIG = "config.json"
SCALES = "scales.safetensors"
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
LAUNCHER = "sage_launch.py"


@dataclass
class SitePolicy:
    """What calibration decided for one site."""

    site: str
    settings: Optional[SageSettings]  # None: full precision
    fallback: Optional[str] = None  # why full precision, when settings is None
    error: Optional[dict] = None  # measured error of the choice against float64 (worst over calls)
    static_v_scale: bool = False

    def to_json(self) -> dict:
        d: dict[str, Any] = {"fallback": self.fallback, "error": self.error}
        if self.settings is not None:
            d.update(self.settings.to_json())
            d["static_v_scale"] = self.static_v_scale
        return d

    @classmethod
    def from_json(cls, site: str, d: dict) -> "SitePolicy":
        if d.get("fallback") is not None or "qk_dtype" not in d:
            return cls(site, None, d.get("fallback") or "no settings recorded", d.get("error"))
        settings = SageSettings(
            qk_dtype=d["qk_dtype"], granularity=d["granularity"], smooth_q=bool(d["smooth_q"]),
            smooth_v=bool(d["smooth_v"]), pv_dtype=d["pv_dtype"], pv_accum=d.get("pv_accum", "two_level"),
        )
        return cls(site, settings, None, d.get("error"), bool(d.get("static_v_scale", False)))


@dataclass
class Artifact:
    path: Path
    config: dict
    sites: dict[str, SitePolicy]
    scales: dict[str, torch.Tensor] = field(default_factory=dict)

    def policy(self, device: Optional[torch.device] = None) -> dict[str, Optional[SageSettings]]:
        """Per-site settings to install; static V scales are attached where calibration chose them, and each
        carries the numerics of the kernel that runs it on the calibration's target (settings.py,
        as_the_kernel_runs), which the reference follows wherever the kernels do not run."""
        out: dict[str, Optional[SageSettings]] = {}
        target = self.config.get("target_arch")
        for site, sp in self.sites.items():
            s = as_the_kernel_runs(sp.settings, target) if sp.settings is not None else None
            if s is not None and sp.static_v_scale:
                scale = self.scales.get(f"{site}/v_scale")
                if scale is None:
                    raise ArtifactError(f"{self.path / SCALES} has no v_scale for site {site}; re-run sage calibrate")
                s = s.replace(v_scale=scale.to(device) if device is not None else scale)
            out[site] = s
        return out


def artifact_dir(model_path: Path, out: Optional[Path]) -> Path:
    return Path(out) if out is not None else Path(model_path) / ARTIFACT_DIRNAME


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` (and parents) or explain in one line why it cannot be, naming --out."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".sage-write-test-", delete=True)
        probe.close()
    except OSError as e:
        raise ArtifactError(
            f"cannot write to {path} ({e.strerror or e}); the model folder may be read-only (a hub cache "
            f"snapshot, say): write the artifact elsewhere with --out DIR"
        ) from None
    return path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_artifact(path: Path, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write config.json and scales.safetensors into `path` atomically (scales first, config last: a
    config.json on disk always has its scales beside it). A previous report is removed: it described
    another calibration."""
    from safetensors.torch import save

    ensure_writable_dir(path)
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": "sage"})
    write_bytes_atomic(path / SCALES, data)
    write_json_atomic(path / CONFIG, config)
    for stale in (REPORT_JSON, REPORT_PNG):
        (path / stale).unlink(missing_ok=True)


def read_artifact(path: Path) -> Artifact:
    path = Path(path)
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise ArtifactError(f"no calibration at {path} (missing {CONFIG}); run `sage calibrate` first")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{cfg_path} is not readable JSON ({e}); re-run sage calibrate") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{cfg_path} has format version {config.get('format_version')!r}, this sage reads {FORMAT_VERSION}; "
            "re-run sage calibrate"
        )
    try:
        sites = {k: SitePolicy.from_json(k, v) for k, v in config["sites"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{cfg_path} is malformed ({e}); re-run sage calibrate") from None
    scales: dict[str, torch.Tensor] = {}
    if (path / SCALES).is_file():
        from safetensors.torch import load_file

        try:
            scales = load_file(str(path / SCALES))
        except Exception as e:  # safetensors raises several types for a corrupt file
            raise ArtifactError(f"{path / SCALES} is corrupt ({e}); re-run sage calibrate") from None
    return Artifact(path, config, sites, scales)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
