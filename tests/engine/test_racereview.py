"""Breaks found by reviewing issue #12's fixes (helper racereview): each a deterministic reproduction, the
real engines on a FakeClock over every real store, the other side of the race injected through a proxy
around the real adapter (``tests/engine/proxies.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus
from chronos_core import (
    EventType,
    FakeClock,
    Jobs,
    JobTypes,
    RunStatus,
    Scheduler,
    StoreUnavailable,
    Trigger,
    Worker,
)
from chronos_core.models import evolve
from chronos_core.ports import Store
from tests.engine.proxies import Proxy
from tests.engine.test_races import T0, Rig, S, StepExecutor, StepPayload, build_rig, moving_clock

ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)


@pytest.fixture
def rig(store: Store) -> Rig:
    """test_races' rig: every adapter behind a proxy, the published events recorded."""
    return build_rig(store, StepExecutor())


# ------------------------------------------------ item 3: overlap replace, the replaced run's retry


async def test_a_replaced_run_that_is_reaped_later_is_not_retried_beside_its_replacement(rig: Rig) -> None:
    job = await rig.create(schedule="*/30 * * * * *", overlap="replace",
                           retry={"strategy": "immediate", "max_attempts": 3})
    rig.clock.set(T0 + 30 * S)
    await rig.scheduler.tick()
    [old] = await rig.history(job)
    assert rig.take() is not None
    assert await rig.store.start_run(old.id, "worker-killed", rig.clock.now(), rig.clock.now() + 30 * S)
    rig.clock.set(T0 + 60 * S)  # the next slot replaces the running one (its worker is dead: no one stops it)
    await rig.scheduler.tick()
    new = next(r for r in await rig.history(job) if r.scheduled_for == T0 + 60 * S)
    rig.clock.set(T0 + 71 * S)  # the dead worker's lease ran out 11 s ago: reaped
    await rig.scheduler.tick()
    rig.clock.set(T0 + 72 * S)
    await rig.scheduler.tick()
    assert rig.scheduler.stats.reaped == 1
    active = [r for r in await rig.history(job) if r.status in ACTIVE]
    # the replaced slot must not come back as a retry running beside (or after) the slot that replaced it
    assert [r.id for r in active] == [new.id], [(r.scheduled_for, r.attempt, r.status) for r in active]



async def test_a_reaped_run_of_a_replace_job_is_retried_when_later_slots_were_only_recorded(rig: Rig) -> None:
    """Missed (or skipped) records of later slots did not run: they replace nothing, so the reaped
    attempt keeps its retry (a guard for F1's fix)."""
    job = await rig.create(schedule="*/30 * * * * *", overlap="replace", misfire="skip", misfire_grace=5,
                           retry={"strategy": "immediate", "max_attempts": 3})
    rig.clock.set(T0 + 30 * S)
    await rig.scheduler.tick()
    [old] = await rig.history(job)
    assert rig.take() is not None
    assert await rig.store.start_run(old.id, "worker-killed", rig.clock.now(), rig.clock.now() + 30 * S)
    rig.clock.set(T0 + 100 * S)  # the scheduler was away: the slots at 60 s and 90 s are recorded missed
    await rig.scheduler.tick()
    runs = await rig.history(job)
    assert [(r.scheduled_for, r.status) for r in runs if r.id != old.id and r.attempt == 1] == [
        (T0 + 60 * S, RunStatus.MISSED), (T0 + 90 * S, RunStatus.MISSED)]
    assert rig.scheduler.stats.reaped == 1
    assert [(r.attempt, r.status) for r in runs if r.scheduled_for == old.scheduled_for] == [
        (1, RunStatus.FAILED), (2, RunStatus.QUEUED)]

# -------------------------------------------- item 10: a backlog is not a loss (re-dispatch is bounded)


