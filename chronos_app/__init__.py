"""The composition root: ``Chronos`` for embedding, plus (in submodules) settings, the DI container,
the REST API and the ``chronos`` CLI."""

from .runtime import Chronos

__all__ = ["Chronos"]
