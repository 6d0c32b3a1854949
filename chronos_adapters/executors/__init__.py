"""Executors, one per job type, registered by ``type_name``."""

from __future__ import annotations

from chronos_core.ports import Executor

from .config import ExecutorConfig
from .shell import ShellExecutor

__all__ = ["ExecutorConfig", "ShellExecutor", "builtin_executors"]


def builtin_executors(config: ExecutorConfig | None = None) -> list[Executor]:
    """One executor per built-in job type, configured from ``config``."""
    config = config or ExecutorConfig()
    return [ShellExecutor(kill_grace=config.shell_kill_grace)]
