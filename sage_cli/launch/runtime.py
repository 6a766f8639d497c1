"""What a generated sage_launch.py calls: load a model from its folder with sage installed per its artifact."""
from __future__ import annotations

import contextlib
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

import torch

from ..artifact import read_artifact
from ..backends import resolve as resolve_backend


@dataclass
class Session:
    """A loaded model with sage installed; `close()` (or leaving a `with`) restores full precision."""

    loaded: object
    backend: str
    backend_label: str
    plan: dict[str, str]
    _stack: contextlib.ExitStack = field(repr=False, default_factory=contextlib.ExitStack)
    _runtime: object = None

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def run(self, prompt: str, *, max_new_tokens: int = 64, seed: int = 0):
        """Causal LMs: the greedy continuation of `prompt` (chat template where the model has one).
        Other models: the final output tensor for `prompt` (a diffusion sample, a last hidden state)."""
        from .. import model as M

        with torch.inference_mode():
            if self.loaded.kind == "causal-lm":
                return M.generate(self.loaded, prompt, max_new_tokens=max_new_tokens)
            return M.final_output(self.loaded, prompt, seed=seed)

    def counts(self) -> dict:
        rt = self._runtime
        if rt is None:
            return {}
        return rt.to_json() if hasattr(rt, "to_json") else dict(getattr(rt, "counts", {}))

    def describe(self, stream: TextIO = sys.stderr) -> None:
        """Say which sites run which kernel (the plan from config.json)."""
        by_choice = Counter(self.plan.values())
        print(f"sage: {len(self.plan)} attention sites, backend {self.backend_label}", file=stream)
        for choice, n in by_choice.most_common():
            sites = [s for s, c in self.plan.items() if c == choice]
            shown = ", ".join(sites[:3]) + (f", ... ({n} sites)" if n > 3 else "")
            print(f"sage:   {choice}: {shown}", file=stream)

    def describe_calls(self, stream: TextIO = sys.stderr) -> None:
        """Say what actually ran: attention calls per backend since load()."""
        totals = self.counts().get("totals") or {}
        print("sage: calls: " + (", ".join(f"{k} {v}" for k, v in sorted(totals.items())) or "none"), file=stream)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_session(model_dir: Path, artifact_dir: Path, *, backend: str = "auto", device: Optional[str] = None) -> Session:
    from .. import model as M

    art = read_artifact(artifact_dir)
    loaded = M.load(str(model_dir), device=device)
    sage_backend, label = resolve_backend(loaded.device, backend)
    policy = art.policy(device=loaded.device)
    plan = {}
    for site, sp in art.sites.items():
        plan[site] = f"sage {sp.settings.label()}" if sp.settings is not None else f"full precision ({sp.fallback})"
    session = Session(loaded, sage_backend, label, plan)
    session._runtime = session._stack.enter_context(M.sage_installed(loaded, policy, backend=sage_backend))
    return session
