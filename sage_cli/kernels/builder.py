"""Build csrc/ with nvcc into one shared library per target, cached on disk.

One library per target (``80``, ``86``, ``89``, ``90a``). Sources: ``csrc/api.cu``, ``csrc/quant/*.cu``,
``csrc/sm80/*.cu`` and, for ``90a`` only, ``csrc/sm90/*.cu`` with ``-DSAGE_WITH_SM90``. A family folder with
no ``.cu`` file is simply left out (``SAGE_HAVE_SM80`` / ``SAGE_HAVE_SM90`` tell api.cu which are in), so
the library always links and reports ``SAGE_ERR_UNSUPPORTED`` for a missing family.

Translation units compile in parallel to object files, then link. The result is cached under
``$SAGE_CACHE_DIR/kernels`` (default ``~/.cache/sage/kernels``) in ``<key>/libsage_sm<arch>.so``, where the key hashes
every file under csrc/, the flags, the target and ``nvcc --version``. A file lock with a second check after
acquiring it keeps two processes from building the same key twice; the library is written under a
temporary name and renamed into place, so a reader never sees half a file.

Flags: ``-O3 -std=c++17 -lineinfo -Xcompiler -fPIC``, no ``--use_fast_math``: the quantization must
round exactly as the reference (it spells its roundings out anyway: ``__frcp_rn``, ``__fmaf_rn``,
``__fdiv_rn``), and kernels that want ``ex2.approx`` ask for it explicitly. ``SAGE_NVCC_FLAGS`` appends
flags (they enter the key).

``SAGE_NO_JIT=1`` forbids building on first use (``library_path(..., jit=True)``); an explicit
``build()`` (``sage build``) still builds.
"""
from __future__ import annotations

import concurrent.futures as cf
import fcntl
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from .errors import KernelBuildError

ARCHS = ("80", "86", "89", "90a")
ABI_VERSION = 3  # SAGE_ABI_VERSION in csrc/sage_abi.h
_LIB_NAME = "libsage_sm{arch}.so"