async def test_a_backlog_the_broker_still_holds_is_not_sent_again_and_again(store: Store) -> None:
    from tests.engine.test_redispatch import LossyBroker

    clock, broker, bus = FakeClock(T0), LossyBroker(), MemoryEventBus()
    broker.losing = False  # the broker keeps everything: the workers are merely behind
    jobs = Jobs(store, broker, bus, clock, JobTypes())  # type: ignore[arg-type]
    scheduler = Scheduler(store, broker, bus, clock, redispatch_after=120)  # type: ignore[arg-type]
    job = await jobs.create({"name": "backlog", "type": "shell", "payload": {"command": "true"}})
    runs = []
    for _ in range(5):
        runs.append(await jobs.trigger(job.id))
        clock.advance(1)
    for _ in range(240):  # an hour of a saturated worker pool: nothing is taken from the queue
        clock.advance(15)
        await scheduler.tick()
    copies = broker.taken()
    per_run = {r.id: copies.count(r.id) for r in runs}
    # every copy is a delivery a worker must take, look up in the store and drop: a backlog that grows
    # by itself with every period, the more the further behind the workers are
    assert max(per_run.values()) <= 3, per_run


# ------------------------------------- item 11: the misfire grace at start must not starve a lagging job


async def test_a_job_whose_runs_all_reach_the_workers_late_still_runs(rig: Rig) -> None:
    """Workers a steady 10 s behind a per-second job (misfire fire_once, grace 5 s): each run reaches a
    worker after its grace, and a later slot is always due by then. fire_once means the latest of the
    missed slots still runs: the job must keep running, not be recorded missed slot after slot."""
    job = await rig.create(schedule="* * * * * *")
    assert (job.misfire.value, job.misfire_grace) == ("fire_once", 5.0)
    for t in range(1, 61):
        rig.clock.set(T0 + t * S)
        await rig.scheduler.tick()
        if t > 10:  # the workers take the oldest dispatch, 10 s after it was queued
            d = rig.take()
            assert d is not None and d.run.scheduled_for == T0 + (t - 10) * S
            await rig.worker.process(d)
    runs = await rig.history(job)
    assert [r.scheduled_for for r in runs] == [T0 + t * S for t in range(1, 61)]  # every slot has a run
    ran = [r for r in runs if r.status is RunStatus.SUCCEEDED]
    assert len(ran) >= 5, [(r.scheduled_for.second, r.status.value) for r in runs]



# ------------------------------- item 11: the late-start check waits out a store outage like start_run


@pytest.mark.parametrize("misfire", ["skip", "fire_once"])
async def test_a_late_run_reaching_a_worker_during_a_store_outage_is_not_handed_back(
        rig: Rig, misfire: str) -> None:
    """start_run waits out an outage (store_retry_for); the misfire check in front of it must too. Handed
    back at once, an in-process queue gives it straight back to the worker (a hot loop of nacks and error
    lines for as long as the outage lasts) and Kafka dead-letters it after max_tries (milliseconds)."""
    await rig.create(schedule="*/10 * * * * *", misfire=misfire, misfire_grace=5)
    rig.clock.set(T0 + 10 * S)
    await rig.scheduler.tick()
    d = rig.take()
    assert d is not None
    rig.clock.set(T0 + 30 * S)  # it reaches a worker 20 s after its slot: late
    outage = {"down": True}

    async def down(real: Any, *args: Any, **kwargs: Any) -> Any:
        if outage["down"]:
            raise StoreUnavailable("connection refused")
        return await real(*args, **kwargs)
    for name in ("job_summaries", "cancel_queued_run", "start_run", "get_run"):
        rig.store.hooks[name] = down
    nacks: list[str] = []

    async def nack(real: Any, dispatch: Any, reason: str) -> None:
        nacks.append(reason)
        if len(nacks) > 20:  # (a hot loop: stop it here)
            outage["down"] = False
        await real(dispatch, reason)
    rig.queue.hooks["nack"] = nack
    task = asyncio.create_task(rig.worker.process(d))
    for _ in range(5):  # the outage lasts 5 s of the worker's retries
        for _ in range(5):
            await asyncio.sleep(0)
        rig.clock.advance(1)
        await asyncio.sleep(0.001)
    outage["down"] = False
    await moving_clock(rig, task)
    assert nacks == []
    assert (await rig.store.get_run(d.run.id)).status in (RunStatus.MISSED, RunStatus.SUCCEEDED)


