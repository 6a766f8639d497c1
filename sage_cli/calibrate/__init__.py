"""`sage calibrate` as a library: statistics, candidate settings and the per-site choice."""
from .candidates import candidates, normalize_arch
from .run import DEFAULT_MAX_L1, DEFAULT_MIN_COS, CalibrationResult, calibrate, read_prompts

__all__ = ["calibrate", "CalibrationResult", "candidates", "normalize_arch", "read_prompts",
           "DEFAULT_MAX_L1", "DEFAULT_MIN_COS"]
