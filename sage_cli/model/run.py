"""Running a loaded model the ways calibrate, verify and the launcher need.

Causal LMs: `text_logits`, `forward`, `perplexity`, `generate`, `top1_agreement`.
Encoders: `encode` (last hidden state).
Diffusers: `diffusion_forward` (a pipeline's final latents, or a bare denoiser on seeded random inputs).
`calibration_forward` and `final_output` pick the right one for any kind.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor

from .errors import ModelError

if TYPE_CHECKING:
    from .loading import LoadedModel

DEFAULT_MAX_TOKENS = 512
DEFAULT_IMAGE_PROMPT = "a photograph of an astronaut riding a horse"
DEFAULT_STEPS = 4  # diffusion steps for calibration and verification: attention statistics, not pretty images


# ------------------------------------------------------------------------------------------------- text


def _tokenizer(loaded: LoadedModel) -> Any:
    if loaded.tokenizer is None:
        raise ModelError(f"{loaded.name} has no tokenizer files; text commands need tokenizer.json or similar")
    return loaded.tokenizer


def tokenize(loaded: LoadedModel, texts: str | Sequence[str], *, max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Tensor]:
    """Tokenize one text or a batch (padded, with an attention mask), truncated to `max_tokens`, on the
    model's device. No chat template: this is raw text for likelihoods and calibration."""
    tok = _tokenizer(loaded)
    batch = [texts] if isinstance(texts, str) else list(texts)
    if not batch or any(not t for t in batch):
        raise ModelError("cannot run the model on an empty text")
    if len(batch) > 1 and tok.pad_token is None:
        tok.pad_token = tok.eos_token  # padding needs a token; it is masked out anyway
    enc = tok(batch, return_tensors="pt", padding=len(batch) > 1, truncation=True, max_length=max_tokens)
    return {k: v.to(loaded.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def text_batches(
    loaded: LoadedModel, texts: Sequence[str], *, max_tokens: int = DEFAULT_MAX_TOKENS
) -> Iterator[dict[str, Tensor]]:
    """One tokenized input per text (batch size 1, so no padding mask is ever needed)."""
    for text in texts:
        yield tokenize(loaded, text, max_tokens=max_tokens)


@torch.inference_mode()
def forward(loaded: LoadedModel, inputs: dict[str, Tensor]) -> Tensor:
    """Logits ``[B, N, vocab]`` of a causal LM for tokenized inputs."""
    if loaded.kind != "causal-lm":
        raise ModelError(f"{loaded.name} is a {loaded.kind}, not a causal LM: it has no logits")
    return loaded.model(**inputs, use_cache=False).logits


def text_logits(loaded: LoadedModel, text: str, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[Tensor, Tensor]:
    """Logits ``[N, vocab]`` and token ids ``[N]`` of one text."""
    inputs = tokenize(loaded, text, max_tokens=max_tokens)
    return forward(loaded, inputs)[0], inputs["input_ids"][0]


def perplexity(loaded: LoadedModel, texts: Sequence[str], *, max_tokens: int = DEFAULT_MAX_TOKENS) -> float:
    """Token-weighted perplexity of the texts (each scored on its own, next-token cross entropy in fp64)."""
    nll, count = 0.0, 0
    for inputs in text_batches(loaded, texts, max_tokens=max_tokens):
        logits = forward(loaded, inputs)[0, :-1].double()
        target = inputs["input_ids"][0, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        count += target.numel()
    if count == 0:
        raise ModelError("perplexity needs texts of at least two tokens")
    return math.exp(nll / count)


def top1_agreement(logits_a: Tensor, logits_b: Tensor) -> float:
    """Fraction of positions whose argmax token agrees; logits ``[..., vocab]`` of equal shape."""
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"logits shapes differ: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    return float((logits_a.argmax(-1) == logits_b.argmax(-1)).double().mean())


@torch.inference_mode()
def generate(loaded: LoadedModel, prompt: str, *, max_new_tokens: int = 32, greedy: bool = True, seed: int = 0) -> str:
    """The model's continuation of `prompt` (only the new text). Instruct models with a chat template get
    the prompt as one user turn. Greedy by default, so two runs differ only if the model does."""
    if loaded.kind != "causal-lm":
        raise ModelError(f"{loaded.name} is a {loaded.kind}; only causal LMs generate text")
    tok = _tokenizer(loaded)
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
    else:
        ids = tok(prompt, return_tensors="pt")
    ids = {k: v.to(loaded.device) for k, v in ids.items() if k in ("input_ids", "attention_mask")}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad}
    if greedy:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        torch.manual_seed(seed)
        options.update(do_sample=True)
    out = loaded.model.generate(**ids, **options)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@torch.inference_mode()
def encode(loaded: LoadedModel, texts: str | Sequence[str], *, max_tokens: int = DEFAULT_MAX_TOKENS) -> Tensor:
    """Last hidden state ``[B, N, hidden]`` of an encoder (or any transformers model) for the texts."""
    inputs = tokenize(loaded, texts, max_tokens=max_tokens)
    out = loaded.model(**inputs)
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        hidden = out.hidden_states[-1] if getattr(out, "hidden_states", None) else out[0]
    return hidden


# --------------------------------------------------------------------------------------------- diffusers


@torch.inference_mode()
def diffusion_forward(loaded: LoadedModel, prompt_or_seed: str | int | None = None, *, steps: int = DEFAULT_STEPS,
                      seed: int = 0) -> Tensor:
    """The final output of a diffusion run.

    A pipeline: ``steps`` denoising steps for the prompt, seeded, returning the final latents (the VAE
    decode is skipped: it holds none of the hooked attention sites). A bare denoiser folder: one forward
    on seeded random inputs shaped from its config (latents, timestep, text states); the prompt is
    ignored there, and an integer `prompt_or_seed` is taken as the seed.
    """
    if not loaded.is_diffusers:
        raise ModelError(f"{loaded.name} is a {loaded.kind}, not a diffusers model")
    if isinstance(prompt_or_seed, int):
        seed, prompt_or_seed = prompt_or_seed, None
    if loaded.pipeline is not None:
        return _run_pipeline(loaded.pipeline, prompt_or_seed or DEFAULT_IMAGE_PROMPT, steps=steps, seed=seed)
    inputs = random_denoiser_inputs(loaded, seed=seed)
    out = loaded.model(**inputs, return_dict=False)
    return out[0]


def _run_pipeline(pipeline: Any, prompt: str, *, steps: int, seed: int) -> Tensor:
    """Call a pipeline with what its signature accepts: the prompt where it takes one (unconditional
    pipelines do not), latents as output where it offers them, else its array output as a tensor."""
    accepted = inspect.signature(pipeline.__call__).parameters
    options: dict[str, Any] = {"num_inference_steps": steps, "generator": torch.Generator(device="cpu").manual_seed(seed)}
    if "prompt" in accepted:
        options["prompt"] = prompt
    # Text-to-image pipelines return latents for "latent" (skipping the VAE, which holds no hooked site);
    # others (DDPM and kin) know only image outputs: take theirs as an array.
    options["output_type"] = "latent" if "prompt" in accepted else "np"
    result = pipeline(**options)
    images = getattr(result, "images", None)
    images = result[0] if images is None else images
    if isinstance(images, Tensor):
        return images
    return torch.as_tensor(np.asarray(images))


def _randn(shape: Sequence[int], generator: torch.Generator, loaded: LoadedModel) -> Tensor:
    return torch.randn(*shape, generator=generator).to(loaded.device, loaded.dtype)


def _sd3_inputs(cfg: Any, g: torch.Generator, loaded: LoadedModel, batch: int) -> dict[str, Tensor]:
    size = min(int(cfg.sample_size), 64)
    return {
        "hidden_states": _randn((batch, cfg.in_channels, size, size), g, loaded),
        "encoder_hidden_states": _randn((batch, 77, cfg.joint_attention_dim), g, loaded),
        "pooled_projections": _randn((batch, cfg.pooled_projection_dim), g, loaded),
        "timestep": torch.randint(0, 1000, (batch,), generator=g).to(loaded.device),
    }


def _flux_inputs(cfg: Any, g: torch.Generator, loaded: LoadedModel, batch: int) -> dict[str, Tensor]:
    side, text = 16, 64  # 16x16 packed latent tokens, 64 text tokens
    ids = torch.zeros(side, side, 3)
    ids[..., 1] = torch.arange(side)[:, None]
    ids[..., 2] = torch.arange(side)[None, :]
    inputs = {
        "hidden_states": _randn((batch, side * side, cfg.in_channels), g, loaded),
        "encoder_hidden_states": _randn((batch, text, cfg.joint_attention_dim), g, loaded),
        "pooled_projections": _randn((batch, cfg.pooled_projection_dim), g, loaded),
        "timestep": torch.rand(batch, generator=g).to(loaded.device, loaded.dtype),
        "img_ids": ids.reshape(-1, 3).to(loaded.device, loaded.dtype),
        "txt_ids": torch.zeros(text, 3).to(loaded.device, loaded.dtype),
    }
    if cfg.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3.5).to(loaded.device, loaded.dtype)
    return inputs


def _unet_inputs(cfg: Any, g: torch.Generator, loaded: LoadedModel, batch: int) -> dict[str, Tensor]:
    size = min(int(cfg.sample_size), 64)
    cross = cfg.cross_attention_dim
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    return {
        "sample": _randn((batch, cfg.in_channels, size, size), g, loaded),
        "timestep": torch.randint(0, 1000, (batch,), generator=g).to(loaded.device),
        "encoder_hidden_states": _randn((batch, 77, cross), g, loaded),
    }


# Input recipes for bare denoiser folders, by class name.
_RECIPES: dict[str, Callable[[Any, torch.Generator, "LoadedModel", int], dict[str, Tensor]]] = {
    "SD3Transformer2DModel": _sd3_inputs,
    "FluxTransformer2DModel": _flux_inputs,
    "UNet2DConditionModel": _unet_inputs,
}


def random_denoiser_inputs(loaded: LoadedModel, *, seed: int = 0, batch: int = 1) -> dict[str, Tensor]:
    """Seeded random inputs for a bare diffusers denoiser, shaped from its config (CPU generator, so the
    same seed gives the same inputs on every device)."""
    name = type(loaded.model).__name__
    recipe = _RECIPES.get(name)
    if recipe is None:
        raise ModelError(
            f"no input recipe for a bare {name} folder (known: {', '.join(sorted(_RECIPES))}); give its pipeline folder"
        )
    return recipe(loaded.model.config, torch.Generator(device="cpu").manual_seed(seed), loaded, batch)


# --------------------------------------------------------------------------------------------- any kind


def calibration_forward(loaded: LoadedModel, prompt: str, *, seed: int = 0,
                        max_tokens: int = DEFAULT_MAX_TOKENS, steps: int = DEFAULT_STEPS) -> None:
    """Run the model once on a calibration prompt, whatever its kind (hooks see every attention call)."""
    final_output(loaded, prompt, seed=seed, max_tokens=max_tokens, steps=steps)


@torch.inference_mode()
def final_output(loaded: LoadedModel, prompt: str, *, seed: int = 0, max_tokens: int = DEFAULT_MAX_TOKENS,
                 steps: int = DEFAULT_STEPS) -> Tensor:
    """The model's end output for a prompt: logits ``[N, vocab]`` (causal LM), last hidden state
    ``[N, hidden]`` (encoder), or the final latents / denoiser output (diffusers)."""
    if loaded.kind == "causal-lm":
        return text_logits(loaded, prompt, max_tokens=max_tokens)[0]
    if loaded.kind == "encoder":
        return encode(loaded, prompt, max_tokens=max_tokens)[0]
    return diffusion_forward(loaded, prompt, steps=steps, seed=seed)
