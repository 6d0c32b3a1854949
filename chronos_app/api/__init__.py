"""The REST API (Starlette): ``create_app(container)``."""

from .app import create_app

__all__ = ["create_app"]
