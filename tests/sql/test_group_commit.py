"""The SQL store's group commit: start_run/cancel_queued_run/finish_run calls that arrive together are
applied in one transaction, and each call's result stays exact. On SQLite the batch is first tried as one
executemany whose WHERE holds the compare-and-set; when fewer rows changed than calls it is rolled back
and the calls run one by one. These batches mix calls that apply with calls that must not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from chronos_adapters.sql import SqlStore, group_commit
from chronos_core.errors import StoreUnavailable
from chronos_core.ids import new_id
from chronos_core.models import Run, RunStatus
from tests.contracts.test_store_contract import T0, S, make_job, make_run, running_run


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    url = (f"sqlite:///{tmp_path / 'chronos.db'}" if request.param == "sqlite"
           else str(request.getfixturevalue("fresh_mysql_url")))
    s = SqlStore(url, pool_size=2)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def count_batches(store: SqlStore) -> list[int]:
    sizes: list[int] = []
    apply: Callable[[list[Any]], list[Any]] = store._apply_writes

    def spy(ops: list[Any]) -> list[Any]:
        sizes.append(len(ops))
        return apply(ops)
    store._apply_writes = spy  # type: ignore[method-assign]
    return sizes


async def test_a_batch_of_starts_where_some_do_not_apply(store: SqlStore) -> None:
    job = make_job("starts")
    await store.add_jobs([job])
    queued = [make_run(job, T0 + i * S) for i in range(4)]
    for run in queued:
        await store.add_run(run, dispatched=True)
    running = await running_run(store, job, T0 + 10 * S, owner="old")
    cancelled = make_run(job, T0 + 11 * S)
    await store.add_run(cancelled, dispatched=True)
    assert await store.cancel_queued_run(cancelled.id, T0, "no")
    before = {r.id: await store.get_run(r.id) for r in (running, cancelled)}
    sizes = count_batches(store)
    calls = [(queued[0].id, "a"), (running.id, "a"), (queued[1].id, "b"), (queued[1].id, "c"),
             (new_id(), "a"), (cancelled.id, "a"), (queued[2].id, "d"), (queued[3].id, "e")]
    results = await asyncio.gather(*(store.start_run(run_id, owner, T0 + S, T0 + 9 * S)
                                     for run_id, owner in calls))
    assert sizes == [len(calls)]  # one group commit
    assert results == [True, False, True, False, False, False, True, True]
    for run, owner in zip(queued, "abde", strict=True):
        got = await store.get_run(run.id)
        assert (got.status, got.owner, got.started_at, got.lease_expires_at) == (
            RunStatus.RUNNING, owner, T0 + S, T0 + 9 * S)
    for run_id, old in before.items():
        assert await store.get_run(run_id) == old  # untouched


async def test_a_batch_of_finishes_where_some_do_not_apply(store: SqlStore) -> None:
    job = make_job("finishes")
    await store.add_jobs([job])
    mine = [await running_run(store, job, T0 + i * S, owner="w1") for i in range(3)]
    theirs = await running_run(store, job, T0 + 5 * S, owner="w2")
    queued = make_run(job, T0 + 6 * S)
    await store.add_run(queued, dispatched=True)
    untouched: list[Run] = [await store.get_run(r.id) for r in (theirs, queued)]
    sizes = count_batches(store)
    calls = [(mine[0].id, "w1"), (theirs.id, "w1"), (mine[1].id, "w1"), (mine[1].id, "w1"),
             (queued.id, None), (new_id(), "w1"), (mine[2].id, "w1")]
    results = await asyncio.gather(*(
        store.finish_run(run_id, owner, status=RunStatus.FAILED, finished_at=T0 + 20 * S, exit_code=k,
                         output=f"out {k}", error=f"error {k}")
        for k, (run_id, owner) in enumerate(calls)))
    assert sizes == [len(calls)]
    assert results == [True, False, True, False, False, False, True]
    for run, k in zip(mine, (0, 2, 6), strict=True):
        got = await store.get_run(run.id)
        assert (got.status, got.finished_at, got.exit_code, got.output, got.error, got.lease_expires_at) == (
            RunStatus.FAILED, T0 + 20 * S, k, f"out {k}", f"error {k}", None)
    assert [await store.get_run(r.id) for r in (theirs, queued)] == untouched


async def test_a_batch_that_all_applies_then_one_that_all_fails(store: SqlStore) -> None:
    job = make_job("all")
    await store.add_jobs([job])
    runs = [make_run(job, T0 + i * S) for i in range(20)]
    for run in runs:
        await store.add_run(run, dispatched=True)
    assert all(await asyncio.gather(*(store.start_run(r.id, "w", T0, T0 + S) for r in runs)))
    assert not any(await asyncio.gather(*(store.start_run(r.id, "x", T0, T0 + S) for r in runs)))
    assert all(await asyncio.gather(*(store.finish_run(r.id, "w", status=RunStatus.SUCCEEDED,
                                                       finished_at=T0 + S) for r in runs)))
    assert not any(await asyncio.gather(*(store.finish_run(r.id, "w", status=RunStatus.FAILED,
                                                           finished_at=T0 + S) for r in runs)))
    assert {(await store.get_run(r.id)).status for r in runs} == {RunStatus.SUCCEEDED}
    assert {(await store.get_run(r.id)).owner for r in runs} == {"w"}


async def test_cancels_of_queued_runs_join_the_group_commit_exact_and_counted_once(store: SqlStore) -> None:
    """A worker that falls behind records a late slot missed for each run it takes: those records go
    into the same group commit as the starts and finishes (one transaction for the batch, not one each),
    each call's compare-and-set exact, each applied record counted once in the outcome totals."""
    job = make_job("cancels")
    await store.add_jobs([job])
    queued = [make_run(job, T0 + i * S) for i in range(4)]
    for run in queued:
        await store.add_run(run, dispatched=True)
    running = await running_run(store, job, T0 + 10 * S, owner="w")
    sizes = count_batches(store)
    at = T0 + 20 * S
    missed, cancelled = RunStatus.MISSED, RunStatus.CANCELLED
    results = await asyncio.gather(
        store.cancel_queued_run(queued[0].id, at, "late 0", status=missed),
        store.cancel_queued_run(queued[0].id, at, "late 0 again", status=missed),  # a second one loses
        store.start_run(queued[1].id, "w", at, at + 30 * S),
        store.cancel_queued_run(queued[1].id, at, "late 1", status=missed),  # one of these two applies
        store.cancel_queued_run(queued[2].id, at, "stop", status=cancelled),
        store.cancel_queued_run(running.id, at, "not queued", status=missed),
        store.cancel_queued_run(new_id(), at, "no such run", status=missed),
        store.finish_run(running.id, "w", status=RunStatus.SUCCEEDED, finished_at=at),
        store.cancel_queued_run(queued[3].id, at, "x" * 9000, status=missed))
    assert sizes == [9]  # one group commit
    assert results[:2] == [True, False] and results[4:] == [True, False, False, True, True]
    assert results[2] != results[3]
    got = {r.id: await store.get_run(r.id) for r in (*queued, running)}
    assert (got[queued[0].id].status, got[queued[0].id].finished_at, got[queued[0].id].error) == (
        missed, at, "late 0")
    assert got[queued[1].id].status is (RunStatus.RUNNING if results[2] else missed)
    assert (got[queued[2].id].status, got[queued[2].id].error) == (cancelled, "stop")
    assert got[queued[3].id].status is missed and len(got[queued[3].id].error or "") < 9000  # cut as stored
    assert got[running.id].status is RunStatus.SUCCEEDED
    assert await store.claim_due_runs(T0 + 60 * S, 10) == []  # a record is not dispatched again
    counts = (await store.stats([T0 - 3600 * S])).windows[0].by_status
    assert counts == {missed: 2 + (not results[2]), cancelled: 1, RunStatus.SUCCEEDED: 1}


