"""The SQL store's claim keeps the definitions of the jobs it claimed (a cache keyed by the stored row's
version): a job changed in the database, through another store instance (another process), is claimed
with its new definition, even when the change kept its ``updated_at``."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chronos_adapters.sql import SqlStore, migrate
from chronos_core.errors import StoreUnavailable
from chronos_core.models import Job, MisfirePolicy
from chronos_core.planning import plan_due_job
from chronos_core.retry import RetryPolicy
from tests.contracts.test_store_contract import T0, S, make_job


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chronos.db'}"
    return str(request.getfixturevalue("fresh_mysql_url"))


@pytest.fixture
async def stores(url: str) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    migrate(url)
    a, b = SqlStore(url, pool_size=2, create_schema=False), SqlStore(url, pool_size=2, create_schema=False)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def claimed_job(store: SqlStore, slot: int) -> Job:
    claim = await store.claim_due(T0 + slot * S + S / 10, 10, plan_due_job)
    assert claim.jobs == 1 and len(claim.dispatch) == 1
    assert claim.dispatch[0].run.scheduled_for == T0 + slot * S
    return claim.dispatch[0].job


@pytest.mark.parametrize("new_version", [True, False], ids=["updated_at-changed", "updated_at-kept"])
async def test_a_job_changed_through_another_store_is_claimed_with_its_new_definition(
        stores: tuple[SqlStore, SqlStore], new_version: bool) -> None:
    a, b = stores
    job = make_job("cached")
    await a.add_jobs([job])
    first = await claimed_job(a, 0)
    assert first.payload == job.payload and first.next_run_at == T0
    assert await claimed_job(a, 1) == dataclasses.replace(job, next_run_at=T0 + S)  # from the cache
    changed = dataclasses.replace(
        job, name="renamed", type="http", payload={"url": "http://example.invalid"}, timeout=2.5,
        retry=RetryPolicy(max_attempts=3), misfire=MisfirePolicy.SKIP, misfire_grace=9.0,
        description="new", history_limit=7, next_run_at=T0 + 2 * S,
        updated_at=job.updated_at + S if new_version else job.updated_at)
    await b.update_job(changed)
    assert await claimed_job(a, 2) == changed
    # and back: the old definition is not served from anywhere either
    await b.update_job(dataclasses.replace(job, next_run_at=T0 + 3 * S))
    assert await claimed_job(a, 3) == dataclasses.replace(job, next_run_at=T0 + 3 * S)


async def test_the_claimed_job_is_a_copy_with_the_stored_next_run_at(
        stores: tuple[SqlStore, SqlStore]) -> None:
    a, _ = stores
    job = make_job("copy")
    await a.add_jobs([job])
    first = await claimed_job(a, 0)
    first.name = "changed by whoever got it"
    second = await claimed_job(a, 1)
    assert second.name == "copy" and second.next_run_at == T0 + S
    assert (await a.get_job(job.id)).next_run_at == T0 + 2 * S


async def test_the_cache_stays_within_its_bound(stores: tuple[SqlStore, SqlStore]) -> None:
    a, _ = stores
    a.job_cache_size = 5
    made = [make_job(f"j{i:02d}") for i in range(12)]
    await a.add_jobs(made)
    for slot in range(3):
        claim = await a.claim_due(T0 + slot * S + S / 10, 4, plan_due_job)
        assert claim.jobs == 4
        while (more := await a.claim_due(T0 + slot * S + S / 10, 4, plan_due_job)).jobs:
            claim.dispatch.extend(more.dispatch)
        assert sorted(d.job.name for d in claim.dispatch) == sorted(j.name for j in made)
        assert all(d.job == dataclasses.replace(j, next_run_at=T0 + slot * S)
                   for d in claim.dispatch for j in made if j.id == d.job.id)
        assert len(a._job_cache) <= 5


async def test_a_driver_error_in_the_due_select_is_store_unavailable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gone.db'}"
    async with SqlStore(url) as store:
        await store.add_jobs([make_job("a")])
        with sqlite3.connect(tmp_path / "gone.db") as db:
            db.execute("ALTER TABLE jobs RENAME TO jobs_elsewhere")
        with pytest.raises(StoreUnavailable):
            await store.claim_due(T0 + S, 10, plan_due_job)
        assert store.engine.pool.checkedout() == 0