async def test_a_late_record_applied_just_before_the_connection_broke_is_taken_for_its_own(rig: Rig) -> None:
    await rig.create(schedule="*/10 * * * * *", misfire="skip", misfire_grace=5)
    rig.clock.set(T0 + 10 * S)
    await rig.scheduler.tick()
    d = rig.take()
    assert d is not None
    rig.clock.set(T0 + 30 * S)
    rig.store.fail("cancel_queued_run", StoreUnavailable("connection lost"), after=True)
    nacks: list[str] = []

    async def nack(real: Any, dispatch: Any, reason: str) -> None:
        nacks.append(reason)
        await real(dispatch, reason)
    rig.queue.hooks["nack"] = nack
    done = await moving_clock(rig, asyncio.create_task(rig.worker.process(d)))
    assert done is not None and done.status is RunStatus.MISSED  # its own record, found after the error
    assert rig.executor.started == [] and nacks == []
    assert [e.run_id for e in rig.published(EventType.RUN_MISSED)] == [d.run.id]


# ------------------------------- item 12 through #16: an auto-pause also records the slots it drops


async def test_an_auto_pause_while_the_scheduler_is_behind_records_the_slots_it_drops(store: Store) -> None:
    from chronos_core.notifier import Notifier

    clock, queue, bus = FakeClock(T0), MemoryDispatchQueue(), MemoryEventBus()
    types = JobTypes()
    types.register("step", StepPayload)
    jobs = Jobs(store, queue, bus, clock, types)
    worker = Worker(store, queue, bus, clock, {"step": StepExecutor()}, job_types=types, lease=30)
    notifier = Notifier(store, queue, bus, clock, {}, lease=60)
    job = await jobs.create({"name": "auto", "type": "step", "payload": {"behaviour": "fail"},
                             "schedule": "* * * * * *", "pause_after_failures": 1})
    clock.set(T0 + S / 2)
    await jobs.trigger(job.id)
    d = queue.get_nowait()
    assert d is not None and (await worker.process(d)) is not None  # failed: the pause notice is written
    clock.set(T0 + 5 * S + S / 2)  # the scheduler is behind: slots 1..5 are due, not fired
    await notifier.tick()
    paused = await jobs.get(job.id)
    assert paused.status.value == "paused"
    slots = [(r.scheduled_for, r.status) for r in reversed(await store.list_runs(job.id))
             if r.trigger.value == "schedule"]
    assert slots == [(T0 + i * S, RunStatus.SKIPPED) for i in range(1, 6)]  # as Jobs.pause records them


# ----------------------------- item 11 x #16: a jittered slot is on time at its jittered start


@pytest.mark.parametrize("misfire", ["skip", "fire_once"])
async def test_a_jittered_run_handed_out_at_its_due_time_is_not_late(rig: Rig, misfire: str) -> None:
    from chronos_core.planning import jitter_offset

    for _ in range(10):  # a job whose first slot's offset is well past the grace (the offset hashes its id)
        job = await rig.create(name=f"jittered-{rig.clock.now().timestamp()}-{_}", schedule="0 0 * * * *",
                               jitter=3000, misfire=misfire, misfire_grace=5)
        assert job.next_run_at is not None
        offset = jitter_offset(job.id, job.next_run_at, 3000)
        if offset.total_seconds() > 60:
            break
        await rig.jobs.delete(job.id)
    slot = job.next_run_at
    rig.clock.set(slot)
    await rig.scheduler.tick()
    assert rig.take() is None  # not due yet: it starts at its offset
    rig.clock.set(slot + offset)
    await rig.scheduler.tick()
    d = rig.take()
    assert d is not None and d.run.scheduled_for == slot
    done = await rig.worker.process(d)  # it reaches a worker at once: on time for a jittered slot
    assert done is not None and done.status is RunStatus.SUCCEEDED, done.error


# --------------------- a store error at every store call of one run's handling (before or after it applied)


STORE_CALLS = ("start_run", "finish_run", "get_run", "job_summaries", "cancel_queued_run", "get_job",
               "replaced_by_later_slot", "list_runs")


