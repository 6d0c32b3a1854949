"""What is particular to the SQL store: migrations, the schema matching them, the output cap, driver
errors mapped to StoreUnavailable (without secrets), reconnecting after the server dropped connections,
and several store instances (processes) claiming from one database."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from chronos_adapters.sql import SqlStore, migrate
from chronos_adapters.sql.engine import run_blocking
from chronos_adapters.sql.migrate import VERSION_TABLE, current_revision, head_revision
from chronos_adapters.sql.tables import metadata
from chronos_core.errors import StoreUnavailable
from chronos_core.models import JobStatus, RunStatus
from chronos_core.planning import plan_due_job
from tests.contracts.test_store_contract import T0, S, make_job, make_run


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chronos.db'}"
    return str(request.getfixturevalue("fresh_mysql_url"))


def test_migrate_brings_an_empty_database_to_head_and_matches_the_tables(url: str) -> None:
    migrate(url)
    migrate(url)  # idempotent
    engine = create_engine(url)

    def check() -> None:
        try:
            with engine.connect() as conn:
                assert current_revision(conn) == head_revision() is not None
                assert {"jobs", "runs", VERSION_TABLE} <= set(inspect(conn).get_table_names())
                context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                                 "version_table": VERSION_TABLE})
                assert compare_metadata(context, metadata) == []  # `alembic check`: nothing to autogenerate
        finally:
            engine.dispose()
    run_blocking(engine, check)  # (an asyncio driver's engine: on a loop of its own)


async def test_start_creates_the_schema_in_an_empty_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with SqlStore(f"sqlite:///{path}") as store:
        await store.add_jobs([make_job("a")])
    async with SqlStore(f"sqlite:///{path}", create_schema=False) as store:
        assert (await store.get_job_by_name("a")).name == "a"


async def test_without_the_schema_operations_raise_store_unavailable(tmp_path: Path) -> None:
    async with SqlStore(f"sqlite:///{tmp_path / 'empty.db'}", create_schema=False) as store:
        with pytest.raises(StoreUnavailable):
            await store.list_jobs()
        assert store.engine.pool.checkedout() == 0


async def test_output_is_stored_as_a_capped_tail(url: str) -> None:
    async with SqlStore(url, output_limit=100) as store:
        job = make_job("chatty")
        await store.add_jobs([job])
        run = make_run(job, T0)
        await store.add_run(run, dispatched=True)
        assert await store.start_run(run.id, "w", T0, T0 + 30 * S)
        output = "".join(f"line ☃ {i}\n" for i in range(200))
        assert await store.finish_run(run.id, "w", status=RunStatus.SUCCEEDED, finished_at=T0 + S,
                                      output=output)
        assert (await store.get_run(run.id)).output == output[-100:]
        big = make_run(job, T0 + S, status=RunStatus.FAILED)
        await store.add_run(dataclasses.replace(big, output="x" * 1000), dispatched=True)
        assert (await store.get_run(big.id)).output == "x" * 100
        huge = make_run(job, T0 + 2 * S, status=RunStatus.FAILED)
        await store.add_run(dataclasses.replace(huge, error="é" * 20_000), dispatched=True)
        error = (await store.get_run(huge.id)).error or ""
        assert error.startswith("é" * 8000) and len(error) < 8100


async def test_an_unreachable_server_is_store_unavailable_without_the_password() -> None:
    store = SqlStore("mysql+pymysql://chronos:s3cr3t-pw@127.0.0.1:1/chronos", pool_timeout=2,
                     connect_args={"connect_timeout": 2})
    with pytest.raises(StoreUnavailable) as info:
        await store.start()
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in repr(store)
    with pytest.raises(StoreUnavailable):
        await store.get_job("x")  # stopped after the failed start: still the domain error


async def test_a_stopped_store_raises_store_unavailable(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'c.db'}")
    await store.start()
    job = make_job("a")
    await store.add_jobs([job])
    run = make_run(job, T0)
    await store.add_run(run, dispatched=True)
    await store.stop()
    await store.stop()  # idempotent
    with pytest.raises(StoreUnavailable):
        await store.start_run(run.id, "w", T0, T0 + S)  # through the group commit
    with pytest.raises(StoreUnavailable):
        await store.finish_run(run.id, "w", status=RunStatus.FAILED, finished_at=T0)
    with pytest.raises(StoreUnavailable):
        await store.get_job(job.id)


async def test_an_unopenable_sqlite_file_is_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        await SqlStore(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}").start()


@pytest.mark.mysql
async def test_reconnects_after_the_server_dropped_its_connections(fresh_mysql_url: str) -> None:
    from tests.fixtures.mysql import _admin, mysql_server_url

    async with SqlStore(fresh_mysql_url, pool_size=3) as store:
        job = make_job("survivor")
        await store.add_jobs([job])
        await asyncio.gather(*(store.get_job(job.id) for _ in range(6)))  # fill the pool
        database = store.engine.url.database
        admin = _admin(mysql_server_url())
        try:
            with admin.cursor() as cur:
                cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s", (database,))
                ids = [row[0] for row in cur.fetchall()]
                assert ids
                for conn_id in ids:
                    cur.execute(f"KILL {int(conn_id)}")
        finally:
            admin.close()
        for _ in range(5):  # every pooled connection is dead; pre-ping replaces each
            assert (await store.get_job(job.id)).name == "survivor"
        assert store.engine.pool.checkedout() == 0


async def test_two_store_instances_claim_disjoint_jobs(url: str) -> None:
    migrate(url)
    a, b = SqlStore(url, pool_size=4, create_schema=False), SqlStore(url, pool_size=4, create_schema=False)
    await a.start()
    await b.start()
    try:
        made = [make_job(f"j{i:03d}", next_run_at=T0 + (i % 10) * timedelta(milliseconds=7))
                for i in range(120)]
        await a.add_jobs(made)
        now = T0 + timedelta(milliseconds=500)
        claims = await asyncio.gather(*(s.claim_due(now, 9, plan_due_job) for s in (a, b) * 8))
        claimed = [d.job.id for c in claims for d in c.dispatch]
        assert len(claimed) == len(set(claimed))
        for store in (a, b):
            while (c := await store.claim_due(now, 50, plan_due_job)).jobs:
                claimed.extend(d.job.id for d in c.dispatch)
        assert sorted(claimed) == sorted(j.id for j in made)
        assert len(await a.list_runs(limit=1000)) == 120
    finally:
        await a.stop()
        await b.stop()


async def test_a_name_stored_with_blanks_before_the_rule_stays_usable(url: str) -> None:
    """A job whose name ends in a blank, written before stores refused such names: read, listed, updated
    under its name and deleted as any other. Adding the name without the blank is a NameConflict on
    MariaDB, whose PAD SPACE unique index holds them as one name (it was a RunConflict about ids, the
    exact name check missing it); SQLite keeps the two apart, as it always did."""
    from sqlalchemy import insert

    from chronos_adapters.sql.rows import JOBS
    from chronos_adapters.sql.tables import job_summaries, jobs
    from chronos_core.errors import NameConflict

    async with SqlStore(url) as store:
        old = make_job("legacy ")
        with store.engine.begin() as conn:
            conn.execute(insert(jobs), [JOBS.row(old)])
            conn.execute(insert(job_summaries), [{"job_id": old.id}])
        assert await store.get_job_by_name("legacy ") == old
        assert [j.name for j in await store.list_jobs(name="legacy")] == ["legacy "]
        paused = dataclasses.replace(old, status=JobStatus.PAUSED, updated_at=old.updated_at + S)
        await store.update_job(paused)  # its own name: not a rename, so not refused
        assert await store.get_job(old.id) == paused
        if store.engine.dialect.name == "sqlite":
            await store.add_jobs([make_job("legacy")])
            assert (await store.get_job_by_name("legacy")).name == "legacy"
        else:
            with pytest.raises(NameConflict) as info:
                await store.add_jobs([make_job("other"), make_job("legacy")])
            assert info.value.name == "legacy"
            assert [j.name for j in await store.list_jobs()] == ["legacy "]
        await store.delete_job(old.id)
        assert await store.list_jobs(name="legacy ") == []
