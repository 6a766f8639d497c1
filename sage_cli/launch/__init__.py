"""The launcher `sage accelerate` writes, and the runtime it calls."""
from .runtime import Session, open_session
from .writer import write_launcher

__all__ = ["Session", "open_session", "write_launcher"]
