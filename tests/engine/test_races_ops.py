"""Issue #12's races between the operations (PUT, PATCH, pause, delete), the scheduler's claim and the
workers, each reproduced deterministically: the real engines on a FakeClock over every real store
(memory, SQLite, MariaDB), the other side of the race run at the exact moment through a proxy around the
real store (``tests/engine/proxies.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chronos_core import (
    EventType,
    ExecutionResult,
    Job,
    Run,
    RunStatus,
)
from chronos_core.ports import Store
from tests.engine.test_races import T0, Rig, S, StepExecutor, build_rig


async def until(predicate: Any, what: str, tries: int = 5000) -> None:
    """Let the loop (and a SQL store's threads) run until ``predicate()`` holds."""
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


class Gate(StepExecutor):
    """A ``block`` run waits for ``release``; ``cancelled`` lists the runs whose task was cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled: list[str] = []

    async def execute(self, job: Job, run: Run, log: Any) -> Any:
        try:
            if job.payload.get("behaviour") == "block-fail":
                self.started.append(run.id)
                await self.release.wait()
                return ExecutionResult(ok=False, exit_code=3, error="exit code 3")
            return await super().execute(job, run, log)
        except asyncio.CancelledError:
            self.cancelled.append(run.id)
            raise


@pytest.fixture
def rig(store: Store) -> Rig:
    """As test_races' rig, with a Gate executor."""
    return build_rig(store, Gate())


def gate(rig: Rig) -> Gate:
    assert isinstance(rig.executor, Gate)
    return rig.executor


# ------------------------------------------------------------ 8: delete cancels what it removed


async def test_a_run_started_while_its_job_is_deleted_is_asked_to_stop(rig: Rig) -> None:
    g = gate(rig)
    job = await rig.create(payload={"behaviour": "block"})
    await rig.worker.start()  # consumes the queue, follows cancel requests
    started: list[Run] = []

    async def race() -> None:  # between the operation's look and its delete, a run starts
        started.append(await rig.jobs.trigger(job.id))
        await until(lambda: started[0].id in g.started, "the run started")
    rig.store.once_before("delete_job", race)
    try:
        await rig.jobs.delete(job.id)
        [run] = started
        assert [e.run_id for e in rig.published(EventType.RUN_CANCEL_REQUESTED)] == [run.id]
        await until(lambda: run.id in g.cancelled, "the worker stopped the run")
        await until(lambda: rig.worker.active == 0, "the handler ended")
    finally:
        g.release.set()
        await rig.worker.stop(grace=0)


async def test_delete_job_returns_the_active_runs_it_removed(rig: Rig) -> None:
    job = await rig.create()
    queued = await rig.jobs.trigger(job.id)
    rig.clock.advance(1)
    running = await rig.jobs.trigger(job.id)
    assert await rig.store.start_run(running.id, "w1", rig.clock.now(), rig.clock.now() + 30 * S)
    rig.clock.advance(1)
    done = await rig.jobs.trigger(job.id)
    assert await rig.store.start_run(done.id, "w1", rig.clock.now(), rig.clock.now() + 30 * S)
    assert await rig.store.finish_run(done.id, "w1", status=RunStatus.SUCCEEDED, finished_at=rig.clock.now())
    removed = await rig.store.delete_job(job.id)
    assert [(r.id, r.status) for r in removed] == [(queued.id, RunStatus.QUEUED),
                                                   (running.id, RunStatus.RUNNING)]
    assert T0 <= removed[0].scheduled_for


def spec_of(job: Job, **changes: Any) -> dict[str, Any]:
    """The job's definition as a PUT sends it back."""
    return {**job.spec().model_dump(mode="json"), **changes}


# ------------------------------------------------- 2: a PUT racing a claim, a pause racing a PUT


async def test_a_put_racing_a_claim_does_not_wind_next_run_at_back(rig: Rig) -> None:
    job = await rig.create(schedule="*/10 * * * * *", overlap="replace")
    rig.clock.set(T0 + 10 * S)

    async def claim(_: Any) -> None:  # the scheduler fires the slot between the PUT's read and write
        await rig.scheduler.tick()
    rig.store.once_after("get_job", claim)
    put = await rig.jobs.update(job.id, spec_of(job, description="only the text changed"))
    assert put.next_run_at == T0 + 20 * S and put.description == "only the text changed"
    stored = await rig.store.get_job(job.id)
    assert (stored.next_run_at, stored.description) == (T0 + 20 * S, "only the text changed")
    await rig.scheduler.tick()  # the slot is not planned again, so nothing replaces its own run
    assert rig.scheduler.stats.duplicates == 0
    assert rig.published(EventType.RUN_CANCEL_REQUESTED) == []
    [run] = await rig.history(job)
    d = rig.take()
    assert d is not None and d.run.id == run.id
    done = await rig.worker.process(d)
    assert done is not None and done.status is RunStatus.SUCCEEDED


async def test_a_pause_does_not_lose_a_put_that_landed_after_its_read(rig: Rig) -> None:
    job = await rig.create(schedule="*/10 * * * * *", description="before")

    async def put(_: Any) -> None:
        await rig.jobs.update(job.id, spec_of(job, description="after"))
    rig.store.once_after("get_job", put)
    paused = await rig.jobs.pause(job.id)
    stored = await rig.store.get_job(job.id)
    assert (stored.status.value, stored.description, stored.next_run_at) == ("paused", "after", None)
    assert paused == stored
    assert stored.updated_at > job.updated_at


async def test_a_put_after_a_pause_it_did_not_see_decides_again_from_the_paused_job(rig: Rig) -> None:
    job = await rig.create(schedule="*/10 * * * * *")

    async def pause(_: Any) -> None:
        await rig.jobs.pause(job.id)
    rig.store.once_after("get_job", pause)
    # a PUT replaces the whole definition, status included: written against the job as it now is
    put = await rig.jobs.update(job.id, spec_of(job, description="d", status="paused"))
    assert (put.status.value, put.description, put.next_run_at) == ("paused", "d", None)
    assert [e.type for e in rig.events if e.type.value.startswith("job.")] == [
        EventType.JOB_CREATED, EventType.JOB_PAUSED, EventType.JOB_UPDATED]


# ----------------------------------------------------- 3: replace cancels a still-queued run


async def test_overlap_replace_cancels_a_run_still_queued_so_only_the_newest_executes(rig: Rig) -> None:
    job = await rig.create(schedule="*/10 * * * * *", overlap="replace")
    rig.clock.set(T0 + 10 * S)
    await rig.scheduler.tick()
    rig.clock.set(T0 + 20 * S)  # no worker took the first run meanwhile
    await rig.scheduler.tick()
    first, second = await rig.history(job)
    assert (first.status, second.status) == (RunStatus.CANCELLED, RunStatus.QUEUED)
    assert "replaced by the run for" in (first.error or "") and first.finished_at == T0 + 20 * S
    assert [e.run_id for e in rig.published(EventType.RUN_CANCELLED)] == [first.id]
    while (d := rig.take()) is not None:  # a worker starting later gets both dispatches
        await rig.worker.process(d)
    assert rig.executor.started == [second.id]
    assert (await rig.store.get_run(second.id)).status is RunStatus.SUCCEEDED


async def test_a_replaced_run_failing_on_a_worker_that_missed_the_stop_is_not_retried(rig: Rig) -> None:
    job = await rig.create(schedule="*/30 * * * * *", overlap="replace", payload={"behaviour": "block-fail"},
                           retry={"strategy": "immediate", "max_attempts": 3})
    rig.clock.set(T0 + 30 * S)
    await rig.scheduler.tick()
    d = rig.take()
    assert d is not None
    task = asyncio.create_task(rig.worker.process(d))  # (its worker follows no cancel requests)
    await until(lambda: d.run.id in gate(rig).started, "the first run started")
    rig.clock.set(T0 + 60 * S)
    await rig.scheduler.tick()  # replaces it: the stop request is published, nobody acts on it
    assert [e.run_id for e in rig.published(EventType.RUN_CANCEL_REQUESTED)] == [d.run.id]
    gate(rig).release.set()  # ... and it fails, retryably
    done = await asyncio.wait_for(task, 30)
    assert done is not None and done.status is RunStatus.FAILED
    assert "not retried: a newer slot replaced it" in (done.error or "")
    assert [(r.scheduled_for, r.attempt) for r in await rig.history(job)] == [
        (T0 + 30 * S, 1), (T0 + 60 * S, 1)]
    assert rig.published(EventType.RUN_RETRY_SCHEDULED) == []


# ------------------------------------------------------ 5: an update re-arms a parked job


async def test_an_update_with_the_same_timing_re_arms_a_parked_job(rig: Rig) -> None:
    job = await rig.create(schedule="*/10 * * * * *")

    def broken(_: Job) -> str | None:
        raise RuntimeError("time zone data missing")
    rig.scheduler.refuse = broken  # the planner cannot plan it: the job is parked
    rig.clock.set(T0 + 10 * S)
    await rig.scheduler.tick()
    assert (await rig.store.get_job(job.id)).next_run_at is None
    rig.scheduler.refuse = None  # fixed ("it fires again once it is updated")
    put = await rig.jobs.update(job.id, spec_of(job))
    assert put.next_run_at == T0 + 20 * S
    rig.clock.set(T0 + 20 * S)
    await rig.scheduler.tick()
    assert [(r.scheduled_for, r.status) for r in await rig.history(job)] == [
        (T0 + 10 * S, RunStatus.MISSED), (T0 + 20 * S, RunStatus.QUEUED)]


# ------------------------------------------------- 12: a pause records the slots it drops


async def test_a_pause_while_the_scheduler_is_behind_records_the_slots_it_drops(rig: Rig) -> None:
    job = await rig.create(schedule="* * * * * *")
    rig.clock.set(T0 + 8 * S + S / 2)  # the scheduler has not reached slots 1..8 yet
    await rig.jobs.pause(job.id)
    runs = await rig.history(job)
    assert [(r.scheduled_for, r.status) for r in runs] == [
        (T0 + i * S, RunStatus.SKIPPED) for i in range(1, 9)]
    assert all("paused before the scheduler fired this slot" in (r.error or "") for r in runs)
    assert len(rig.published(EventType.RUN_SKIPPED)) == 8
    await rig.jobs.resume(job.id)  # from the next slot after now
    rig.clock.set(T0 + 10 * S)
    await rig.scheduler.tick()
    assert [r.scheduled_for for r in (await rig.history(job))[8:]] == [T0 + 9 * S, T0 + 10 * S]


async def test_a_pause_racing_a_claim_records_only_what_the_claim_left(rig: Rig) -> None:
    job = await rig.create(schedule="* * * * * *", misfire_grace=2)
    rig.clock.set(T0 + 8 * S)

    async def claim(_: Any) -> None:
        await rig.scheduler.tick()
    rig.store.once_after("get_job", claim)
    await rig.jobs.pause(job.id)
    runs = await rig.history(job)
    slots = [r.scheduled_for for r in runs]
    assert sorted(slots) == [T0 + i * S for i in range(1, 9)]  # each slot once: fired or recorded
    assert all(r.status is not RunStatus.SKIPPED for r in runs)  # the claim had taken them all
    assert (await rig.store.get_job(job.id)).next_run_at is None


# ---------------------------------------- 11: due retries get their share; the grace at start


async def test_due_retries_get_a_fair_share_of_the_queue_while_slots_saturate_it(rig: Rig) -> None:
    from chronos_core import Trigger
    from chronos_core.ids import new_id

    rig.scheduler.max_queued = 4
    slots = [await rig.create(name=f"slot-{i}", schedule="*/10 * * * * *") for i in range(6)]
    failing = await rig.create(name="retried")
    retries = [Run(id=new_id(), job_id=failing.id, scheduled_for=T0 + i * S, trigger=Trigger.RETRY,
                   attempt=2, status=RunStatus.QUEUED, created_at=T0 + i * S, due_at=T0 + 5 * S)
               for i in range(3)]
    for r in retries:
        await rig.store.add_run(r, dispatched=False)
    rig.clock.set(T0 + 10 * S)
    handed: list[list[str]] = []
    for _ in range(4):  # each tick the workers drain the queue: 4 places a tick
        await rig.scheduler.tick()
        batch = []
        while (d := rig.take()) is not None:
            batch.append(d.run.job_id)
        handed.append(batch)
    # half the room goes to the due retries first, the rest to the slots; nothing is left out
    assert [b.count(failing.id) for b in handed] == [2, 1, 0, 0]
    assert [len(b) for b in handed] == [4, 4, 1, 0]
    assert sorted(j for b in handed for j in b if j != failing.id) == sorted(j.id for j in slots)


async def test_a_slot_that_waited_in_the_queue_past_its_grace_is_recorded_missed(rig: Rig) -> None:
    job = await rig.create(schedule="*/10 * * * * *", misfire="skip", misfire_grace=5)
    rig.clock.set(T0 + 10 * S)
    await rig.scheduler.tick()
    d = rig.take()
    assert d is not None and d.run.job_id == job.id
    rig.clock.set(T0 + 16 * S)  # the workers were busy (or down): it reaches one 6 s after its slot
    done = await rig.worker.process(d)
    assert done is not None and done.status is RunStatus.MISSED
    assert rig.executor.started == []
    stored = await rig.store.get_run(d.run.id)
    assert (stored.status, stored.finished_at) == (RunStatus.MISSED, T0 + 16 * S)
    assert "6s after its slot, past the misfire grace (5s; misfire policy skip)" in (stored.error or "")
    assert [e.run_id for e in rig.published(EventType.RUN_MISSED)] == [d.run.id]
    assert rig.queue.inner.get_nowait() is None  # handled: acked


async def test_the_grace_at_start_follows_the_misfire_policy(rig: Rig) -> None:
    once = await rig.create(name="once", schedule="*/10 * * * * *", misfire_grace=5)  # fire_once
    every = await rig.create(name="all", schedule="*/10 * * * * *", misfire="fire_all", misfire_grace=5)
    for t in (10, 20):
        rig.clock.set(T0 + t * S)
        await rig.scheduler.tick()
    rig.clock.set(T0 + 21 * S)
    manual = await rig.jobs.trigger(once.id)
    dispatches = []
    while (d := rig.take()) is not None:
        dispatches.append(d)
    rig.clock.set(T0 + 27 * S)  # slot 10 is 17 s late, slot 20 7 s late
    for d in dispatches:
        await rig.worker.process(d)
    got = {(r.job_id, r.scheduled_for): r.status for j in (once, every) for r in await rig.history(j)}
    assert got == {
        (once.id, T0 + 10 * S): RunStatus.SUCCEEDED,  # fire_once: one late run for the backlog...
        (once.id, T0 + 20 * S): RunStatus.MISSED,  # ... which stands for the later late ones
        (once.id, manual.scheduled_for): RunStatus.SUCCEEDED,  # a manual run is never late
        (every.id, T0 + 10 * S): RunStatus.SUCCEEDED,
        (every.id, T0 + 20 * S): RunStatus.SUCCEEDED,
    }
