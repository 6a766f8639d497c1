"""The `sage` command: parse, call one library function, render. No logic lives here."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .calibrate.run import DEFAULT_MAX_L1, DEFAULT_MIN_COS
from .verify.run import DEFAULT_MAX_PPL_INCREASE, DEFAULT_PROMPT

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Quantized attention (INT8/INT4 QK, FP8 PV) for real models, with proof that they stayed accurate.")

MODEL = typer.Argument(None, help="checkpoint folder (transformers or diffusers); default: the bundled SmolLM2-135M-Instruct demo")
OUT = typer.Option(None, "--out", help="artifact folder (default <model>/sage/)")
JSON = typer.Option(False, "--json", help="print machine-readable JSON instead of tables")
BACKEND = typer.Option("auto", "--backend", help="auto (CUDA kernels on a GPU that serves them, else the reference), cuda, reference")
# Options calibrate, verify and accelerate share: declared once so their names, defaults and help agree.
PROMPT = typer.Option(DEFAULT_PROMPT, "--prompt", help="prompt for the side-by-side generation")
PROMPTS = typer.Option(None, "--prompts", help="calibration prompts, one per paragraph (default: calibration/)")
HELDOUT = typer.Option(None, "--heldout", help="held-out texts (default: calibration/text_heldout.txt)")
MAX_L1 = typer.Option(DEFAULT_MAX_L1, "--max-l1", help="largest relative L1 error a site may have")
MIN_COS = typer.Option(DEFAULT_MIN_COS, "--min-cos", help="smallest cosine similarity a site may have")
ARCH = typer.Option(None, "--arch", help="target GPU arch: 80, 86, 89, 90 (default: this GPU, else 90)")
MAX_PPL = typer.Option(DEFAULT_MAX_PPL_INCREASE, "--max-ppl-increase", help="allowed relative perplexity increase")
MAX_NEW_TOKENS = typer.Option(32, "--max-new-tokens", help="tokens generated for the side-by-side generation")


def command(fn):
    """Register a command whose user errors (SageUserError, or a ValueError from an option's value) end as
    one line on stderr and exit code 2, also under typer's test runner."""
    from .errors import SageUserError

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SageUserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None

    return app.command(name=fn.__name__.rstrip("_"))(run)


def _emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@command
def inspect(model: Optional[str] = MODEL, as_json: bool = JSON) -> None:
    """What is in the checkpoint, every attention site, and what this GPU can run."""
    from . import render
    from .inspect import inspect_model

    info = inspect_model(model)
    if as_json:
        return _emit_json(info)
    for t in render.inspect_tables(info):
        render.out.print(t)


@command
def calibrate(
    model: Optional[str] = MODEL,
    prompts: Optional[Path] = PROMPTS,
    out: Optional[Path] = OUT,
    max_l1: float = MAX_L1,
    min_cos: float = MIN_COS,
    arch: Optional[str] = ARCH,
    static_v_scales: bool = typer.Option(False, "--static-v-scales", help="use calibrated FP8 V scales (saturating) instead of per-call ones"),
    backend: str = BACKEND,
    as_json: bool = JSON,
) -> None:
    """Record Q/K/V statistics at every attention site and choose per site the cheapest settings within budget."""
    from . import render
    from .calibrate import calibrate as run

    with render.progress_bars(not as_json) as progress:
        result = run(model, prompts_file=prompts, out=out, max_l1=max_l1, min_cos=min_cos, arch=arch,
                     backend=backend, static_v_scales=static_v_scales, progress=progress)
    if as_json:
        return _emit_json(result.config)
    render.out.print(render.calibration_table(result))
    s = result.config["summary"]
    render.out.print(f"{s['quantized']}/{s['sites']} sites quantized, {s['full_precision']} full precision. Wrote {result.path}")


@command
def verify(
    model: Optional[str] = MODEL,
    prompt: str = PROMPT,
    out: Optional[Path] = OUT,
    heldout: Optional[Path] = HELDOUT,
    max_ppl_increase: float = MAX_PPL,
    max_new_tokens: int = MAX_NEW_TOKENS,
    backend: str = BACKEND,
    as_json: bool = JSON,
) -> None:
    """Full precision against sage on held-out prompts: per-site and end-to-end error, a table and a plot."""
    from . import render
    from .verify import verify as run

    with render.progress_bars(not as_json) as progress:
        rep = run(model, out=out, prompt=prompt, heldout_file=heldout, backend=backend,
                  max_new_tokens=max_new_tokens, max_ppl_increase=max_ppl_increase, progress=progress)
    if as_json:
        _emit_json(rep.to_json())
    else:
        for t in render.verify_tables(rep):
            render.out.print(t)
        render.out.print(f"report: {rep.artifact}/report.json, plot: {rep.artifact}/report.png")
    if not rep.ok:
        raise typer.Exit(1)


@command
def accelerate(
    model: Optional[str] = MODEL,
    prompt: str = PROMPT,
    out: Optional[Path] = OUT,
    prompts: Optional[Path] = PROMPTS,
    heldout: Optional[Path] = HELDOUT,
    max_l1: float = MAX_L1,
    min_cos: float = MIN_COS,
    max_ppl_increase: float = MAX_PPL,
    arch: Optional[str] = ARCH,
    max_new_tokens: int = MAX_NEW_TOKENS,
    backend: str = BACKEND,
    as_json: bool = JSON,
) -> None:
    """Calibrate + verify + build kernels + write <model>/sage_launch.py."""
    from . import render
    from .accelerate import accelerate as run

    with render.progress_bars(not as_json) as progress:
        res = run(model, out=out, prompt=prompt, prompts_file=prompts, heldout_file=heldout, max_l1=max_l1,
                  min_cos=min_cos, max_ppl_increase=max_ppl_increase, arch=arch, backend=backend,
                  max_new_tokens=max_new_tokens, progress=progress)
    if as_json:
        _emit_json({"calibration": res.calibration.config, "verification": res.verification.to_json(),
                    "kernels": res.kernels, "launcher": str(res.launcher)})
    else:
        render.out.print(render.calibration_table(res.calibration))
        for t in render.verify_tables(res.verification):
            render.out.print(t)
        render.out.print(res.kernels)
        render.out.print(f"launcher: python {res.launcher} --prompt \"...\"")
    if not res.verification.ok:
        raise typer.Exit(1)


def _sizes(text: str) -> list[int]:
    vals = []
    for part in text.split(","):
        p = part.strip().lower()
        if not p:
            continue
        mult = 1024 if p.endswith("k") else 1
        try:
            vals.append(int(float(p.rstrip("k")) * mult))
        except ValueError:
            raise typer.BadParameter(f"not a size: {part!r} (use e.g. 4k,8k,32768)") from None
    if not vals or min(vals) < 1:
        raise typer.BadParameter(f"no valid size in {text!r}")
    return vals


@command
def bench(
    seq: str = typer.Option("4k,8k,32k", "--seq", help="sequence lengths, e.g. 4k,8k,32k"),
    head_dim: str = typer.Option("128", "--head-dim", help="head dims, e.g. 64,128"),
    batch: int = typer.Option(1, "--batch", min=1),
    heads: int = typer.Option(32, "--heads", min=1),
    heads_kv: Optional[int] = typer.Option(None, "--heads-kv", min=1, help="kv heads (GQA); default: --heads"),
    causal: bool = typer.Option(False, "--causal/--no-causal"),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 or fp16"),
    peers: Optional[str] = typer.Option(None, "--peers", help="comma-separated subset of: sdpa-flash, sdpa-cudnn, "
                                        "sdpa-efficient, sdpa-math, fa3, fa3-fp8, sageattention (default: all but sdpa-math)"),
    as_json: bool = JSON,
) -> None:
    """Kernel speed and accuracy against every attention installed (SDPA, FlashAttention-3, SageAttention)."""
    from . import render
    from .bench import render_rows, run_bench

    peer_list = [p.strip() for p in peers.split(",") if p.strip()] if peers else None
    with render.progress_bars(not as_json) as progress:
        rep = run_bench(_sizes(seq), _sizes(head_dim), batch, heads, causal, dtype=dtype, peers=peer_list,
                        heads_kv=heads_kv, progress=progress)
    if as_json:
        return _emit_json(rep.to_json())
    render.print_whole(render.bench_table(render_rows(rep), title=f"sage bench on {rep.device}"))
    for note in rep.notes:
        render.out.print(note)


@command
def build(arch: str = typer.Option(None, "--arch", help="targets, comma-separated: 80,86,89,90a (default: this GPU)")) -> None:
    """Compile the CUDA kernels ahead of time (otherwise they build on first use)."""
    from . import render
    from .kernels import build as run

    archs = [a.strip() for a in arch.split(",") if a.strip()] if arch else []
    if not archs:
        import torch

        if not torch.cuda.is_available():
            raise typer.BadParameter("no GPU here: name the targets with --arch, e.g. --arch 90a,89")
        major, minor = torch.cuda.get_device_capability()
        archs = [f"{major}{minor}" + ("a" if major == 9 else "")]
    with render.err.status(f"building kernels for {', '.join(archs)}"):
        paths = run(archs)
    for a, p in zip(archs, paths):
        render.out.print(f"sm_{a}: {p}")


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")


def main() -> None:
    """Console entry point."""
    _quiet_libraries()
    app()


if __name__ == "__main__":
    main()
