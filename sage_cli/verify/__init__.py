"""`sage verify` as a library: per-site and end-to-end error of sage against full precision."""
from .run import VerifyReport, verify

__all__ = ["verify", "VerifyReport"]