@pytest.mark.parametrize("mode", ["on-time", "late-skip", "late-fire_once"])
@pytest.mark.parametrize("after", [False, True], ids=["before", "after-applied"])
async def test_a_store_error_at_any_call_of_a_run_neither_doubles_nor_loses_nor_hands_it_back(
        rig: Rig, after: bool, mode: str) -> None:
    """Each store call the worker makes for one run fails once in turn (the connection breaks before the
    write reached the store, or after it applied): the run executes at most once, ends recorded (its own
    outcome, or missed when late), one outcome event is published, and the dispatch is never handed back.
    Late: past the grace; skip records it missed, fire_once runs it after reading the job's summary (no
    run of the job started after its slot)."""
    late = mode == "late-skip"
    misfire = "fire_once" if mode == "late-fire_once" else "skip"
    nacks: list[str] = []

    async def nack(real: Any, dispatch: Any, reason: str) -> None:
        nacks.append(reason)
        await real(dispatch, reason)
    rig.queue.hooks["nack"] = nack
    calls: list[str] = []
    target = {"k": -1}

    def hook_for(name: str) -> Any:
        async def hook(real: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            if len(calls) - 1 == target["k"]:
                if after:
                    await real(*args, **kwargs)
                raise StoreUnavailable("connection lost")
            return await real(*args, **kwargs)
        return hook
    k = 0
    while True:
        job = await rig.create(name=f"sweep-{k}", schedule="*/10 * * * * *", misfire=misfire, misfire_grace=5)
        rig.clock.set((job.next_run_at or T0) - S / 2)
        rig.clock.advance(1)
        await rig.scheduler.tick()
        d = rig.take()
        assert d is not None and d.run.job_id == job.id
        if mode != "on-time":
            rig.clock.advance(20)  # it reaches a worker past its grace
        calls.clear()
        target["k"] = k
        for name in STORE_CALLS:
            rig.store.hooks[name] = hook_for(name)
        before_events = len(rig.events)
        done = await moving_clock(rig, asyncio.create_task(rig.worker.process(d)))
        for name in STORE_CALLS:
            del rig.store.hooks[name]
        stored = await rig.store.get_run(d.run.id)
        want = RunStatus.MISSED if late else RunStatus.SUCCEEDED
        assert rig.executor.started.count(d.run.id) == (0 if late else 1), (k, calls)
        assert stored.status is want, (k, calls, stored.status, stored.error)
        assert done is not None and done.status is want, (k, calls)
        outcome = EventType.RUN_MISSED if late else EventType.RUN_SUCCEEDED
        assert [e.run_id for e in rig.events[before_events:] if e.type is outcome] == [d.run.id], (k, calls)
        assert nacks == [], (k, calls)
        if k >= len(calls):  # every call of the run's handling has failed once
            break
        k += 1
        await rig.jobs.delete(job.id)  # (its later slots stay out of the next round's queue)
        while rig.take() is not None:
            pass
        rig.clock.advance(60)


# ------------------ item 1's class: a claim that applied although the scheduler got an error for it


@pytest.mark.parametrize("call", ["claim_due", "claim_due_runs"])
async def test_a_claim_whose_answer_was_lost_does_not_leave_its_runs_queued_in_nobodys_hands(
        rig: Rig, call: str) -> None:
    """The claim committed, then the connection broke before its answer (a lost commit acknowledgement):
    the scheduler saw StoreUnavailable and put nothing, yet the store marked the runs handed out. With the
    in-process queue (chronos serve) nothing looks at them again until the process restarts."""
    job = await rig.create(schedule="*/10 * * * * *", retry={"strategy": "immediate", "max_attempts": 2})
    if call == "claim_due_runs":  # a retry waiting to be handed out
        run = await rig.jobs.trigger(job.id)
        d = rig.take()
        assert d is not None
        assert await rig.store.start_run(run.id, "w", T0, T0 + 30 * S)
        assert await rig.store.finish_run(run.id, "w", status=RunStatus.FAILED, finished_at=T0,
                                          retry=evolve(run, id="retry-1", attempt=2, trigger=Trigger.RETRY))
    rig.clock.set(T0 + 10 * S)
    rig.store.fail(call, StoreUnavailable("connection lost"), after=True)
    with pytest.raises(StoreUnavailable):
        await rig.scheduler.tick()
    for t in range(11, 200):  # the store is fine again; the scheduler goes on ticking
        rig.clock.set(T0 + t * S)
        await rig.scheduler.tick()
    handed = []
    while (d := rig.take()) is not None:
        handed.append(d.run.id)
    stuck = [r for r in await rig.history(job) if r.status is RunStatus.QUEUED and r.id not in handed]
    assert stuck == [], [(r.id, r.scheduled_for, r.attempt) for r in stuck]


async def test_a_manual_run_whose_insert_answer_was_lost_is_still_handed_out(rig: Rig) -> None:
    """Run now: the insert committed, the answer was lost. The caller gets the error; the run, recorded as
    handed out but put nowhere, must not stay queued for ever (with overlap forbid it would also skip every
    later slot of its job as 'the previous run is still active')."""
    job = await rig.create(schedule="*/10 * * * * *", overlap="forbid")
    rig.store.fail("add_run", StoreUnavailable("connection lost"), after=True)
    with pytest.raises(StoreUnavailable):
        await rig.jobs.trigger(job.id)
    [run] = await rig.history(job)
    assert rig.take() is None  # nothing was put
    rig.clock.set(T0 + 1 * S)
    await rig.scheduler.tick()  # the scheduler's tick went fine: it has no reason to doubt anything
    d = rig.take()
    assert d is not None and d.run.id == run.id
    done = await rig.worker.process(d)
    assert done is not None and done.status is RunStatus.SUCCEEDED
    rig.clock.set(T0 + 10 * S)
    await rig.scheduler.tick()
    assert [r.status for r in await rig.history(job)][-1] is RunStatus.QUEUED  # the next slot fires


async def test_a_chained_run_whose_insert_answer_was_lost_is_still_handed_out(store: Store) -> None:
    """#16's chain (then): the notifier's insert of the child run committed, its answer was lost; the
    delivery is tried again, finds the child by its derived id and calls it done - the child must not stay
    queued, handed out to nobody, for ever."""
    from chronos_core.notifier import Notifier

    clock, queue, bus = FakeClock(T0), MemoryDispatchQueue(), MemoryEventBus()
    proxy = Proxy(store)
    types = JobTypes()
    types.register("step", StepPayload)
    jobs = Jobs(proxy, queue, bus, clock, types)  # type: ignore[arg-type]
    worker = Worker(proxy, queue, bus, clock, {"step": StepExecutor()}, job_types=types, lease=30)  # type: ignore[arg-type]
    scheduler = Scheduler(proxy, queue, bus, clock)  # type: ignore[arg-type]
    notifier = Notifier(proxy, queue, bus, clock, {}, lease=60)  # type: ignore[arg-type]
    child_job = await jobs.create({"name": "child", "type": "step"})
    parent = await jobs.create({"name": "parent", "type": "step", "then": [{"job": "child"}]})
    await jobs.trigger(parent.id)
    d = queue.get_nowait()
    assert d is not None and (await worker.process(d)) is not None
    proxy.fail("add_run", StoreUnavailable("connection lost"), after=True)
    await notifier.tick()  # the delivery failed (it will be tried again)
    clock.advance(120)
    await notifier.tick()  # tried again: the child exists
    [child] = await jobs.history(child_job.id)
    for _ in range(3):
        clock.advance(1)
        await scheduler.tick()
    handed = []
    while (d := queue.get_nowait()) is not None:
        handed.append(d.run.id)
        await worker.process(d)
    assert child.id in handed
    assert (await store.get_run(child.id)).status is RunStatus.SUCCEEDED


TICK_CALLS = ("claim_due", "claim_due_runs", "release_undispatched", "expired_leases", "get_job",
              "finish_run", "replaced_by_later_slot", "list_runs", "next_due_time", "prune_runs")


@pytest.mark.parametrize("after", [False, True], ids=["before", "after-applied"])
async def test_a_store_error_at_any_call_of_a_tick_loses_no_slot_and_strands_no_run(rig: Rig,
                                                                                    after: bool) -> None:
    """Each store call of one scheduler tick (fire a slot, hand out a due retry, reap a dead worker's run)
    fails once in turn, before it reached the store or after it applied. Later ticks go fine, a worker
    takes what is handed out: every slot has its one first attempt, every run ends, none runs twice."""
    calls: list[str] = []
    target = {"k": -1}

    def hook_for(name: str) -> Any:
        async def hook(real: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            if len(calls) - 1 == target["k"]:
                if after:
                    await real(*args, **kwargs)
                raise StoreUnavailable("connection lost")
            return await real(*args, **kwargs)
        return hook
    k = 0
    while True:
        base = rig.clock.now().replace(microsecond=0) + 100 * S
        rig.clock.set(base)
        job = await rig.create(name=f"tick-{k}", schedule="* * * * * *",
                               retry={"strategy": "immediate", "max_attempts": 2})
        dead = await rig.jobs.trigger(job.id)  # taken by a worker that died: reaped in the tick
        assert rig.take() is not None
        assert await rig.store.start_run(dead.id, "worker-dead", base, base + 1 * S)
        rig.clock.set(base + 12 * S)  # slots 1..12 are due, the dead worker's lease ran out 11 s ago
        calls.clear()
        target["k"] = k
        for name in TICK_CALLS:
            rig.store.hooks[name] = hook_for(name)
        with contextlib.suppress(StoreUnavailable):
            await rig.scheduler.tick()
        for name in TICK_CALLS:
            del rig.store.hooks[name]
        failed_at = list(calls)
        for t in range(13, 40):  # the store is fine again
            rig.clock.set(base + t * S)
            await rig.scheduler.tick()
            while (d := rig.take()) is not None:
                await rig.worker.process(d)
        await rig.jobs.pause(job.id)
        runs = await rig.history(job)
        firsts = sorted(r.scheduled_for for r in runs if r.attempt == 1 and r.trigger.value != "manual")
        assert firsts == [base + t * S for t in range(1, 40)], (k, failed_at)  # each slot once
        assert [r for r in runs if r.status in ACTIVE] == [], (k, failed_at)  # nothing stranded
        assert len(rig.executor.started) == len(set(rig.executor.started)), (k, failed_at)  # none twice
        reaped = await rig.store.get_run(dead.id)
        assert reaped.status is RunStatus.FAILED, (k, failed_at)
        if k >= len(failed_at):
            break
        k += 1
        await rig.jobs.delete(job.id)


async def test_a_replaced_running_run_stops_at_the_heartbeat_if_its_stop_request_is_lost(rig: Rig) -> None:
    """Overlap replace asks a running run to stop with a bus event only; when that event is lost (a bus
    error: publishing is best-effort; or a claim whose answer was lost: its events are never published),
    the worker's heartbeat still finds out from the store that a newer slot replaced it."""
    job = await rig.create(schedule="*/30 * * * * *", overlap="replace", payload={"behaviour": "block"})
    rig.clock.set(T0 + 30 * S)
    await rig.scheduler.tick()
    d = rig.take()
    assert d is not None
    task = asyncio.create_task(rig.worker.process(d))
    for _ in range(50):
        await asyncio.sleep(0.001)
        if d.run.id in rig.executor.started:
            break
    assert d.run.id in rig.executor.started
    rig.bus_fails_on(EventType.RUN_CANCEL_REQUESTED)  # the stop request is lost
    rig.clock.set(T0 + 60 * S)
    await rig.scheduler.tick()
    assert await rig.worker.renew_leases()  # the heartbeat
    done = await asyncio.wait_for(task, 10)
    assert done is not None and done.status is RunStatus.CANCELLED, done
    assert "replaced by a newer slot" in (done.error or "")
    active = [r for r in await rig.history(job) if r.status in ACTIVE]
    assert [r.scheduled_for for r in active] == [T0 + 60 * S]
    rig.executor.release.set()
