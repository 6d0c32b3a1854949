"""Shared fixtures. Backends (MariaDB, Kafka, SMTP, HTTP) have their own fixture modules under
tests/fixtures; a backend that is missing skips its tests locally and fails them under CI=true."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every module in tests/fixtures is a plugin (backend servers: MariaDB, Kafka, SMTP, HTTP, ...).
pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if p.stem != "__init__"
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def backend_missing(what: str) -> None:
    """Skip (locally) or fail (under CI=true) a test whose backend is not available."""
    if IN_CI:
        pytest.fail(f"{what} is not available, and under CI=true no backend test may skip")
    pytest.skip(f"{what} is not available")
