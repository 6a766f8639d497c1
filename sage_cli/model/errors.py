"""The one error type a user of sage_cli.model can cause."""
from __future__ import annotations

from ..errors import SageUserError


class ModelError(SageUserError):
    """A user error about a model: a missing path, a folder that is not a model, an unsupported architecture,
    a corrupt weights file, or a device that does not exist. The message is one line, fit to print as is."""

    def __init__(self, message: str) -> None:
        # One line, always: the CLI prints str(error) and exits non-zero, never a traceback.
        super().__init__(" ".join(str(message).split()))
