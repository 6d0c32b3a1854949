"""The late path: a slot that reaches a worker past its misfire grace. A service that falls behind takes
one such run after the other, so what each costs decides whether it catches up: the record of a late
slot goes into the store's group commit, and the ``fire_once`` check is answered from the starts the
worker made itself, or from one summary read for all the late runs asking at once. Each test runs the
real engines on a FakeClock over every real store (``tests/engine/test_races.py``'s rig); what must hold
whatever the cost: every late slot ends recorded exactly once (status, count, event), never started
twice, never handed back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from chronos_core import EventType, RunStatus, StoreUnavailable, Worker
from chronos_core.models import Job
from chronos_core.ports import Dispatch, Store
from tests.engine.test_races import T0, Rig, S, StepExecutor, build_rig, moving_clock


@pytest.fixture
def rig(store: Store) -> Rig:
    return build_rig(store, StepExecutor())


def count(rig: Rig, *names: str) -> dict[str, list[Any]]:
    """Record the arguments of every call of these store methods."""
    seen: dict[str, list[Any]] = {name: [] for name in names}

    def hook_for(name: str) -> Any:
        async def hook(real: Any, *args: Any, **kwargs: Any) -> Any:
            seen[name].append(args)
            return await real(*args, **kwargs)
        return hook
    for name in names:
        rig.store.hooks[name] = hook_for(name)
    return seen


async def queued_slots_of(rig: Rig, *at: int) -> dict[tuple[str, int], Dispatch]:
    """Tick the scheduler at T0 + each of ``at`` seconds; the dispatches it queued by (job id, second),
    in order."""
    out = {}
    for t in at:
        rig.clock.set(T0 + t * S)
        await rig.scheduler.tick()
        while (d := rig.take()) is not None:
            out[d.run.job_id, t] = d
    return out


async def queued_slots(rig: Rig, job: Job, *at: int) -> list[Dispatch]:
    """As :func:`queued_slots_of`, for one job: its dispatches, in order."""
    out = await queued_slots_of(rig, *at)
    assert all(job_id == job.id for job_id, _ in out)
    return list(out.values())


async def first_of(*waits: Awaitable[Any]) -> None:
    """Until the first of ``waits`` is done (the others are cancelled, tasks given are left running)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t, w in zip(tasks, waits, strict=True):
        if t is not w:
            t.cancel()


def hold_summary_reads(rig: Rig) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold every ``job_summaries`` read until the first event (the gate) is set; the second is set
    when a read is under way."""
    gate, reading = asyncio.Event(), asyncio.Event()

    async def held(real: Any, *args: Any, **kwargs: Any) -> Any:
        reading.set()
        await gate.wait()
        return await real(*args, **kwargs)
    rig.store.hooks["job_summaries"] = held
    return gate, reading


async def missed_counted(rig: Rig) -> int:
    windows = (await rig.store.stats([T0 - 3600 * S])).windows
    return windows[0].by_status.get(RunStatus.MISSED, 0)


async def jobs_queued(rig: Rig, n: int, misfire: str) -> tuple[list[Job], list[Dispatch]]:
    """``n`` jobs every 10 s with a misfire grace of 5 s; the scheduler's tick at T0 + 10 s queued one
    run of each: the jobs and those dispatches."""
    jobs = [await rig.create(name=f"{misfire}-{i}", schedule="*/10 * * * * *", misfire=misfire,
                             misfire_grace=5) for i in range(n)]
    dispatches = await queued_slots_of(rig, 10)
    assert len(dispatches) == n
    return jobs, list(dispatches.values())


def another_worker(rig: Rig) -> Worker:
    """A second worker on the rig's store, queue and bus (another process of a scale-out)."""
    return Worker(rig.store, rig.queue, rig.bus, rig.clock, {"step": rig.executor},  # type: ignore[arg-type]
                  job_types=rig.worker._types, lease=30)


