"""Silence the model libraries' own progress bars, logging and warnings, in one place.

sage renders its own progress and tables; the libraries' bars and deprecation chatter would interleave with
them and bury the one line that matters. Called by every loader before it touches transformers/diffusers.
"""
from __future__ import annotations

import logging
import warnings

_done: set[str] = set()


def quiet_transformers() -> None:
    """Set transformers' (and huggingface_hub's) logging to errors only and turn their progress bars off."""
    if "transformers" in _done:
        return
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    _quiet_hub()
    for module in ("transformers", "torch.nn.modules", "gguf"):
        _ignore_warnings(module)
    logging.getLogger("gguf").setLevel(logging.ERROR)
    _done.add("transformers")


def quiet_diffusers() -> None:
    """The same for diffusers (imported only when a diffusers folder is loaded: it is slow to import)."""
    if "diffusers" in _done:
        return
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    _quiet_hub()
    _ignore_warnings("diffusers")
    _done.add("diffusers")


def _ignore_warnings(module: str) -> None:
    """User, future and deprecation warnings raised from ``module`` are not shown."""
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=module)


def _quiet_hub() -> None:
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # an old hub without the switch: nothing to turn off
        return
    disable_progress_bars()
