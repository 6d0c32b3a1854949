"""Race review of branch latepath: cancels of queued runs in the SQL group commit, against starts of the
same runs in concurrent batches (one store's parallel commits; two stores = two processes), and in a batch
that falls back to one call at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chronos_adapters.sql import SqlStore
from chronos_core.errors import RunConflict
from chronos_core.models import RunStatus
from tests.contracts.test_store_contract import T0, S, make_job, make_run, running_run
from tests.sql.test_group_commit import count_batches


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    yield (f"sqlite:///{tmp_path / 'chronos.db'}" if request.param == "sqlite"
           else str(request.getfixturevalue("fresh_mysql_url")))


async def test_rr_starts_and_cancels_crossed_between_two_stores_each_run_ends_once(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes (two stores on one database): process 1 starts runs a_i and records b_i missed,
    process 2 starts b_i and records a_i missed, all at once, in batches of both (MySQL: locks taken in
    opposite orders across the batches' phases -> deadlocks, retried). Each run ends one way, exactly one
    of its two calls says True, and each missed record is counted once."""
    from chronos_adapters.sql import engine as sql_engine
    real_sleep, retried = sql_engine.time.sleep, []

    def sleep(seconds: float) -> None:  # (Database.guarded's pause before running a deadlocked tx again)
        retried.append(seconds)
        real_sleep(seconds)
    monkeypatch.setattr(sql_engine.time, "sleep", sleep)
    one, two = SqlStore(url, pool_size=3), SqlStore(url, pool_size=3)
    await one.start()
    await two.start()
    try:
        job = make_job("crossed")
        await one.add_jobs([job])
        n = 60
        a = [make_run(job, T0 + i * S) for i in range(n)]
        b = [make_run(job, T0 + (1000 + i) * S) for i in range(n)]
        for r in (*a, *b):
            await one.add_run(r, dispatched=True)
        at = T0 + 5000 * S
        calls: list[Any] = []
        for i in range(n):
            calls += [one.start_run(a[i].id, "p1", at, at + 30 * S),
                      one.cancel_queued_run(b[i].id, at, "late", status=RunStatus.MISSED),
                      two.start_run(b[i].id, "p2", at, at + 30 * S),
                      two.cancel_queued_run(a[i].id, at, "late", status=RunStatus.MISSED)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        missed = 0
        for i in range(n):
            start_a, cancel_b, start_b, cancel_a = results[4 * i: 4 * i + 4]
            assert start_a != cancel_a and start_b != cancel_b, (i, results[4 * i: 4 * i + 4])
            got_a, got_b = await one.get_run(a[i].id), await one.get_run(b[i].id)
            assert got_a.status is (RunStatus.RUNNING if start_a else RunStatus.MISSED)
            assert got_b.status is (RunStatus.RUNNING if start_b else RunStatus.MISSED)
            missed += bool(cancel_a) + bool(cancel_b)
        counts = (await one.stats([T0 - 3600 * S])).windows[0].by_status
        assert counts.get(RunStatus.MISSED, 0) == missed
        print("deadlock retries:", len(retried), "missed:", missed)
    finally:
        await one.stop()
        await two.stop()


async def test_rr_a_cancel_in_a_batch_that_falls_back_call_by_call_applies_and_counts_once(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finish whose retry's slot is taken by a concurrent writer after the batch looked (here: the
    look is made to miss it) makes the batch's transaction fail (IntegrityError): the batch is rolled
    back and tried call by call. The late record beside it applies once, is counted
    once, and the start of the same run in that batch loses or wins exactly once."""
    store = SqlStore(url, pool_size=2)
    await store.start()
    try:
        job = make_job("fallback")
        await store.add_jobs([job])
        running = await running_run(store, job, T0, owner="w")
        taken = make_run(job, T0, attempt=2)  # the retry's slot, already there
        await store.add_run(taken, dispatched=True)
        late, other = make_run(job, T0 + S), make_run(job, T0 + 2 * S)
        for r in (late, other):
            await store.add_run(r, dispatched=True)
        monkeypatch.setattr(type(store._d), "existing_slots", lambda self, conn, planned: set())
        sizes = count_batches(store)
        at = T0 + 20 * S
        retry = make_run(job, T0, attempt=2, trigger=taken.trigger)
        results = await asyncio.gather(
            store.cancel_queued_run(late.id, at, "late", status=RunStatus.MISSED),
            store.start_run(other.id, "w", at, at + 30 * S),
            store.cancel_queued_run(other.id, at, "late", status=RunStatus.MISSED),
            store.finish_run(running.id, "w", status=RunStatus.FAILED, finished_at=at, retry=retry),
            return_exceptions=True)
        assert sizes[0] == 4 and sizes[1:] == [1, 1, 1, 1]  # the batch, then each call alone
        assert results[0] is True
        assert results[1] != results[2] and {results[1], results[2]} == {True, False}
        assert isinstance(results[3], RunConflict)
        assert (await store.get_run(late.id)).status is RunStatus.MISSED
        counts = (await store.stats([T0 - 3600 * S])).windows[0].by_status
        assert counts == {RunStatus.MISSED: 1 + (results[2] is True)}
    finally:
        await store.stop()
