"""Find and load a checkpoint: the bundled demo, a transformers folder, or a diffusers pipeline/model folder.

What a folder is decides how it loads:

=============================================  ======================  =====================================
folder holds                                   kind                    loaded with
=============================================  ======================  =====================================
nothing (``path=None``)                        "causal-lm"             the bundled demo (converted once)
``model_index.json``                           "diffusers-pipeline"    ``DiffusionPipeline.from_pretrained``
``config.json`` with ``_class_name``           "diffusers-model"       ``diffusers.<_class_name>``
``config.json`` with ``model_type``, causal    "causal-lm"             ``AutoModelForCausalLM``
``config.json`` with ``model_type``, other     "encoder"               ``AutoModel`` (last hidden state)
=============================================  ======================  =====================================

Every transformers model is loaded with ``attn_implementation="sdpa"`` (eager only where the architecture
has no SDPA path), so full-precision attention is torch SDPA: the same function the hooks call for it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .quiet import quiet_diffusers, quiet_transformers

KINDS = ("causal-lm", "encoder", "diffusers-pipeline", "diffusers-model")

_DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


@dataclass
class LoadedModel:
    """A loaded checkpoint and what the rest of sage needs to run it.

    Attributes
    ----------
    kind : one of "causal-lm", "encoder", "diffusers-pipeline", "diffusers-model".
    name : a short display name (the folder name, or the demo's name).
    path : the checkpoint folder.
    model : the nn.Module that holds the attention modules (for a pipeline: its denoiser, the
        transformer or UNet).
    tokenizer : the tokenizer, or None (diffusers, or a folder without tokenizer files).
    pipeline : the diffusers pipeline, or None.
    device, dtype : where and in what precision the model's weights are.
    """

    kind: str
    name: str
    path: Path
    model: nn.Module
    tokenizer: Any = None
    pipeline: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    @property
    def is_diffusers(self) -> bool:
        return self.kind.startswith("diffusers")

    def summary(self) -> dict:
        """What is in the checkpoint: architecture, parameters, attention layout, dtype, device.

        Heads, kv heads and head dim are single numbers when every attention site agrees, else sorted lists
        of the distinct values.
        """
        from .hooks import sites

        found = sites(self)

        def one_or_all(values: list[int]) -> int | list[int] | None:
            distinct = sorted(set(values))
            return None if not distinct else distinct[0] if len(distinct) == 1 else distinct

        config = getattr(self.model, "config", None)
        layers = getattr(config, "num_hidden_layers", None) if config is not None else None
        return {
            "name": self.name,
            "kind": self.kind,
            "architecture": type(self.model).__name__,
            "pipeline": type(self.pipeline).__name__ if self.pipeline is not None else None,
            "path": str(self.path),
            "params": sum(p.numel() for p in self.model.parameters()),
            "layers": layers if isinstance(layers, int) else len(found),
            "attention_sites": len(found),
            "heads": one_or_all([s.heads_q for s in found]),
            "kv_heads": one_or_all([s.heads_kv for s in found]),
            "head_dim": one_or_all([s.head_dim for s in found]),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }


def load(
    path: str | Path | None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load a checkpoint folder, or the bundled demo model when `path` is None.

    Parameters
    ----------
    path : a transformers checkpoint folder, a diffusers pipeline or model folder, or None for the demo.
    device : "cuda", "cuda:1", "cpu", ...; default: CUDA when a GPU exists, else CPU.
    dtype : torch dtype or a name ("bf16", "fp16", "fp32"); default: bf16 on a GPU that supports it (fp16
        otherwise), float32 on CPU.

    Raises
    ------
    ModelError : the path does not exist, is not a model folder, holds an unsupported architecture or a
        corrupt safetensors file, or CUDA was asked for where there is none.
    """
    device_ = resolve_device(device)
    dtype_ = resolve_dtype(dtype, device_)
    if path is None:
        from .demo import DEMO_NAME, ensure_demo

        folder = ensure_demo()
        loaded = _load_transformers(folder, device_, dtype_)
        loaded.name = DEMO_NAME
        return loaded

    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelError(f"{folder} does not exist")
    if not folder.is_dir():
        raise ModelError(f"{folder} is a file; give the checkpoint folder that holds config.json")
    if (folder / "model_index.json").is_file():
        _check_safetensors(folder, depth=2)
        return _load_diffusers_pipeline(folder, device_, dtype_)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{folder} is not a model folder: it has no config.json or model_index.json")
    config = _read_json(config_file)
    _check_safetensors(folder, depth=1)
    if "_class_name" in config:
        return _load_diffusers_model(folder, config, device_, dtype_)
    if "model_type" in config:
        return _load_transformers(folder, device_, dtype_)
    raise ModelError(f"{config_file} names no architecture: it has neither 'model_type' nor '_class_name'")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to load on: the one asked for (checked to exist), else CUDA if present, else CPU."""
    if device is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}; use 'cuda', 'cuda:N' or 'cpu'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {str(device)!r} was asked for, but no CUDA GPU is available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"device {str(device)!r} was asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    elif dev.type != "cpu":
        raise ModelError(f"device {str(device)!r} is not supported; use 'cuda', 'cuda:N' or 'cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on a GPU that has it (fp16 where not), float32 on CPU, unless a dtype is given."""
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPE_NAMES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r}; use bf16, fp16 or fp32") from None


# ----------------------------------------------------------------------------------------------- checks


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"cannot read {file}: {error}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{file} is not a JSON object")
    return data


