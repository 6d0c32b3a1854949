"""Executors, one per job type, registered by ``type_name``."""

from .shell import ShellExecutor

__all__ = ["ShellExecutor"]
