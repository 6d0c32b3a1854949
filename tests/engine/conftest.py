"""``store``: the real stores the engine race tests run on (memory, SQLite file, MariaDB), as in the
store contract suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chronos_core.ports import Store
from tests.contracts.conftest import STORE_BACKENDS, open_store


@pytest.fixture(params=STORE_BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(request.param, request, tmp_path)
    try:
        yield s
    finally:
        await s.stop()