async def test_a_late_fire_once_run_is_recorded_when_a_run_of_its_job_started_here_after_it_was_due(
        rig: Rig) -> None:
    """fire_once runs one late run for a backlog: the second late run of the job is recorded missed as
    soon as the first one *started* after its slot (before: only once that run had finished and its
    summary said so, so every late run taken while the first was running ran too), and without a store
    read: the worker knows the start it made."""
    job = await rig.create(schedule="*/10 * * * * *", misfire="fire_once", misfire_grace=5,
                           payload={"behaviour": "block"})
    d10, d20 = await queued_slots(rig, job, 10, 20)
    seen = count(rig, "job_summaries")
    rig.clock.set(T0 + 27 * S)  # slot 10 is 17 s late, slot 20 7 s late
    first = asyncio.create_task(rig.worker.process(d10))
    await rig.executor.wait_started(1)
    assert rig.executor.started == [d10.run.id]
    handler = asyncio.create_task(rig.worker.process(d20))  # while the first is still running
    await first_of(handler, rig.executor.wait_started(2))  # recorded, or (wrongly) started
    rig.executor.release.set()  # (had it started, it would block: let it end)
    second = await handler
    assert second is not None and second.status is RunStatus.MISSED, second
    assert "misfire policy fire_once: the run started at" in (second.error or "")
    assert len(seen["job_summaries"]) == 1  # for the first one only
    done = await first
    assert done is not None and done.status is RunStatus.SUCCEEDED
    assert rig.executor.started == [d10.run.id]
    assert {r.scheduled_for: r.status for r in await rig.history(job)} == {
        T0 + 10 * S: RunStatus.SUCCEEDED, T0 + 20 * S: RunStatus.MISSED}


async def test_late_fire_once_runs_of_many_jobs_taken_together_read_the_summaries_once(rig: Rig) -> None:
    jobs, dispatches = await jobs_queued(rig, 5, "fire_once")
    seen = count(rig, "job_summaries")
    rig.clock.set(T0 + 20 * S)  # every one of them 10 s late; no run of their jobs started since
    done = await asyncio.gather(*(rig.worker.process(d) for d in dispatches))
    assert [r.status for r in done if r is not None] == [RunStatus.SUCCEEDED] * 5
    assert len(seen["job_summaries"]) == 1
    assert sorted(seen["job_summaries"][0][0]) == sorted(j.id for j in jobs)


async def test_a_summary_read_that_fails_is_waited_out_for_every_late_run_that_shares_it(rig: Rig) -> None:
    _, dispatches = await jobs_queued(rig, 3, "fire_once")
    rig.clock.set(T0 + 20 * S)
    rig.store.fail("job_summaries", StoreUnavailable("connection refused"), times=3)
    nacks: list[str] = []

    async def nack(real: Any, dispatch: Any, reason: str) -> None:
        nacks.append(reason)
        await real(dispatch, reason)
    rig.queue.hooks["nack"] = nack
    done = await moving_clock(rig, asyncio.ensure_future(
        asyncio.gather(*(rig.worker.process(d) for d in dispatches))))
    assert [r.status for r in done if r is not None] == [RunStatus.SUCCEEDED] * 3
    assert nacks == [] and sorted(rig.executor.started) == sorted(d.run.id for d in dispatches)


async def test_late_records_applied_just_before_the_connection_broke_are_recorded_and_counted_once(
        rig: Rig) -> None:
    """Several late runs recorded together (one group commit on SQL): the store applied them, then the
    answer was lost. Each handler tries again, finds its own record, and stops: one record, one count,
    one event per slot, nothing handed back."""
    _, dispatches = await jobs_queued(rig, 4, "skip")
    rig.clock.set(T0 + 30 * S)
    rig.store.fail("cancel_queued_run", StoreUnavailable("connection lost"), times=4, after=True)
    done = await moving_clock(rig, asyncio.ensure_future(
        asyncio.gather(*(rig.worker.process(d) for d in dispatches))))
    assert [r.status for r in done if r is not None] == [RunStatus.MISSED] * 4
    assert rig.executor.started == []
    assert sorted(e.run_id for e in rig.published(EventType.RUN_MISSED)) == sorted(
        d.run.id for d in dispatches)
    assert await missed_counted(rig) == 4
    for d in dispatches:
        assert (await rig.store.get_run(d.run.id)).status is RunStatus.MISSED


