"""``store``: the real stores the engine race tests run on (memory, SQLite file, MariaDB), as in the
store contract suite but for ``sqlite-inline``: a store whose reads run inline is only ever the API's
sibling (ChronosFront on a SQLite file), never the store a scheduler or worker runs on, so running the
engine on it proves nothing the ``sqlite`` case does not (its writes and claims are the same code) and tests
a deployment that cannot exist. Its read paths are proven by the contract suite (tests/contracts, which
keeps it) and the API tests (tests/api/test_api_thread.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chronos_core.ports import Store
from tests.contracts.conftest import STORE_BACKENDS, open_store

ENGINE_BACKENDS = [b for b in STORE_BACKENDS if b != "sqlite-inline"]


@pytest.fixture(params=ENGINE_BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(request.param, request, tmp_path)
    try:
        yield s
    finally:
        await s.stop()
