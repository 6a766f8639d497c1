"""Write `<model>/sage_launch.py`: a standalone script that runs the model with sage from its own folder."""
from __future__ import annotations

import os
from pathlib import Path

from ..artifact import LAUNCHER, write_bytes_atomic

TEMPLATE = '''#!/usr/bin/env python3
"""Run {name} with sage quantized attention, as calibrated in {artifact_rel}/config.json.

Written by `sage accelerate` (sage-cli {version}). Usage:

    python {launcher} --prompt "Hello"          # prints the result; stderr says which sites run which kernel
    >>> import sage_launch; s = sage_launch.load(); s.run("Hello")
"""
import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_DIR = (HERE / {model_rel!r}).resolve()
ARTIFACT_DIR = (HERE / {artifact_rel!r}).resolve()


def load(backend="auto", device=None):
    """The model loaded from MODEL_DIR with sage installed per ARTIFACT_DIR/config.json (a Session:
    .model, .tokenizer, .run(prompt), .describe(), .close())."""
    from sage_cli.launch.runtime import open_session

    return open_session(MODEL_DIR, ARTIFACT_DIR, backend=backend, device=device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", required=True, help="text to continue (LLMs) or to condition on (diffusers)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--backend", default="auto", choices=["auto", "cuda", "reference"],
                    help="auto: CUDA kernels on a GPU that serves them, else the reference (slow, exact)")
    ap.add_argument("--output", default=None, help="where to save a non-text result (torch.save)")
    args = ap.parse_args(argv)
    try:
        session = load(args.backend)
    except Exception as e:  # a user-facing error is one line, not a traceback
        from sage_cli.errors import SageUserError
        if isinstance(e, SageUserError):
            print(f"error: {{e}}", file=sys.stderr)
            return 2
        raise
    with session:
        session.describe()
        result = session.run(args.prompt, max_new_tokens=args.max_new_tokens)
        if isinstance(result, str):
            print(result)
        else:
            import torch
            out = args.output or "sage_output.pt"
            torch.save(result, out)
            print(f"saved output {{tuple(result.shape)}} to {{out}}")
        session.describe_calls()
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def write_launcher(model_dir: Path, artifact_dir: Path, name: str) -> Path:
    """The launcher goes beside the artifact folder (DESIGN: <artifact>/../sage_launch.py) and finds the
    model and the artifact relative to itself, so the folder can be moved as a whole."""
    from .. import __version__

    artifact_dir = Path(artifact_dir).resolve()
    path = artifact_dir.parent / LAUNCHER
    model_rel = os.path.relpath(Path(model_dir).resolve(), path.parent)
    artifact_rel = os.path.relpath(artifact_dir, path.parent)
    text = TEMPLATE.format(name=name, version=__version__, launcher=LAUNCHER, model_rel=model_rel,
                           artifact_rel=artifact_rel)
    write_bytes_atomic(path, text.encode())
    path.chmod(0o755)
    return path
