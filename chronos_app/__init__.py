"""The composition root: ``Chronos`` for embedding (``SyncChronos`` for synchronous code), plus the
service's ``Settings``, DI ``Container`` and REST app factory ``create_app``, each imported on first use
(embedding does not load Starlette; the client commands of ``chronos`` load neither the engines nor the
API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import create_app
    from .container import Container
    from .runtime import Chronos
    from .settings import Settings
    from .sync import SyncChronos

__all__ = ["Chronos", "Container", "Settings", "SyncChronos", "create_app"]

_LAZY = {"Chronos": ".runtime", "Container": ".container", "Settings": ".settings", "SyncChronos": ".sync",
         "create_app": ".api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
