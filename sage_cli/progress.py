"""How long-running library functions report progress without knowing about the terminal.

A library takes `progress: ProgressFn | None` and calls it as ``progress(description, done, total)``; the
CLI maps each description to a rich progress bar. Libraries never print.
"""
from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Callable[[str, int, int], None]


def report(progress: Optional[ProgressFn], description: str, done: int, total: int) -> None:
    if progress is not None:
        progress(description, done, total)
