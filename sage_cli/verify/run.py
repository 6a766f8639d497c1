"""`sage verify`: full precision against sage on prompts not used for calibration.

Per site: error of sage and of the model's own attention against float64, on full-precision activations.
End to end, sage installed at every calibrated site:
- LLMs: perplexity on held-out text, top-1 next-token agreement, and the two greedy generations;
- encoders: cosine of the last hidden states;
- diffusers: cosine and PSNR of the final output.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..artifact import REPORT_JSON, REPORT_PNG, artifact_dir, read_artifact, write_json_atomic
from ..backends import resolve as resolve_backend
from ..calibrate.run import CALIBRATION_DIR, read_prompts
from ..progress import ProgressFn, report
from .plot import plot_site_errors
from .sites import SiteError, make_handler

DEFAULT_HELDOUT = CALIBRATION_DIR / "text_heldout.txt"
DEFAULT_PROMPT = "Explain in two sentences why the sky is blue."
DEFAULT_MAX_PPL_INCREASE = 0.01  # the bar: perplexity within 1% of full precision
DEFAULT_MIN_OUTPUT_COS = 0.99  # diffusers / encoders: cosine of the final output


@dataclass
class VerifyReport:
    model: str
    kind: str
    backend: str
    artifact: str
    budget: dict
    sites: list[SiteError]
    end_to_end: dict
    checks: list[dict] = field(default_factory=list)  # {"name", "ok", "detail"}
    runtime: dict = field(default_factory=dict)  # which backend each site ran end to end

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def to_json(self) -> dict:
        return {
            "model": self.model, "kind": self.kind, "backend": self.backend, "artifact": self.artifact,
            "ok": self.ok, "budget": self.budget, "checks": self.checks, "end_to_end": self.end_to_end,
            "runtime": self.runtime, "sites": [s.to_json() for s in self.sites],
        }


def perplexity_and_top1(logits_fp: list[torch.Tensor], logits_sg: list[torch.Tensor], ids: list[torch.Tensor]) -> dict:
    """Token-weighted perplexity of both runs on the same texts and the fraction of positions where the
    argmax next token agrees."""
    nll_fp = nll_sg = 0.0
    agree = total = 0
    for lf, ls, t in zip(logits_fp, logits_sg, ids):
        lf, ls, t = lf[:-1].double(), ls[:-1].double(), t[1:]
        nll_fp += float(torch.nn.functional.cross_entropy(lf, t, reduction="sum"))
        nll_sg += float(torch.nn.functional.cross_entropy(ls, t, reduction="sum"))
        agree += int((lf.argmax(-1) == ls.argmax(-1)).sum())
        total += t.numel()
    ppl_fp, ppl_sg = math.exp(nll_fp / total), math.exp(nll_sg / total)
    return {"tokens": total, "ppl_full_precision": ppl_fp, "ppl_sage": ppl_sg,
            "ppl_increase": ppl_sg / ppl_fp - 1.0, "top1_agreement": agree / total}


def output_similarity(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.double().flatten(), b.double().flatten()
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    mse = float(((a - b) ** 2).mean())
    peak = float(a.abs().max()) or 1.0
    psnr = float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)
    return {"cos": cos, "psnr_db": psnr, "peak": peak}


def verify(
    model_path: Optional[str], *, out: Optional[Path] = None, prompt: str = DEFAULT_PROMPT,
    heldout_file: Optional[Path] = None, backend: str = "auto", max_new_tokens: int = 32,
    max_ppl_increase: float = DEFAULT_MAX_PPL_INCREASE, min_output_cos: float = DEFAULT_MIN_OUTPUT_COS,
    max_texts: Optional[int] = None, progress: Optional[ProgressFn] = None, loaded=None,
) -> VerifyReport:
    from .. import model as M

    report(progress, "loading model", 0, 1)
    loaded = loaded or M.load(model_path)
    report(progress, "loading model", 1, 1)
    art_path = artifact_dir(loaded.path, out)
    art = read_artifact(art_path)
    policy = art.policy(device=loaded.device)
    fallbacks = {s: p.fallback for s, p in art.sites.items() if p.fallback}
    sage_backend, backend_label = resolve_backend(loaded.device, backend)
    budget = dict(art.config.get("budget", {}))
    budget.update({"max_ppl_increase": max_ppl_increase, "min_output_cos": min_output_cos})

    is_diffusion = loaded.kind.startswith("diffusers")
    if is_diffusion:
        texts = read_prompts(heldout_file) if heldout_file else read_prompts(CALIBRATION_DIR / "image_prompts.txt")[-2:]
    else:
        texts = read_prompts(heldout_file or DEFAULT_HELDOUT)
    texts = texts[: max_texts or None]

    # 1. per-site errors on full-precision activations
    errors: dict[str, SiteError] = {}
    handler = make_handler(policy, sage_backend, errors, fallbacks)
    with torch.inference_mode(), M.hooked(loaded, handler):
        for i, text in enumerate(texts):
            report(progress, "per-site errors", i, len(texts))
            M.calibration_forward(loaded, text, seed=1000 + i)
        report(progress, "per-site errors", len(texts), len(texts))

    # 2. end to end: the same inputs through the full-precision model and through the model with sage
    e2e: dict = {}
    runtime: dict = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        if loaded.kind == "causal-lm":
            fp, ids = [], []
            for i, text in enumerate(texts):
                report(progress, "end to end: full precision", i, len(texts))
                lg, tok = M.text_logits(loaded, text)
                fp.append(lg.float().cpu())
                ids.append(tok.cpu())
            gen_fp = M.generate(loaded, prompt, max_new_tokens=max_new_tokens)
            sg = []
            with M.sage_installed(loaded, policy, backend=sage_backend) as rt:
                for i, text in enumerate(texts):
                    report(progress, "end to end: sage", i, len(texts))
                    sg.append(M.text_logits(loaded, text)[0].float().cpu())
                gen_sg = M.generate(loaded, prompt, max_new_tokens=max_new_tokens)
            e2e = perplexity_and_top1(fp, sg, ids)
            e2e.update({"prompt": prompt, "generation_full_precision": gen_fp, "generation_sage": gen_sg,
                        "generations_identical": gen_fp == gen_sg})
        else:
            outs_fp, outs_sg = [], []
            for i, text in enumerate(texts):
                report(progress, "end to end", i, len(texts))
                outs_fp.append(M.final_output(loaded, text, seed=2000 + i).float().cpu())
            with M.sage_installed(loaded, policy, backend=sage_backend) as rt:
                for i, text in enumerate(texts):
                    outs_sg.append(M.final_output(loaded, text, seed=2000 + i).float().cpu())
            sims = [output_similarity(a, b) for a, b in zip(outs_fp, outs_sg)]
            e2e = {"outputs": len(sims), "cos_min": min(s["cos"] for s in sims),
                   "psnr_db_min": min(s["psnr_db"] for s in sims)}
        runtime = rt.to_json() if hasattr(rt, "to_json") else dict(getattr(rt, "counts", {}))
    report(progress, "end to end", len(texts), len(texts))
    e2e["seconds"] = round(time.perf_counter() - t0, 2)

    sites = [errors[s] for s in sorted(errors, key=_site_order)]
    checks = _checks(sites, e2e, loaded.kind, budget)
    rep = VerifyReport(loaded.name, loaded.kind, backend_label, str(art_path), budget, sites, e2e, checks, runtime)
    write_json_atomic(art_path / REPORT_JSON, rep.to_json())
    plot_site_errors([s.to_json() for s in sites], art_path / REPORT_PNG,
                     f"{loaded.name}: per-site attention error vs float64 ({backend_label})", budget)
    return rep


def _site_order(site: str):
    """model.layers.10.self_attn#0 sorts after model.layers.9: numbers compare as numbers."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", site)]


def _checks(sites: list[SiteError], e2e: dict, kind: str, budget: dict) -> list[dict]:
    min_cos = budget.get("min_cos", 0.999)
    bad = [s.site for s in sites if s.fallback is None and s.cos < min_cos]
    checks = [{
        "name": f"every quantized site cos >= {min_cos}",
        "ok": not bad,
        "detail": f"{len(sites) - len(bad)}/{len(sites)} sites pass" + (f"; failing: {', '.join(bad[:5])}" if bad else ""),
    }]
    if "ppl_increase" in e2e:
        inc = e2e["ppl_increase"]
        checks.append({"name": f"perplexity within {budget['max_ppl_increase']:.1%} of full precision",
                       "ok": inc <= budget["max_ppl_increase"],
                       "detail": f"{e2e['ppl_full_precision']:.4f} -> {e2e['ppl_sage']:.4f} ({inc:+.3%})"})
    if "cos_min" in e2e:
        checks.append({"name": f"final output cos >= {budget['min_output_cos']}",
                       "ok": e2e["cos_min"] >= budget["min_output_cos"],
                       "detail": f"cos {e2e['cos_min']:.5f}, PSNR {e2e['psnr_db_min']:.1f} dB"})
    return checks
