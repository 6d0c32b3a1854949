"""The scheduler and worker engines on the in-memory adapters with a fake clock: deterministic, no sleeps.

The harness drives the engines by hand: ``tick()`` fires what is due at the fake now, ``drain()`` lets the
worker execute everything queued. Executors are small real implementations of the port.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus, MemoryStore
from chronos_core import (
    EventType,
    ExecutionFailed,
    ExecutionResult,
    Executor,
    FakeClock,
    Job,
    Jobs,
    JobTypes,
    Payload,
    Run,
    Runs,
    RunStatus,
    Scheduler,
    Trigger,
    Worker,
)
from chronos_core.ports import LogSink

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


class StepPayload(Payload):
    behaviour: str = "ok"  # ok | fail | fatal | huge-code | huge-code-ok | block | hang | lines


class StepExecutor(Executor):
    """Behaves as the payload says; ``release`` lets blocked runs finish."""

    type_name: ClassVar[str] = "step"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        self.started.append(run.id)
        mode = job.payload.get("behaviour", "ok")
        try:
            if mode == "lines":
                for i in range(3):
                    await log(f"line {i}")
                return ExecutionResult(ok=True, exit_code=0, output="summary")
            if mode == "fail":
                return ExecutionResult(ok=False, exit_code=3, error="exit code 3")
            if mode == "fatal":
                raise ExecutionFailed("bad request", retryable=False)
            if mode == "huge-code":  # a python job may raise this: no store's INT holds the code
                raise ExecutionFailed("boom", retryable=False, exit_code=2**40)
            if mode == "huge-code-ok":
                return ExecutionResult(ok=True, exit_code=-2**31 - 1)
            if mode == "block":
                await self.release.wait()
            if mode == "hang":
                await asyncio.Event().wait()
            return ExecutionResult(ok=True, exit_code=0)
        except asyncio.CancelledError:
            self.cancelled.append(run.id)
            raise


@dataclass
class Harness:
    clock: FakeClock
    store: MemoryStore
    queue: MemoryDispatchQueue
    bus: MemoryEventBus
    jobs: Jobs
    runs: Runs
    scheduler: Scheduler
    worker: Worker
    executor: StepExecutor
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def create(self, **spec: Any) -> Job:
        base: dict[str, Any] = {"name": f"job-{len(self.store._jobs)}", "type": "step",
                                "payload": {"behaviour": "ok"}}
        return await self.jobs.create({**base, **spec})

    async def tick(self) -> datetime | None:
        return await self.scheduler.tick()

    async def drain(self) -> list[Run | None]:
        """Execute every queued dispatch concurrently; wait for the ones that finish on their own."""
        out: list[Run | None] = []
        while (d := self.queue.get_nowait()) is not None:
            self.tasks.append(asyncio.create_task(self.worker.process(d)))
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            done, _ = await asyncio.wait(pending, timeout=0.5)
            out = [t.result() for t in done]
        await settle()
        return out

    async def at(self, t: datetime | float) -> None:
        """Move the clock to t (or by t seconds) and tick."""
        if isinstance(t, datetime):
            self.clock.set(t)
        else:
            self.clock.advance(t)
        await self.tick()

    async def history(self, job: Job) -> list[Run]:
        return list(reversed(await self.jobs.history(job.id, limit=100_000)))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
async def h() -> Any:
    clock = FakeClock(T0)
    store, queue, bus = MemoryStore(), MemoryDispatchQueue(), MemoryEventBus()
    types = JobTypes()
    types.register("step", StepPayload)
    executor = StepExecutor()
    harness = Harness(
        clock=clock, store=store, queue=queue, bus=bus,
        jobs=Jobs(store, queue, bus, clock, types), runs=Runs(store, bus, clock),
        scheduler=Scheduler(store, queue, bus, clock, batch_size=50),
        worker=Worker(store, queue, bus, clock, {"step": executor}, job_types=types, lease=30),
        executor=executor,
    )
    yield harness
    executor.release.set()
    for t in harness.tasks:
        t.cancel()
    await asyncio.gather(*harness.tasks, return_exceptions=True)


def statuses(runs: list[Run]) -> list[str]:
    return [r.status.value for r in runs]


# ------------------------------------------------------------------------------------------ firing


async def test_fires_each_slot_once_on_time(h: Harness) -> None:
    job = await h.create(schedule="*/10 * * * * *")
    assert job.next_run_at == T0 + timedelta(seconds=10)
    assert await h.tick() == T0 + timedelta(seconds=10)
    assert await h.history(job) == []
    for k in (1, 2, 3):
        await h.at(T0 + timedelta(seconds=10 * k))
        await h.drain()
    runs = await h.history(job)
    assert [r.scheduled_for for r in runs] == [T0 + timedelta(seconds=10 * k) for k in (1, 2, 3)]
    assert statuses(runs) == ["succeeded"] * 3
    assert all(r.trigger is Trigger.SCHEDULE and r.attempt == 1 for r in runs)
    assert (await h.jobs.get(job.id)).next_run_at == T0 + timedelta(seconds=40)


async def test_a_second_tick_at_the_same_time_fires_nothing(h: Harness) -> None:
    job = await h.create(schedule="* * * * * *")
    await h.at(1)
    await h.tick()
    await h.drain()
    assert len(await h.history(job)) == 1


async def test_many_due_jobs_are_claimed_in_batches(h: Harness) -> None:
    jobs = await h.jobs.create_many([{"name": f"j{i}", "type": "step", "schedule": "* * * * * *"}
                                     for i in range(120)])
    await h.at(1)
    assert h.scheduler.stats.fired == 120  # batch size 50: three claims in one tick
    await h.drain()
    for job in jobs[:5]:
        assert statuses(await h.history(job)) == ["succeeded"]


async def test_output_lines_are_published_live_and_kept(h: Harness) -> None:
    job = await h.create(payload={"behaviour": "lines"})
    sub = h.bus.subscribe(job_id=job.id)
    run = await h.jobs.trigger(job.id)
    await h.drain()
    await sub.aclose()
    async with h.bus.subscribe(job_id=job.id, after="0") as replay:  # the bus's replay window
        kept = list(replay.replay)
    kinds = [(e.type, e.data.get("line")) for e in kept]
    assert kinds == [(EventType.JOB_CREATED, None), (EventType.RUN_QUEUED, None),
                     (EventType.RUN_STARTED, None), (EventType.RUN_LOG, "line 0"),
                     (EventType.RUN_LOG, "line 1"), (EventType.RUN_LOG, "line 2"),
                     (EventType.RUN_SUCCEEDED, None)]
    done = await h.runs.get(run.id)
    assert done.output == "line 0\nline 1\nline 2\nsummary"
    assert done.trigger is Trigger.MANUAL


# ----------------------------------------------------------------------------------------- overlap


async def test_overlap_forbid_records_the_blocked_slot_as_skipped(h: Harness) -> None:
    job = await h.create(schedule="* * * * * *", overlap="forbid", payload={"behaviour": "block"})
    await h.at(1)
    await h.drain()
    await h.at(1)
    runs = await h.history(job)
    assert statuses(runs) == ["running", "skipped"]
    assert runs[0].id in (runs[1].error or "")
    assert "overlap forbid" in (runs[1].error or "")
    h.executor.release.set()
    await h.drain()
    await h.at(1)
    await h.drain()
    assert statuses(await h.history(job)) == ["succeeded", "skipped", "succeeded"]


async def test_overlap_allow_runs_side_by_side(h: Harness) -> None:
    job = await h.create(schedule="* * * * * *", payload={"behaviour": "block"})
    await h.at(1)
    await h.drain()
    await h.at(1)
    await h.drain()
    assert statuses(await h.history(job)) == ["running", "running"]


async def test_overlap_replace_cancels_the_running_one(h: Harness) -> None:
    await h.worker.start()  # listens for cancel requests
    try:
        job = await h.create(schedule="* * * * * *", overlap="replace", payload={"behaviour": "block"})
        await h.at(1)
        await settle()
        first = (await h.history(job))[0]
        assert first.status is RunStatus.RUNNING
        await h.at(1)
        await settle()
        runs = await h.history(job)
        assert statuses(runs) == ["cancelled", "running"]
        assert "overlap replace" in (runs[0].error or "")
        assert h.executor.cancelled == [first.id]
    finally:
        h.executor.release.set()
        await h.worker.stop(grace=1)


# ----------------------------------------------------------------------------------------- misfire


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("fire_once", ["missed"] * 9 + ["succeeded"]),
        ("skip", ["missed"] * 10),
        ("fire_all", ["succeeded"] * 10),
    ],
)
async def test_misfire_after_an_outage(h: Harness, policy: str, expected: list[str]) -> None:
    job = await h.create(schedule="* * * * *", misfire=policy, misfire_grace=5)
    # the scheduler was down for ten and a half minutes
    await h.at(T0 + timedelta(minutes=10, seconds=30))
    await h.drain()
    runs = await h.history(job)
    assert sorted(r.scheduled_for for r in runs) == [T0 + timedelta(minutes=k) for k in range(1, 11)]
    by_slot = sorted(runs, key=lambda r: r.scheduled_for)
    assert statuses(by_slot) == expected
    for r in by_slot:
        if r.status is RunStatus.MISSED:
            assert f"misfire policy {policy}" in (r.error or "")
        else:
            assert r.trigger is Trigger.CATCH_UP
    assert (await h.jobs.get(job.id)).next_run_at == T0 + timedelta(minutes=11)


async def test_late_but_within_grace_is_not_a_misfire(h: Harness) -> None:
    job = await h.create(schedule="* * * * *", misfire="skip", misfire_grace=30)
    await h.at(T0 + timedelta(minutes=1, seconds=20))
    await h.drain()
    runs = await h.history(job)
    assert statuses(runs) == ["succeeded"]
    assert runs[0].trigger is Trigger.SCHEDULE


async def test_an_outage_too_long_to_list_is_summarised_not_dropped(h: Harness) -> None:
    job = await h.create(schedule="* * * * * *", misfire="skip", misfire_grace=1)
    await h.at(T0 + timedelta(hours=1))
    runs = await h.history(job)
    summary = [r for r in runs if "listed as one" in (r.error or "")]
    listed = [r for r in runs if r.status is RunStatus.MISSED and r not in summary]
    fired = [r for r in runs if r.status is RunStatus.QUEUED]
    # slots T0+1s .. T0+3600s: the last two are within the 1 s grace and fire; 3598 were missed,
    # the latest 1000 of them listed one by one and the 2598 before in one summary record
    assert len(listed) == 1000 and len(summary) == 1 and len(fired) == 2
    assert summary[0].error is not None and summary[0].error.startswith(
        f"2598 slots from {(T0 + timedelta(seconds=1)).isoformat()} to "
        f"{(T0 + timedelta(seconds=2598)).isoformat()}")
    assert sorted(r.scheduled_for for r in listed)[0] == T0 + timedelta(seconds=2599)
    assert [r.scheduled_for for r in fired] == [T0 + timedelta(seconds=3599), T0 + timedelta(seconds=3600)]


@pytest.mark.parametrize("policy", ["fire_once", "fire_all"])
async def test_after_a_long_outage_the_catch_up_runs_are_the_latest_slots(h: Harness, policy: str) -> None:
    job = await h.create(schedule="* * * * *", misfire=policy, misfire_grace=5)
    down_until = T0 + timedelta(days=2, seconds=30)  # 2880 per-minute slots missed
    await h.at(down_until)
    runs = await h.history(job)
    catch_up = sorted(r.scheduled_for for r in runs if r.trigger is Trigger.CATCH_UP and
                      r.status is RunStatus.QUEUED)
    expected = 1 if policy == "fire_once" else 100
    assert catch_up == [T0 + timedelta(days=2) - timedelta(minutes=k) for k in range(expected - 1, -1, -1)]
    summary = [r for r in runs if "listed as one" in (r.error or "")]
    assert len(summary) == 1 and (summary[0].error or "").startswith(
        f"1880 slots from {(T0 + timedelta(minutes=1)).isoformat()}")


async def test_an_outage_too_long_to_walk_leaps_to_the_latest_slots(h: Harness) -> None:
    job = await h.create(schedule="* * * * * *", misfire="fire_once", misfire_grace=5)
    await h.at(T0 + timedelta(days=3))  # 259200 per-second slots
    runs = await h.history(job)
    assert [r.scheduled_for for r in runs if r.status is RunStatus.QUEUED] == [
        T0 + timedelta(days=3) - timedelta(seconds=k) for k in range(5, -1, -1)]  # within the grace
    missed = sorted(r.scheduled_for for r in runs if r.status is RunStatus.MISSED)
    summary = [r for r in runs if "too many to count" in (r.error or "")]
    assert len(summary) == 1 and summary[0].scheduled_for == T0 + timedelta(seconds=1)
    listed = [m for m in missed if m != summary[0].scheduled_for]
    assert len(listed) >= 1000 and listed[-1] == T0 + timedelta(days=3, seconds=-6)
    assert (await h.jobs.get(job.id)).next_run_at == T0 + timedelta(days=3, seconds=1)


# ----------------------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    ("retry", "waits"),
    [
        ({"strategy": "immediate", "max_attempts": 4}, [0, 0, 0]),
        ({"strategy": "linear", "max_attempts": 4, "delay": 10}, [10, 20, 30]),
        ({"strategy": "exponential", "max_attempts": 4, "delay": 10, "max_delay": 25}, [10, 20, 25]),
    ],
)
async def test_retries_follow_the_strategy(h: Harness, retry: dict[str, Any], waits: list[int]) -> None:
    job = await h.create(payload={"behaviour": "fail"}, retry=retry)
    await h.jobs.trigger(job.id)
    await h.drain()
    for wait in waits:
        runs = await h.history(job)
        last_failed, retry_run = runs[-2], runs[-1]
        assert retry_run.status is RunStatus.QUEUED
        assert last_failed.finished_at is not None
        assert retry_run.due_at - last_failed.finished_at == timedelta(seconds=wait)
        if wait:
            await h.at(wait - 0.5)
            await h.drain()
            assert (await h.runs.get(retry_run.id)).status is RunStatus.QUEUED
            await h.at(0.5)
        else:
            await h.at(0)
        await h.drain()
    runs = await h.history(job)
    assert [r.attempt for r in runs] == [1, 2, 3, 4]
    assert statuses(runs) == ["failed"] * 4
    assert {r.scheduled_for for r in runs} == {runs[0].scheduled_for}
    assert [r.trigger for r in runs] == [Trigger.MANUAL] + [Trigger.RETRY] * 3
    assert all(r.exit_code == 3 for r in runs)


async def test_non_retryable_failures_are_not_retried(h: Harness) -> None:
    job = await h.create(payload={"behaviour": "fatal"}, retry={"max_attempts": 5})
    await h.jobs.trigger(job.id)
    await h.drain()
    runs = await h.history(job)
    assert statuses(runs) == ["failed"]
    assert runs[0].error == "bad request; not retried: the failure is permanent"


async def test_an_exit_code_no_store_holds_is_not_recorded_and_the_run_says_why(h: Harness) -> None:
    """review-secfix F2: MySQL's INT refused 2**40 and the finish failed as a store error (the run stayed
    running); the worker records no code instead, and says why (in the error, or the output)."""
    job = await h.create(payload={"behaviour": "huge-code"})
    await h.jobs.trigger(job.id)
    ok = await h.create(payload={"behaviour": "huge-code-ok"})
    await h.jobs.trigger(ok.id)
    edge = await h.create(payload={"behaviour": "fail"})
    await h.jobs.trigger(edge.id)
    await h.drain()
    (run,) = await h.history(job)
    assert run.status is RunStatus.FAILED and run.exit_code is None
    assert run.error == ("boom; exit code 1099511627776 not recorded: outside the 32-bit range a store "
                         "holds")
    (run,) = await h.history(ok)
    assert run.status is RunStatus.SUCCEEDED and run.exit_code is None and run.error is None
    assert "exit code -2147483649 not recorded" in (run.output or "")
    (run,) = await h.history(edge)
    assert run.exit_code == 3


async def test_timeout_ends_timed_out_and_is_retried(h: Harness) -> None:
    job = await h.create(payload={"behaviour": "hang"}, timeout=0.05,
                         retry={"strategy": "immediate", "max_attempts": 2})
    await h.jobs.trigger(job.id)
    await h.drain()
    runs = await h.history(job)
    assert statuses(runs) == ["timed_out", "queued"]
    assert runs[0].error == "timed out after 0.05s"
    assert h.executor.cancelled == [runs[0].id]


# ------------------------------------------------------------------------------ pause, run now, cancel


async def test_pause_stops_firing_and_resume_starts_from_now(h: Harness) -> None:
    job = await h.create(schedule="* * * * *")
    await h.jobs.pause(job.id)
    await h.at(T0 + timedelta(minutes=5, seconds=30))
    await h.drain()
    assert await h.history(job) == []
    resumed = await h.jobs.resume(job.id)
    assert resumed.next_run_at == T0 + timedelta(minutes=6)
    await h.at(T0 + timedelta(minutes=6))
    await h.drain()
    assert statuses(await h.history(job)) == ["succeeded"]


async def test_run_now_works_for_paused_and_unscheduled_jobs(h: Harness) -> None:
    job = await h.create(status="paused")
    run = await h.jobs.trigger(job.id)
    assert run.status is RunStatus.QUEUED and run.scheduled_for == T0
    await h.drain()
    assert (await h.runs.get(run.id)).status is RunStatus.SUCCEEDED


async def test_cancel_a_queued_run_and_it_never_starts(h: Harness) -> None:
    job = await h.create()
    run = await h.jobs.trigger(job.id)
    cancelled = await h.runs.cancel(run.id)
    assert cancelled.status is RunStatus.CANCELLED
    await h.drain()
    assert h.executor.started == []


async def test_cancel_a_running_run(h: Harness) -> None:
    await h.worker.start()
    try:
        job = await h.create(payload={"behaviour": "hang"})
        run = await h.jobs.trigger(job.id)
        await settle()
        assert (await h.runs.get(run.id)).status is RunStatus.RUNNING
        await h.runs.cancel(run.id)
        for _ in range(50):
            await settle()
            if (await h.runs.get(run.id)).status is RunStatus.CANCELLED:
                break
        done = await h.runs.get(run.id)
        assert done.status is RunStatus.CANCELLED
        assert done.error == "cancelled by request"
    finally:
        await h.worker.stop(grace=1)


async def test_cancelling_a_finished_run_is_a_conflict(h: Harness) -> None:
    from chronos_core import RunConflict

    job = await h.create()
    run = await h.jobs.trigger(job.id)
    await h.drain()
    with pytest.raises(RunConflict, match="already finished"):
        await h.runs.cancel(run.id)


# ----------------------------------------------------------------------------- leases and recovery


async def test_a_dead_workers_run_is_reaped_and_retried_and_the_stale_worker_is_fenced(h: Harness) -> None:
    job = await h.create(retry={"strategy": "immediate", "max_attempts": 2})
    run = await h.jobs.trigger(job.id)
    d = h.queue.get_nowait()
    assert d is not None
    lease_end = h.clock.now() + timedelta(seconds=30)
    assert await h.store.start_run(run.id, "worker-that-dies", h.clock.now(), lease_end)
    await h.at(29)
    assert (await h.runs.get(run.id)).status is RunStatus.RUNNING
    await h.at(10)  # the lease ran out 9 s ago: still within the reaper's 10 s grace
    assert (await h.runs.get(run.id)).status is RunStatus.RUNNING
    await h.at(2)
    reaped = await h.runs.get(run.id)
    assert reaped.status is RunStatus.FAILED
    assert "worker-that-dies" in (reaped.error or "")
    # the "dead" worker wakes up and tries to record success: refused
    assert not await h.store.finish_run(run.id, "worker-that-dies", status=RunStatus.SUCCEEDED,
                                        finished_at=h.clock.now())
    await h.tick()  # the retry is due at once (immediate strategy)
    await h.drain()
    runs = await h.history(job)
    assert statuses(runs) == ["failed", "succeeded"]
    assert runs[1].attempt == 2


async def test_a_redelivered_dispatch_does_not_run_twice(h: Harness) -> None:
    job = await h.create()
    await h.jobs.trigger(job.id)
    d = h.queue.get_nowait()
    assert d is not None
    assert await h.worker.process(d) is not None
    assert await h.worker.process(d) is None
    assert len(h.executor.started) == 1


async def test_runs_queued_by_a_previous_process_are_dispatched_again(h: Harness) -> None:
    job = await h.create()
    run = await h.jobs.trigger(job.id)
    assert h.queue.get_nowait() is not None  # ... and then the process died with it in memory
    fresh = MemoryDispatchQueue()
    scheduler = Scheduler(h.store, fresh, h.bus, h.clock)
    assert await scheduler.recover() == 1
    await scheduler.tick()
    again = fresh.get_nowait()
    assert again is not None and again.run.id == run.id


async def test_a_full_queue_holds_claims_back_and_late_slots_are_then_recorded_missed(h: Harness) -> None:
    h.scheduler.max_queued = 30
    jobs = await h.jobs.create_many([{"name": f"j{i}", "type": "step", "schedule": "* * * * * *",
                                      "misfire_grace": 5} for i in range(100)])
    await h.at(1)
    assert await h.queue.depth() == 30  # no more than the bound, though 100 jobs are due
    assert h.scheduler.stats.fired == 30
    await h.at(0.5)
    assert h.scheduler.stats.fired == 30  # still full: nothing claimed
    await h.drain()
    await h.tick()
    assert await h.queue.depth() == 30 and h.scheduler.stats.fired == 60  # room again: the next 30
    h.scheduler.max_queued = None
    await h.drain()
    await h.at(10)  # the held-back slots are now older than their grace: missed, not run late
    await h.drain()
    first = [r for job in jobs for r in await h.history(job) if r.scheduled_for == T0 + timedelta(seconds=1)]
    assert len(first) == 100  # every job's first slot is accounted for, once
    assert sorted(r.status.value for r in first) == ["missed"] * 40 + ["succeeded"] * 60


class _Spinning(BaseException):
    """Ends a scheduler loop that never waits (a plain exception would be logged and looped over)."""


async def test_the_loop_waits_while_the_queue_is_full_instead_of_spinning(h: Harness) -> None:
    h.scheduler.max_queued = 5
    await h.jobs.create_many([{"name": f"j{i}", "type": "step", "schedule": "* * * * * *"}
                              for i in range(20)])
    h.clock.advance(1)
    sleeps = 0
    sleep_until = h.clock.sleep_until

    async def counted(deadline: datetime | None, wake: Any) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps > 100:  # a loop that does not wait would never yield: end it, so the test fails fast
            raise _Spinning("the scheduler loop spins")
        await sleep_until(deadline, wake)

    h.clock.sleep_until = counted  # type: ignore[method-assign]
    await h.scheduler.start()
    try:
        for _ in range(10):
            await settle()
        ticks = h.scheduler.stats.ticks
        assert await h.queue.depth() == 5 and ticks <= 2  # held back, asleep until the clock moves
        h.clock.advance(0.005)  # min_interval later it looks again: still full
        for _ in range(5):
            await settle()
        assert h.scheduler.stats.ticks == ticks + 1 and h.scheduler.stats.fired == 5
    finally:
        with contextlib.suppress(_Spinning):
            await h.scheduler.stop()


# ------------------------------------------------------------------------------------ the run loop


async def test_the_loop_sleeps_until_the_next_slot_and_wakes_for_new_jobs(h: Harness) -> None:
    h.scheduler.max_sleep = 3600
    await h.scheduler.start()
    try:
        await settle()
        ticks = h.scheduler.stats.ticks
        job = await h.create(schedule="*/30 * * * * *")  # job.created wakes the loop
        await settle()
        assert h.scheduler.stats.ticks == ticks + 1
        h.clock.advance(29)
        await settle()
        assert h.scheduler.stats.fired == 0
        h.clock.advance(1)
        await settle()
        assert h.scheduler.stats.fired == 1
        d = h.queue.get_nowait()
        assert d is not None and d.run.job_id == job.id and d.run.scheduled_for == T0 + timedelta(seconds=30)
    finally:
        await h.scheduler.stop()


async def test_jobs_without_a_slot_do_not_wake_the_loop(h: Harness) -> None:
    """A job run by hand only (or created paused) has nothing for the scheduler: creating many of them
    (POST /jobs under load) costs no tick each; a scheduled one still wakes it."""
    h.scheduler.max_sleep = 3600
    await h.scheduler.start()
    try:
        await settle()
        ticks = h.scheduler.stats.ticks
        await h.create()
        await h.create(schedule="*/30 * * * * *", status="paused")
        await settle()
        assert h.scheduler.stats.ticks == ticks
        await h.create(schedule="*/30 * * * * *")
        await settle()
        assert h.scheduler.stats.ticks == ticks + 1
    finally:
        await h.scheduler.stop()




async def test_a_job_that_cannot_be_planned_does_not_stall_the_others(h: Harness) -> None:
    import dataclasses

    bad = await h.create(schedule="* * * * * *")
    good = await h.create(schedule="* * * * * *")
    # e.g. a row written by an older version, or a time zone the system's tzdata no longer knows
    await h.store.update_job(dataclasses.replace(bad, timezone="Gone/Away"))
    await h.at(1)
    await h.drain()
    assert statuses(await h.history(good)) == ["succeeded"]
    runs = await h.history(bad)
    assert statuses(runs) == ["missed"]
    assert "could not be planned" in (runs[0].error or "")
    assert (await h.jobs.get(bad.id)).next_run_at is None
    await h.at(1)
    assert len(await h.history(bad)) == 1
