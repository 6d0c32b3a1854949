"""Store backends for the contract suite: memory, SQLite (a new file per test; as ``sqlite-inline`` with
its reads run on the caller's thread, as the API's own store in ``chronos serve``) and MariaDB (one database
per session, emptied before each test), through PyMySQL and, as ``mysql-asyncmy``, through the asyncio
driver asyncmy (the same database; without asyncmy skipped locally, failed under CI=true)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete

from chronos_adapters.memory import MemoryStore
from chronos_core.ports import Store
from tests.conftest import backend_missing

STORE_BACKENDS = ["memory", "sqlite", "sqlite-inline", pytest.param("mysql", marks=pytest.mark.mysql),
                  pytest.param("mysql-asyncmy", marks=pytest.mark.mysql)]


def assert_no_connection_checked_out(store: Store) -> None:
    """SQL stores return every pooled connection after each call, errors included."""
    engine = getattr(store, "engine", None)
    if engine is not None:
        assert engine.pool.checkedout() == 0


async def open_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if backend == "memory":
        store: Store = MemoryStore()
    else:
        from chronos_adapters.sql import SqlStore
        from chronos_adapters.sql.tables import metadata

        if backend == "sqlite":
            store = SqlStore(f"sqlite:///{tmp_path / 'chronos.db'}")
        elif backend == "sqlite-inline":
            store = SqlStore(f"sqlite:///{tmp_path / 'chronos.db'}", inline_reads=True)
        elif backend == "mysql-asyncmy":
            from tests.fixtures.mysql import asyncmy_missing, with_driver

            if asyncmy_missing():
                backend_missing("asyncmy")
            store = SqlStore(with_driver(request.getfixturevalue("mysql_url"), "asyncmy"), pool_size=4)
        else:
            store = SqlStore(request.getfixturevalue("mysql_url"), pool_size=4)
        await store.start()
        if backend == "mysql-asyncmy":  # it does run on the asyncio driver (review-asyncmy F8)
            assert (store.engine.dialect.driver, store._database.asyncio) == ("asyncmy", True)
        if backend.startswith("mysql"):  # the session's database: start from empty

            def empty() -> None:
                with store.engine.begin() as conn:
                    for table in reversed(metadata.sorted_tables):  # children first
                        conn.execute(delete(table))
            store.run_blocking(empty)
        return store
    await store.start()
    return store


@pytest.fixture(params=STORE_BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(request.param, request, tmp_path)
    try:
        yield s
        assert_no_connection_checked_out(s)
    finally:
        await s.stop()