async def test_a_worker_that_dies_while_its_late_records_wait_leaves_them_to_the_next_one(rig: Rig) -> None:
    """The worker is gone before its late records reached the store (the process died, its tasks were
    cancelled): the runs stay queued; handed out again, the next worker records each once."""
    _, dispatches = await jobs_queued(rig, 3, "skip")
    rig.clock.set(T0 + 30 * S)
    never = asyncio.Event()

    async def hang(real: Any, *args: Any, **kwargs: Any) -> Any:
        await never.wait()  # the write never reaches the store
    rig.store.hooks["cancel_queued_run"] = hang
    handlers = [asyncio.create_task(rig.worker.process(d)) for d in dispatches]
    for _ in range(20):
        await asyncio.sleep(0)
    for h in handlers:
        h.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    del rig.store.hooks["cancel_queued_run"]
    for d in dispatches:
        assert (await rig.store.get_run(d.run.id)).status is RunStatus.QUEUED
    assert await missed_counted(rig) == 0
    other = another_worker(rig)
    for d in [*dispatches, *dispatches]:  # (each delivered twice, as a durable queue may)
        await other.process(d)
    assert rig.executor.started == []
    assert await missed_counted(rig) == 3
    assert sorted(e.run_id for e in rig.published(EventType.RUN_MISSED)) == sorted(
        d.run.id for d in dispatches)


async def test_a_worker_stopped_during_a_summary_read_serves_the_requests_left_waiting_when_it_runs_again(
        rig: Rig) -> None:
    """stop() cancels the summary reader in the middle of a read; a late run that asked meanwhile (for the
    next read) is cancelled with its handler, but its request stays. A worker started again must still
    read it when the next late run of that job asks (before: the request was there, so no reader was
    started for it, and the run waited for a read that never came, holding its run id)."""
    a = await rig.create(name="late-a", schedule="*/10 * * * * *", misfire="fire_once", misfire_grace=5)
    b = await rig.create(name="late-b", schedule="*/10 * * * * *", misfire="fire_once", misfire_grace=5)
    slots = await queued_slots_of(rig, 10, 20)
    rig.clock.set(T0 + 30 * S)  # every one of them late; no run of either job started yet
    gate, reading = hold_summary_reads(rig)
    first = asyncio.create_task(rig.worker.process(slots[(a.id, 10)]))
    await reading.wait()  # the first read is under way: b's check waits for the next one
    second = asyncio.create_task(rig.worker.process(slots[(b.id, 10)]))
    for _ in range(20):  # (no I/O before its check: a few turns of the loop take it there)
        await asyncio.sleep(0)
    for handler in (first, second):  # what stop() does to the handlers it still has after its grace
        handler.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    await rig.worker.stop(grace=0)  # and the reader
    del rig.store.hooks["job_summaries"]
    gate.set()
    await rig.worker.start()
    try:
        done = await asyncio.wait_for(rig.worker.process(slots[(b.id, 20)]), 30)  # (a hang guard only)
    finally:
        await rig.worker.stop(grace=0)
    assert done is not None and done.status is RunStatus.SUCCEEDED
    assert rig.executor.started == [slots[(b.id, 20)].run.id]


async def test_a_worker_that_knows_only_an_older_start_of_its_own_still_reads_what_other_workers_ran(
        rig: Rig) -> None:
    """Scale-out: each worker knows only the starts it made. A start of its own from before the late run
    was due says nothing; the job's summary (what any worker ran to an end) still decides: a run another
    worker started after the slot stands for it."""
    job = await rig.create(schedule="*/5 * * * * *", misfire="fire_once", misfire_grace=3)
    other = another_worker(rig)
    [d10] = await queued_slots(rig, job, 10)
    rig.clock.set(T0 + 12 * S)
    assert (await rig.worker.process(d10)).status is RunStatus.SUCCEEDED  # on time, here: started at 12
    d15, d20 = await queued_slots(rig, job, 15, 20)
    rig.clock.set(T0 + 21 * S)
    assert (await other.process(d15)).status is RunStatus.SUCCEEDED  # late, but nothing stood for it
    rig.clock.set(T0 + 24 * S)
    seen = count(rig, "job_summaries")
    late = await rig.worker.process(d20)  # 4 s late; this worker's own start (12) is older than its slot
    assert late is not None and late.status is RunStatus.MISSED, late
    assert f"the run started at {(T0 + 21 * S).isoformat()} stands for it" in (late.error or "")
    assert len(seen["job_summaries"]) == 1
    assert rig.executor.started == [d10.run.id, d15.run.id]
