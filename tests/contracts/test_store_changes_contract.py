"""The ``Store`` contract of conditional job changes (``change_job``) and of the claim's overlap
``replace`` (queued runs cancelled in the claim, nothing replaced by a duplicate), against every store."""

from __future__ import annotations

import dataclasses

import pytest

from chronos_core.errors import JobNotFound, NameConflict
from chronos_core.models import JobStatus, OverlapPolicy, RunStatus
from chronos_core.planning import plan_due_job
from chronos_core.ports import Store

from .test_store_contract import T0, S, make_job, make_run, running_run

US = S / 1_000_000


async def test_change_job_writes_only_the_changes_and_keeps_a_claims_advance(store: Store) -> None:
    job = make_job("a", next_run_at=T0)
    await store.add_jobs([job])
    read = await store.get_job(job.id)
    claim = await store.claim_due(T0, 10, plan_due_job)  # moves next_run_at, not the definition
    assert len(claim.dispatch) == 1
    done = await store.change_job(read, {"description": "new", "updated_at": T0})
    assert done is not None and done.recorded == []
    stored = await store.get_job(job.id)
    assert stored == done.job
    assert (stored.description, stored.updated_at, stored.next_run_at) == ("new", T0, T0 + S)
    assert dataclasses.replace(stored, description=None, updated_at=job.updated_at,
                               next_run_at=job.next_run_at) == job


async def test_change_job_is_a_compare_and_set_on_updated_at(store: Store) -> None:
    job = make_job("a")
    await store.add_jobs([job])
    assert await store.change_job(job, {"description": "first", "updated_at": T0}) is not None
    # a writer that read the job before the first change: nothing written
    assert await store.change_job(job, {"description": "stale", "updated_at": T0 + US}) is None
    assert (await store.get_job(job.id)).description == "first"


async def test_change_job_writing_next_run_at_is_also_fenced_on_it(store: Store) -> None:
    job = make_job("a", next_run_at=T0)
    await store.add_jobs([job])
    read = await store.get_job(job.id)
    await store.claim_due(T0, 10, plan_due_job)  # next_run_at T0 -> T0 + 1 s
    assert await store.change_job(read, {"status": JobStatus.PAUSED, "next_run_at": None,
                                         "updated_at": T0}) is None
    fresh = await store.get_job(job.id)
    done = await store.change_job(fresh, {"status": JobStatus.PAUSED, "next_run_at": None,
                                          "updated_at": T0})
    assert done is not None and (done.job.status, done.job.next_run_at) == (JobStatus.PAUSED, None)
    claim = await store.claim_due(T0 + 10 * S, 10, plan_due_job)
    assert (claim.jobs, claim.dispatch, claim.recorded) == (0, [], [])  # paused: nothing claimed
    parked = make_job("parked", next_run_at=None)
    await store.add_jobs([parked])
    done = await store.change_job(parked, {"next_run_at": T0 + 5 * S, "updated_at": T0})
    assert done is not None and done.job.next_run_at == T0 + 5 * S


async def test_change_job_inserts_its_records_leaving_out_taken_slots(store: Store) -> None:
    job = make_job("a", next_run_at=T0)
    await store.add_jobs([job])
    manual = make_run(job, T0 + S)
    await store.add_run(manual, dispatched=True)
    records = [make_run(job, T0 + i * S, status=RunStatus.SKIPPED) for i in range(3)]
    done = await store.change_job(job, {"status": JobStatus.PAUSED, "next_run_at": None,
                                        "updated_at": T0 + 3 * S}, records=records)
    assert done is not None
    assert [r.id for r in done.recorded] == [records[0].id, records[2].id]
    assert sorted((r.scheduled_for, r.status) for r in await store.list_runs(job.id)) == [
        (T0, RunStatus.SKIPPED), (T0 + S, RunStatus.QUEUED), (T0 + 2 * S, RunStatus.SKIPPED)]
    [window] = (await store.stats([T0 - 60 * S])).windows
    assert window.by_status == {RunStatus.SKIPPED: 2}


async def test_change_job_keeps_names_unique_and_says_a_job_is_gone(store: Store) -> None:
    a, b = make_job("a"), make_job("b")
    await store.add_jobs([a, b])
    with pytest.raises(NameConflict):
        await store.change_job(b, {"name": "a", "updated_at": T0})
    done = await store.change_job(b, {"name": "c", "updated_at": T0})
    assert done is not None and (await store.get_job_by_name("c")).id == b.id
    with pytest.raises(JobNotFound):
        await store.get_job_by_name("b")
    await store.add_jobs([make_job("b")])  # the old name is free again
    await store.delete_job(a.id)
    with pytest.raises(JobNotFound):
        await store.change_job(a, {"description": "x", "updated_at": T0})


async def test_claim_replace_cancels_queued_runs_and_asks_running_ones_to_stop(store: Store) -> None:
    job = make_job("replace", next_run_at=T0, overlap=OverlapPolicy.REPLACE)
    await store.add_jobs([job])
    busy = await running_run(store, job, T0 - 5 * S)
    waiting = make_run(job, T0 - 3 * S)
    await store.add_run(waiting, dispatched=True)
    claim = await store.claim_due(T0, 10, plan_due_job)
    [d] = claim.dispatch
    assert claim.cancel == [busy.id]
    [cancelled] = claim.cancelled
    assert (cancelled.id, cancelled.status, cancelled.finished_at) == (waiting.id, RunStatus.CANCELLED, T0)
    assert f"replaced by the run for {d.run.scheduled_for.isoformat()}" in (cancelled.error or "")
    assert await store.get_run(waiting.id) == cancelled
    assert not await store.start_run(waiting.id, "w1", T0, T0 + 30 * S)  # it never starts
    [window] = (await store.stats([T0 - 60 * S])).windows
    assert window.by_status == {RunStatus.CANCELLED: 1}


async def test_a_duplicate_replacing_run_replaces_nothing(store: Store) -> None:
    job = make_job("replace", next_run_at=T0, overlap=OverlapPolicy.REPLACE)
    await store.add_jobs([job])
    first = await store.claim_due(T0, 10, plan_due_job)
    [d] = first.dispatch
    await store.update_job(job)  # next_run_at wound back to the slot already fired
    again = await store.claim_due(T0, 10, plan_due_job)
    assert (again.duplicates, again.dispatch, again.cancel, again.cancelled) == (1, [], [], [])
    assert (await store.get_run(d.run.id)).status is RunStatus.QUEUED  # the slot's own run stays


async def test_add_jobs_refuses_an_id_that_exists_and_changes_nothing(store: Store) -> None:
    from chronos_core.errors import RunConflict

    job = make_job("a")
    await store.add_jobs([job])
    with pytest.raises(RunConflict):
        await store.add_jobs([dataclasses.replace(job, name="b", description="other")])
    assert await store.get_job(job.id) == job
    with pytest.raises(JobNotFound):
        await store.get_job_by_name("b")
