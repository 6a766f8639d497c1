"""Find and load checkpoints (transformers, diffusers, the bundled demo), hook their attention sites, install
sage at them, and run them the ways calibrate/verify/launch need.

    from sage_cli import model as M
    loaded = M.load(None)                          # the bundled demo, SmolLM2-135M-Instruct
    M.sites(loaded)                                # every attention module and its head layout
    with M.hooked(loaded, handler): ...            # every attention call -> handler(AttentionCall)
    with M.sage_installed(loaded, policy) as rep:  # sage where the policy says, counted per site
        M.generate(loaded, "Hello")
"""
from .demo import demo_dir, ensure_demo
from .errors import ModelError
from .hooks import AttentionCall, Handler, SiteInfo, attention_modules, hooked, sites
from .install import SageRunReport, fallback_reason, sage_installed
from .loading import KINDS, LoadedModel, load, resolve_device, resolve_dtype
from .run import (
    calibration_forward,
    diffusion_forward,
    encode,
    final_output,
    forward,
    generate,
    perplexity,
    random_denoiser_inputs,
    text_batches,
    text_logits,
    tokenize,
    top1_agreement,
)

__all__ = [
    "KINDS",
    "AttentionCall",
    "Handler",
    "LoadedModel",
    "ModelError",
    "SageRunReport",
    "SiteInfo",
    "attention_modules",
    "calibration_forward",
    "demo_dir",
    "diffusion_forward",
    "encode",
    "ensure_demo",
    "fallback_reason",
    "final_output",
    "forward",
    "generate",
    "hooked",
    "load",
    "perplexity",
    "random_denoiser_inputs",
    "resolve_device",
    "resolve_dtype",
    "sage_installed",
    "sites",
    "text_batches",
    "text_logits",
    "tokenize",
    "top1_agreement",
]