def csrc_dir() -> Path:
    """The csrc/ folder: ``$SAGE_CSRC_DIR``, else the one next to the sage_cli package (a source checkout)."""
    env = os.environ.get("SAGE_CSRC_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "csrc"
    if not (path / "sage_abi.h").is_file():
        raise KernelBuildError(f"kernel sources not found: {path}/sage_abi.h is missing (set SAGE_CSRC_DIR)")
    return path


def cache_root() -> Path:
    """``$SAGE_CACHE_DIR/kernels`` (sage's one cache root, shared with the demo model), default ~/.cache/sage."""
    env = os.environ.get("SAGE_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "sage") / "kernels"


def jit_allowed() -> bool:
    return os.environ.get("SAGE_NO_JIT", "").strip() not in ("1", "true", "yes")


def check_arch(arch: str) -> str:
    arch = str(arch).strip().removeprefix("sm_")
    if arch == "90":
        arch = "90a"  # wgmma needs the arch-specific target; sm_90 and sm_90a run on the same chips
    if arch == "87":
        arch = "86"  # Orin: sm_86 code runs on 8.7
    if arch not in ARCHS:
        raise KernelBuildError(f"unknown kernel target {arch!r}; choose from {', '.join(ARCHS)}")
    return arch


# ---- nvcc --------------------------------------------------------------------------------------------


def _wheel_nvcc() -> Optional[Path]:
    """nvcc from the ``nvidia-cuda-nvcc`` wheel (``nvidia/cuda_nvcc/bin`` for CUDA 12, ``nvidia/cu13/bin`` for 13)."""
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", []):
        for cand in sorted(Path(root).glob("*/bin/nvcc")):
            if os.access(cand, os.X_OK):
                return cand
    return None


def _nvcc_candidates() -> list[Optional[Path]]:
    cands: list[Optional[Path]] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(Path(os.environ[var]) / "bin" / "nvcc")
    which = shutil.which("nvcc")
    return cands + [Path(which) if which else None, Path("/usr/local/cuda/bin/nvcc"), _wheel_nvcc()]


def find_nvcc() -> Path:
    """nvcc from ``$CUDA_HOME``/``$CUDA_PATH``, ``PATH``, /usr/local/cuda, or the nvidia-cuda-nvcc wheel."""
    for c in _nvcc_candidates():
        if c is not None and c.is_file() and os.access(c, os.X_OK):
            return c
    raise KernelBuildError(
        "nvcc not found (looked in $CUDA_HOME/bin, PATH, /usr/local/cuda/bin and the nvidia-cuda-nvcc wheel); "
        "install the CUDA toolkit or `pip install nvidia-cuda-nvcc`, or set CUDA_HOME"
    )


@functools.lru_cache(maxsize=None)
def nvcc_version(nvcc: Path) -> str:
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"{nvcc} --version failed: {e}") from e
    return out.stdout.strip()


# ---- what to compile ---------------------------------------------------------------------------------


def sources(arch: str, root: Optional[Path] = None) -> list[Path]:
    """The translation units of the library for ``arch``."""
    root = root or csrc_dir()
    srcs = [root / "api.cu", *sorted((root / "quant").glob("*.cu")), *sorted((root / "sm80").glob("*.cu"))]
    if arch == "90a":
        srcs += sorted((root / "sm90").glob("*.cu"))
    return srcs


def flags(arch: str, root: Optional[Path] = None) -> list[str]:
    """nvcc flags of every translation unit for ``arch`` (the families present become defines)."""
    root = root or csrc_dir()
    num = arch.removesuffix("a")
    out = [
        "-O3", "-std=c++17", "-lineinfo", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr",
        f"-gencode=arch=compute_{arch},code=sm_{arch}", f"-DSAGE_TARGET_ARCH={num}", f"-I{root}",
    ]
    if any((root / "sm80").glob("*.cu")):
        out.append("-DSAGE_HAVE_SM80")
    if arch == "90a":
        out.append("-DSAGE_WITH_SM90")
        if any((root / "sm90").glob("*.cu")):
            out.append("-DSAGE_HAVE_SM90")
    out += shlex.split(os.environ.get("SAGE_NVCC_FLAGS", ""))
    return out


def source_hash(arch: str, root: Optional[Path] = None) -> str:
    """Hash of every file under csrc/ (path inside csrc/ and bytes), the flags and the target. Where csrc/
    lies is left out (the include flag is hashed as ``-I<csrc>``): the same sources in another checkout or
    on another machine find the same build."""
    root = root or csrc_dir()
    h = hashlib.sha256()
    h.update(f"abi={ABI_VERSION}\narch={arch}\n".encode())
    h.update(("\0".join("-I<csrc>" if f == f"-I{root}" else f for f in flags(arch, root)) + "\n").encode())
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if "__pycache__" in rel:
            continue
        h.update(b"\0" + rel.encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def cache_key(arch: str, nvcc: Path, root: Optional[Path] = None) -> str:
    """The cache folder name: target, plus a hash of the sources, flags and ``nvcc --version``."""
    h = hashlib.sha256((source_hash(arch, root) + "\n" + nvcc_version(nvcc)).encode())
    return f"sm{arch}-{h.hexdigest()[:20]}"


def cached_library(arch: str) -> Optional[Path]:
    """The cached library built from the current sources, or None (never builds).

    With nvcc present the exact key is used. Without nvcc (a machine that only runs prebuilt libraries),
    any cached library whose manifest records the current source hash is accepted.
    """
    arch = check_arch(arch)
    name = _LIB_NAME.format(arch=arch)
    try:
        nvcc = find_nvcc()
    except KernelBuildError:
        nvcc = None
    if nvcc is not None:
        path = cache_root() / cache_key(arch, nvcc) / name
        return path if path.is_file() else None
    want = source_hash(arch)
    for manifest in sorted(cache_root().glob(f"sm{arch}-*/manifest.txt")):
        lines = manifest.read_text().splitlines()
        if lines and lines[0] == want and (manifest.parent / name).is_file():
            return manifest.parent / name
    return None


# ---- building ----------------------------------------------------------------------------------------


def _first_errors(text: str, limit: int = 12) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower()]
    return "\n".join((errs or lines)[:limit])


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelBuildError(f"{what} failed:\n{_first_errors(proc.stderr + proc.stdout)}")


def _build_one(arch: str, nvcc: Path, pool: cf.Executor) -> Path:
    root = csrc_dir()
    key = cache_key(arch, nvcc, root)
    out_dir = cache_root() / key
    lib = out_dir / _LIB_NAME.format(arch=arch)
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.is_file():  # another process built it while we waited
            return lib
        with tempfile.TemporaryDirectory(prefix="build-", dir=out_dir) as tmp:
            fl = flags(arch, root)
            jobs = []
            for i, src in enumerate(sources(arch, root)):
                obj = Path(tmp) / f"{i:02d}_{src.stem}.o"
                cmd = [str(nvcc), "-c", str(src), "-o", str(obj), *fl]
                jobs.append((pool.submit(_run, cmd, f"nvcc {src.relative_to(root)} (sm_{arch})"), obj))
            objs = []
            for fut, obj in jobs:
                fut.result()
                objs.append(str(obj))
            tmp_lib = Path(tmp) / lib.name
            _run([str(nvcc), "-shared", *objs, "-o", str(tmp_lib), "-Xlinker", "--no-undefined"],
                 f"linking {lib.name}")
            (out_dir / "manifest.txt").write_text(f"{source_hash(arch, root)}\n{nvcc_version(nvcc)}\n")
            os.replace(tmp_lib, lib)  # atomic: readers see no library or the whole one
    return lib


def build(archs: list[str], *, jobs: Optional[int] = None) -> list[Path]:
    """Build (or find cached) the kernel library of each target; returns their paths in order.

    Parameters
    ----------
    archs : targets such as ``["90a", "89"]`` (``"90"`` means ``"90a"``; ``"sm_"`` prefixes are accepted).
    jobs : parallel nvcc processes (default: the CPU count).

    Raises
    ------
    KernelBuildError : unknown target, no nvcc (how to get it), or nvcc's first error lines.
    """
    targets = [check_arch(a) for a in archs]
    nvcc = find_nvcc()
    workers = jobs or os.cpu_count() or 2
    with cf.ThreadPoolExecutor(workers) as pool, cf.ThreadPoolExecutor(max(len(targets), 1)) as outer:
        futs = [outer.submit(_build_one, a, nvcc, pool) for a in targets]
        return [f.result() for f in futs]


def library_path(arch: str, *, jit: bool = True) -> Path:
    """The library for ``arch``: the cached one, else built now (unless ``jit`` is False or SAGE_NO_JIT=1)."""
    arch = check_arch(arch)
    found = cached_library(arch)
    if found is not None:
        return found
    if not jit or not jit_allowed():
        raise KernelBuildError(
            f"no cached kernel library for sm_{arch} and SAGE_NO_JIT=1 forbids building; run `sage build --arch {arch}`"
        )
    print(f"sage: compiling the kernels for sm_{arch} (first use; cached afterwards)...", file=sys.stderr)
    return build([arch])[0]
