"""The group commit of job creates (``create_batch.py``): ``add_jobs`` calls that arrive together are written
in one transaction, and each call still succeeds or fails on its own, with the error it gets alone. The
calls of each test are made in one ``gather``, so they are all queued before the first batch is taken:
one batch, seen as the database's commits."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, select
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url

from chronos_adapters.sql import SqlStore
from chronos_adapters.sql.tables import job_summaries, jobs
from chronos_core.errors import NameConflict, RunConflict, StoreUnavailable
from chronos_core.models import Job
from tests.contracts.test_store_contract import make_job
from tests.fixtures.tcpproxy import TcpForwarder
from tests.sql.test_group_commit import store  # noqa: F401 - the fixture (SQLite and MariaDB)


def count_commits(s: SqlStore) -> list[int]:
    """One entry per transaction committed on the store's engine from now on."""
    commits: list[int] = []

    def on_commit(conn: Connection) -> None:
        commits.append(1)
    sa_event.listen(s.engine, "commit", on_commit)
    return commits


async def add_all(s: SqlStore, calls: Sequence[Sequence[Job]]) -> list[Any]:
    """The ``add_jobs`` calls at once: per call None or the exception it raised."""
    return await asyncio.gather(*(s.add_jobs(c) for c in calls), return_exceptions=True)


def stored(s: SqlStore) -> dict[str, str]:
    """name -> id of the stored jobs; every one has its summary row."""
    with s.engine.connect() as conn:
        names = {name: id_ for name, id_ in conn.execute(select(jobs.c.name, jobs.c.id))}
        assert conn.scalar(select(func.count()).select_from(job_summaries)) == len(names)
    return names


async def test_concurrent_creates_are_one_transaction_and_all_stored(store: SqlStore) -> None:  # noqa: F811
    commits = count_commits(store)
    made = [make_job(f"job-{i}") for i in range(20)]
    assert await add_all(store, [[j] for j in made]) == [None] * 20
    assert len(commits) == 1  # one group commit (without it: 20)
    assert stored(store) == {j.name: j.id for j in made}
    assert [await store.get_job(j.id) for j in made] == made


async def test_a_taken_name_fails_that_call_alone(store: SqlStore) -> None:  # noqa: F811
    old = make_job("taken")
    await store.add_jobs([old])
    commits = count_commits(store)
    calls = [[make_job(f"a-{i}")] for i in range(5)]
    calls.insert(2, [make_job("taken")])
    results = await add_all(store, calls)
    assert len(commits) == 1  # the name was seen taken before the insert: nothing to roll back
    assert isinstance(results[2], NameConflict) and results[2].name == "taken"
    assert results[:2] + results[3:] == [None] * 5
    alone = await add_all(store, [[make_job("taken")]])
    assert type(alone[0]) is type(results[2]) and str(alone[0]) == str(results[2])
    assert stored(store) == {"taken": old.id, **{c[0].name: c[0].id for c in calls if c[0].name != "taken"}}


async def test_the_same_name_twice_in_one_batch_the_first_wins(store: SqlStore) -> None:  # noqa: F811
    first, second = make_job("twin"), make_job("twin")
    other = make_job("other")
    results = await add_all(store, [[first], [other], [second]])
    assert results[:2] == [None, None]
    assert isinstance(results[2], NameConflict) and results[2].name == "twin"
    assert stored(store) == {"twin": first.id, "other": other.id}


async def test_a_call_of_several_jobs_stays_all_or_none_in_a_batch(store: SqlStore) -> None:  # noqa: F811
    await store.add_jobs([make_job("b")])
    whole = [make_job("a1"), make_job("a2")]
    half = [make_job("c1"), make_job("b"), make_job("c2")]  # b is taken: none of c1, c2 either
    late = [make_job("a2"), make_job("d")]  # a2 goes to the first call of the batch
    results = await add_all(store, [whole, half, late])
    assert results[0] is None
    assert isinstance(results[1], NameConflict) and results[1].name == "b"
    assert isinstance(results[2], NameConflict) and results[2].name == "a2"
    assert set(stored(store)) == {"a1", "a2", "b"}


async def test_a_constraint_failing_in_the_insert_fails_only_its_call(store: SqlStore) -> None:  # noqa: F811
    """A job whose id is taken passes the name check and fails the insert: the batch is rolled back and
    each call runs alone, so the others are created and that one gets what it gets alone."""
    old = make_job("old")
    await store.add_jobs([old])
    clash = dataclasses.replace(make_job("new-name"), id=old.id)
    calls = [[make_job("x")], [clash], [make_job("y")], [make_job("z")]]
    results = await add_all(store, calls)
    assert results[0] is None and results[2:] == [None, None]
    assert isinstance(results[1], RunConflict)
    alone = await add_all(store, [[clash]])
    assert type(alone[0]) is type(results[1]) and str(alone[0]) == str(results[1])
    assert stored(store) == {"old": old.id, "x": calls[0][0].id, "y": calls[2][0].id, "z": calls[3][0].id}