async def test_a_batch_whose_transaction_fails_fails_every_call_in_it_and_leaves_no_record_half_made(
        store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A late slot's record shares its transaction with the starts and finishes beside it: when that
    transaction fails after the record's UPDATE (here the outcome count after it: the connection went),
    all of it is rolled back and every call of the batch is told the store was unavailable, none a quiet
    False; the callers try again and each write applies, and is counted, once."""
    job = make_job("fails")
    await store.add_jobs([job])
    late, queued = make_run(job, T0), make_run(job, T0 + S)
    for run in (late, queued):
        await store.add_run(run, dispatched=True)
    running = await running_run(store, job, T0 + 2 * S, owner="w")
    real = group_commit.count_outcomes
    broken = [True]

    def count_outcomes(*args: Any) -> None:
        if broken.pop() if broken else False:
            raise sa_exc.OperationalError("INSERT INTO run_counts", {}, Exception("server has gone away"))
        real(*args)
    monkeypatch.setattr(group_commit, "count_outcomes", count_outcomes)
    sizes = count_batches(store)
    at = T0 + 20 * S

    def calls() -> list[Any]:
        return [store.cancel_queued_run(late.id, at, "late", status=RunStatus.MISSED),
                store.start_run(queued.id, "w", at, at + 30 * S),
                store.finish_run(running.id, "w", status=RunStatus.SUCCEEDED, finished_at=at)]
    failed = await asyncio.gather(*calls(), return_exceptions=True)
    assert sizes == [3]
    assert [type(r) for r in failed] == [StoreUnavailable] * 3
    assert [(await store.get_run(r.id)).status for r in (late, queued, running)] == [
        RunStatus.QUEUED, RunStatus.QUEUED, RunStatus.RUNNING]
    assert (await store.stats([T0 - 3600 * S])).windows[0].by_status == {}
    assert await asyncio.gather(*calls()) == [True, True, True]
    assert [(await store.get_run(r.id)).status for r in (late, queued, running)] == [
        RunStatus.MISSED, RunStatus.RUNNING, RunStatus.SUCCEEDED]
    assert (await store.stats([T0 - 3600 * S])).windows[0].by_status == {
        RunStatus.MISSED: 1, RunStatus.SUCCEEDED: 1}
