"""The composition root: ``Chronos`` for embedding, plus the service's ``Settings``, DI ``Container`` and
REST app factory ``create_app`` (imported on first use so that embedding does not load Starlette)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .runtime import Chronos

if TYPE_CHECKING:
    from .api import create_app
    from .container import Container
    from .settings import Settings

__all__ = ["Chronos", "Container", "Settings", "create_app"]

_LAZY = {"Container": ".container", "Settings": ".settings", "create_app": ".api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