async def test_a_failing_database_fails_every_call_and_writes_nothing(tmp_path: Path) -> None:
    """SQLite: the jobs table is renamed away under the store (another connection), so the batch's
    statements fail as the database's, not a row's: every call gets StoreUnavailable, none is retried
    alone, and once the table is back nothing of the batch is in it."""
    path = tmp_path / "chronos.db"
    async with SqlStore(f"sqlite:///{path}") as s:
        await s.add_jobs([make_job("before")])
        commits = count_commits(s)
        other = sqlite3.connect(path)
        try:
            other.execute("ALTER TABLE jobs RENAME TO jobs_away")
            other.commit()
            results = await add_all(s, [[make_job(f"n-{i}")] for i in range(6)])
            assert all(isinstance(r, StoreUnavailable) for r in results), results
            assert commits == []
            other.execute("ALTER TABLE jobs_away RENAME TO jobs")
            other.commit()
        finally:
            other.close()
        assert set(stored(s)) == {"before"}


@pytest.mark.mysql
async def test_an_unreachable_server_fails_every_call_and_writes_nothing(fresh_mysql_url: str) -> None:
    url = make_url(fresh_mysql_url)
    proxy = TcpForwarder((url.host or "127.0.0.1", url.port or 3306))
    proxy.start()
    via = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        async with SqlStore(via, pool_size=2, connect_args={"connect_timeout": 5}) as s:
            await s.add_jobs([make_job("before")])
            proxy.stop()  # the server goes away: the pooled connections are cut, new ones refused
            results = await add_all(s, [[make_job(f"n-{i}")] for i in range(6)])
            assert all(isinstance(r, StoreUnavailable) for r in results), results
        async with SqlStore(fresh_mysql_url, pool_size=1) as direct:
            assert set(stored(direct)) == {"before"}
    finally:
        proxy.stop()


async def test_a_create_cancelled_while_queued_is_not_written(tmp_path: Path) -> None:
    """A caller gone (a timeout, an interrupted SyncChronos, shutdown) while its create waits for the
    batch before it: not written - as on one call per transaction, where a call whose thread never
    started was not - so no job exists without its job.created and an idempotent retry is not a 409.
    (Found by the race review, racereview-apiwrite F1.)"""
    async with SqlStore(f"sqlite:///{tmp_path / 'c.db'}", pool_size=1) as s:
        writer = s._database._writer
        assert writer.acquire(blocking=False)  # the database busy with another write
        try:
            first = asyncio.ensure_future(s.add_jobs([make_job("first")]))
            for _ in range(3):
                await asyncio.sleep(0)
            assert s._creates.tasks and not s._creates._pending  # first's batch is in the database
            second = asyncio.ensure_future(s.add_jobs([make_job("second")]))
            await asyncio.sleep(0)
            assert len(s._creates._pending) == 1  # queued behind the batch in the database
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
        finally:
            writer.release()
        await first
        await s.add_jobs([make_job("after")])  # everything queued before it is done
        assert set(stored(s)) == {"first", "after"}


@pytest.mark.mysql
async def test_a_name_locked_by_another_writer_holds_up_only_its_own_call(fresh_mysql_url: str) -> None:
    """Another session holds an uncommitted insert of the name 'x' (another process's create, a slow
    transaction). The batch's insert waits on that lock and times out (1205): not the database failing -
    the batch is split, 'a' and 'b' are written at once, and only 'x' waits, retried, until the other
    session lets go (here: rolls back, so 'x' is created). (Race review F3.)"""
    import pymysql

    u = make_url(fresh_mysql_url)
    async with SqlStore(fresh_mysql_url, pool_size=4,
                        connect_args={"init_command": "SET SESSION innodb_lock_wait_timeout=1"}) as s:
        await s.add_jobs([make_job("seed")])
        other = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                                password=u.password or "", database=u.database, autocommit=False)
        try:
            with other.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                cur.execute("BEGIN")
                columns = ("type, payload, timezone, retry, overlap, misfire, misfire_grace, status, "
                           "created_at, updated_at")
                cur.execute(f"INSERT INTO jobs (id, name, {columns}) SELECT %s, 'x', {columns} FROM jobs "
                            "WHERE name = 'seed'", (make_job("x").id,))
            a, x, b = (asyncio.ensure_future(s.add_jobs([make_job(n)])) for n in ("a", "x", "b"))
            assert await asyncio.gather(a, b, return_exceptions=True) == [None, None]  # not held by x
            assert set(stored(s)) == {"seed", "a", "b"}
        finally:
            other.rollback()
            other.close()
        await x
        assert set(stored(s)) == {"seed", "a", "b", "x"}