def _check_safetensors(folder: Path, depth: int) -> None:
    """Open the header of every .safetensors file (cheap: it is mmapped) so a truncated or garbled file is
    named here, instead of surfacing as an anonymous error from deep inside a loader."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if depth > 1:
        files += sorted(folder.glob("*/*.safetensors"))
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # SafetensorError, OSError: all mean the same thing to the user
            raise ModelError(f"corrupt safetensors file {file}: {error}") from None


def _loader_error(folder: Path, error: BaseException) -> ModelError:
    """Turn a loader's exception into one line that names the folder."""
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    return ModelError(f"cannot load {folder}: {first}")


# ---------------------------------------------------------------------------------------- transformers


def _transformers_kind(config: Any) -> str:
    """'causal-lm' for decoder LMs, 'encoder' for encoder-only models; others are not supported."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    model_type = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"unsupported architecture: encoder-decoder model_type {model_type!r} (e.g. T5) is not served yet")
    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures):
        return "causal-lm"
    if architectures:
        return "encoder"
    # No architectures recorded (a config saved by hand): BERT-like types are in the causal-LM mapping too
    # (as their decoder variant), so only a type that has no masked-LM head counts as a causal LM.
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal-lm"
    if model_type in MODEL_MAPPING_NAMES:
        return "encoder"
    raise ModelError(f"unsupported architecture: model_type {model_type!r} has no causal-LM or encoder class")


def _load_transformers(folder: Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    quiet_transformers()
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError) as error:
        model_type = _read_json(folder / "config.json").get("model_type")
        raise ModelError(
            f"unsupported architecture: model_type {model_type!r} is not known to transformers {transformers.__version__}"
        ) from error
    except (OSError, TypeError) as error:
        raise _loader_error(folder, error) from error
    kind = _transformers_kind(config)
    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    if not _has_weights(folder):
        raise ModelError(f"{folder} has a config.json but no weights (*.safetensors or pytorch_model*.bin)")
    model = None
    for attn in ("sdpa", "eager"):
        try:
            # Pickled weights (pytorch_model.bin) are read by transformers with torch.load(weights_only=True).
            model = auto.from_pretrained(folder, dtype=dtype, attn_implementation=attn)
            break
        except ValueError as error:
            if attn == "sdpa" and "sdpa" in str(error).lower():
                continue  # this architecture has no SDPA path: eager is its full precision
            raise _unsupported_or_error(folder, config, error) from error
        except (OSError, RuntimeError, KeyError, TypeError) as error:
            raise _unsupported_or_error(folder, config, error) from error
    assert model is not None
    model = model.to(device).eval()
    tokenizer = None
    if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt")):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception as error:  # a tokenizer that will not load makes text commands fail: say so here
            raise ModelError(f"cannot load the tokenizer in {folder}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
    return LoadedModel(kind=kind, name=folder.name, path=folder, model=model, tokenizer=tokenizer,
                       device=device, dtype=dtype)


def _has_weights(folder: Path) -> bool:
    patterns = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
    return any(any(folder.glob(p)) for p in patterns)


def _unsupported_or_error(folder: Path, config: Any, error: BaseException) -> ModelError:
    message = str(error)
    if "Unrecognized" in message or "does not support" in message or "not supported" in message:
        return ModelError(f"unsupported architecture {getattr(config, 'model_type', '?')!r} in {folder}: {message.splitlines()[0]}")
    if "safetensors" in message.lower() or "deserializ" in message.lower():
        return ModelError(f"corrupt weights in {folder}: {message.splitlines()[0]}")
    return _loader_error(folder, error)


# ------------------------------------------------------------------------------------------- diffusers


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ModelError("this is a diffusers checkpoint; loading it needs the 'diffusers' package: pip install diffusers") from None
    quiet_diffusers()
    return diffusers


def _load_diffusers_model(folder: Path, config: dict, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    diffusers = _diffusers()
    class_name = config["_class_name"]
    cls = getattr(diffusers, str(class_name), None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ModelError(
            f"unsupported architecture: {class_name!r} is not a model class of diffusers {diffusers.__version__}"
        )
    try:
        model = cls.from_pretrained(folder, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise _loader_error(folder, error) from error
    model = model.to(device).eval()
    return LoadedModel(kind="diffusers-model", name=folder.name, path=folder, model=model, device=device, dtype=dtype)


def _load_diffusers_pipeline(folder: Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    diffusers = _diffusers()
    index = _read_json(folder / "model_index.json")
    class_name = index.get("_class_name")
    if class_name is not None and getattr(diffusers, str(class_name), None) is None:
        raise ModelError(f"unsupported architecture: pipeline {class_name!r} is not in diffusers {diffusers.__version__}")
    try:
        pipeline = diffusers.DiffusionPipeline.from_pretrained(folder, **_pipeline_dtype_kwarg(dtype))
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as error:
        raise _loader_error(folder, error) from error
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    denoiser = getattr(pipeline, "transformer", None) or getattr(pipeline, "unet", None)
    if denoiser is None:
        raise ModelError(f"unsupported architecture: pipeline {type(pipeline).__name__} has no transformer or unet")
    denoiser.eval()
    return LoadedModel(kind="diffusers-pipeline", name=folder.name, path=folder, model=denoiser,
                       pipeline=pipeline, device=device, dtype=dtype)


def _pipeline_dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Newer diffusers name the pipeline dtype ``dtype`` (and deprecate ``torch_dtype``); older ones know only
    ``torch_dtype``. The helper that resolves the two exists exactly in the versions that take ``dtype``."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}
