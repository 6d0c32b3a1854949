"""Settings the built-in executors need, gathered in one value the composition root fills in."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ExecutorConfig"]


@dataclass(frozen=True, kw_only=True)
class ExecutorConfig:
    shell_kill_grace: float = 5.0
