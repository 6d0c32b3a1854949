"""Engines under partial failure: long store outages, slow buses, overflowing subscriptions, a failing
queue. Fake clock, memory adapters with faults injected by small subclasses (real implementations of the
ports, not mocks)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NamedTuple

import pytest

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus, MemoryStore
from chronos_core import (
    BrokerUnavailable,
    Dispatch,
    Event,
    EventType,
    ExecutionResult,
    Executor,
    FakeClock,
    Job,
    Jobs,
    JobTypes,
    Run,
    Runs,
    RunStatus,
    Scheduler,
    StoreUnavailable,
    Worker,
)
from chronos_core.ports import LogSink

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class GateExecutor(Executor):
    type_name: ClassVar[str] = "shell"

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        if job.payload.get("command") == "wait":
            await self.gate.wait()
        return ExecutionResult(ok=True, exit_code=0)


class OutageStore(MemoryStore):
    """Every run write fails while ``down``."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("database restarting")

    async def start_run(self, *a: Any, **k: Any) -> bool:
        self._check()
        return await super().start_run(*a, **k)

    async def finish_run(self, *a: Any, **k: Any) -> bool:
        self._check()
        return await super().finish_run(*a, **k)

    async def renew_leases(self, *a: Any, **k: Any) -> set[str]:
        self._check()
        return await super().renew_leases(*a, **k)

    async def claim_due(self, *a: Any, **k: Any) -> Any:
        self._check()
        return await super().claim_due(*a, **k)

    async def expired_leases(self, *a: Any, **k: Any) -> list[Run]:
        self._check()
        return await super().expired_leases(*a, **k)


async def settle(n: int = 30) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class Rig(NamedTuple):
    clock: FakeClock
    store: Any
    queue: Any
    bus: Any
    executor: GateExecutor
    jobs: Jobs
    worker: Worker
    scheduler: Scheduler


async def until_status(store: MemoryStore, run_id: str, status: RunStatus) -> None:
    """Let the engines run (no clock movement) until the run has ``status``, or give up quietly: the
    caller asserts the outcome."""
    for _ in range(100):
        await settle()
        if (await store.get_run(run_id)).status is status:
            return


def build(store: MemoryStore | None = None, bus: MemoryEventBus | None = None,
          queue: MemoryDispatchQueue | None = None) -> Rig:
    clock = FakeClock(T0)
    store = store or MemoryStore()
    queue = queue or MemoryDispatchQueue()
    bus = bus or MemoryEventBus()
    executor = GateExecutor()
    jobs = Jobs(store, queue, bus, clock, JobTypes())
    worker = Worker(store, queue, bus, clock, {"shell": executor}, lease=30)
    scheduler = Scheduler(store, queue, bus, clock, reap_grace=10)
    return Rig(clock, store, queue, bus, executor, jobs, worker, scheduler)


async def test_a_start_delayed_by_a_long_outage_leases_from_when_it_really_started() -> None:
    clock, store, queue, _, executor, jobs, worker, scheduler = build(store=OutageStore())
    job = await jobs.create({"name": "j", "type": "shell", "payload": {"command": "wait"},
                             "retry": {"max_attempts": 3}})
    await jobs.trigger(job.id)
    d = queue.get_nowait()
    assert d is not None
    store.down = True
    task = asyncio.create_task(worker.process(d))
    for _ in range(40):  # 40 s of outage, longer than the 30 s lease
        await settle()
        clock.advance(1)
    store.down = False
    for _ in range(10):
        await settle()
        clock.advance(1)
        run = await store.get_run(d.run.id)
        if run.status is RunStatus.RUNNING:
            break
    assert run.status is RunStatus.RUNNING and run.started_at is not None
    assert run.started_at >= T0 + timedelta(seconds=40)
    assert run.lease_expires_at == run.started_at + timedelta(seconds=30)
    await scheduler.tick()  # nothing to reap: the lease is fresh
    assert (await store.get_run(d.run.id)).status is RunStatus.RUNNING
    executor.gate.set()
    finished = await task
    assert finished is not None and finished.status is RunStatus.SUCCEEDED
    assert [r.attempt for r in await jobs.history(job.id)] == [1]


async def test_an_outcome_waiting_out_an_outage_keeps_its_lease_and_is_not_run_again() -> None:
    clock, store, _, _, executor, jobs, worker, scheduler = build(store=OutageStore())
    await worker.start()
    try:
        job = await jobs.create({"name": "j", "type": "shell", "payload": {"command": "wait"},
                                 "retry": {"max_attempts": 3}})
        run = await jobs.trigger(job.id)
        await settle()
        assert (await store.get_run(run.id)).status is RunStatus.RUNNING
        store.down = True
        executor.gate.set()  # it finishes while the store is down
        for _ in range(60):
            await settle()
            clock.advance(1)
            try:
                await scheduler.tick()
            except StoreUnavailable:
                scheduler._hold_reaping()  # what the run loop does when a tick fails
        store.down = False
        for _ in range(30):
            await settle()
            clock.advance(1)
            await scheduler.tick()
        history = await jobs.history(job.id)
        assert [(r.attempt, r.status.value) for r in history] == [(1, "succeeded")]
    finally:
        await worker.stop(grace=1)


class SlowBus(MemoryEventBus):
    """Holds ``run.started`` events at a gate, as a remote broker may take a while to accept them."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.held = asyncio.Event()

    async def publish(self, events: Sequence[Event]) -> None:
        if any(e.type is EventType.RUN_STARTED for e in events):
            self.held.set()
            await self.gate.wait()
        await super().publish(events)


async def test_a_cancel_arriving_between_start_and_execution_is_applied() -> None:
    bus = SlowBus()
    rig = build(bus=bus)
    clock = rig.clock
    store = rig.store
    bus = rig.bus
    executor = rig.executor
    jobs = rig.jobs
    worker = rig.worker
    await worker.start()
    try:
        job = await jobs.create({"name": "j", "type": "shell", "payload": {"command": "wait"}})
        run = await jobs.trigger(job.id)
        await asyncio.wait_for(bus.held.wait(), 5)
        assert (await store.get_run(run.id)).status is RunStatus.RUNNING
        await Runs(store, bus, clock).cancel(run.id)  # the worker has not registered the task yet
        bus.gate.set()
        await until_status(store, run.id, RunStatus.CANCELLED)
        done = await store.get_run(run.id)
        assert done.status is RunStatus.CANCELLED and done.error == "cancelled by request"
    finally:
        executor.gate.set()
        await worker.stop(grace=1)


async def test_overflowing_subscriptions_resume_and_the_engines_keep_listening() -> None:
    bus = MemoryEventBus(buffer=5)
    rig = build(bus=bus)
    clock = rig.clock
    store = rig.store
    bus = rig.bus
    jobs = rig.jobs
    worker = rig.worker
    scheduler = rig.scheduler
    scheduler.max_sleep = 3600
    await worker.start()
    await scheduler.start()
    try:
        await settle()  # both engines are subscribed
        assert bus.subscribers == 2
        # a burst the engines' subscriptions cannot take in one go
        await jobs.create_many([{"name": f"j{i}", "type": "shell", "payload": {"command": "true"}}
                                for i in range(50)])
        await bus.publish([Event(type=EventType.RUN_CANCEL_REQUESTED, time=clock.now(), run_id=f"r{i}")
                           for i in range(50)])
        await settle(300)
        # still listening: a new job wakes the scheduler, a cancel reaches the worker
        ticks = scheduler.stats.ticks
        late = await jobs.create({"name": "late", "type": "shell", "schedule": "* * * * * *",
                                  "payload": {"command": "true"}})
        await settle()
        assert scheduler.stats.ticks > ticks
        hanging = await jobs.create({"name": "h", "type": "shell", "payload": {"command": "wait"}})
        run = await jobs.trigger(hanging.id)
        await settle()
        await Runs(store, bus, clock).cancel(run.id)
        await until_status(store, run.id, RunStatus.CANCELLED)
        assert (await store.get_run(run.id)).status is RunStatus.CANCELLED
        assert late.next_run_at is not None
    finally:
        await scheduler.stop()  # must not raise
        await worker.stop(grace=1)


class FailingQueue(MemoryDispatchQueue):
    fail = 0

    async def put(self, dispatches: Sequence[Dispatch]) -> None:
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("broker unreachable")
        await super().put(dispatches)


async def test_runs_claimed_while_the_queue_fails_are_dispatched_at_the_next_tick() -> None:
    queue = FailingQueue()
    rig = build(queue=queue)
    clock = rig.clock
    queue = rig.queue
    jobs = rig.jobs
    worker = rig.worker
    scheduler = rig.scheduler
    job = await jobs.create({"name": "j", "type": "shell", "schedule": "* * * * * *",
                             "payload": {"command": "true"}})
    clock.advance(1)
    queue.fail = 1
    try:
        await scheduler.tick()
        raise AssertionError("the tick should report the failed put")
    except StoreUnavailable:
        pass
    assert queue.get_nowait() is None
    await scheduler.tick()  # the queue is back
    d = queue.get_nowait()
    assert d is not None and d.run.job_id == job.id and d.run.scheduled_for == T0 + timedelta(seconds=1)
    finished = await worker.process(d)
    assert finished is not None and finished.status is RunStatus.SUCCEEDED


class BrokerDownQueue(MemoryDispatchQueue):
    """A queue whose broker is down, as the Kafka queue reports it (not a store outage)."""

    fail = 0

    async def put(self, dispatches: Sequence[Dispatch]) -> None:
        if self.fail:
            self.fail -= 1
            raise BrokerUnavailable("kafka send: KafkaConnectionError")
        await super().put(dispatches)


async def test_a_broker_outage_fails_the_tick_like_a_store_outage_and_the_next_tick_dispatches() -> None:
    rig = build(queue=BrokerDownQueue())
    queue = rig.queue
    job = await rig.jobs.create({"name": "j", "type": "shell", "schedule": "* * * * * *",
                                 "payload": {"command": "true"}})
    rig.clock.advance(1)
    queue.fail = 1
    with pytest.raises(BrokerUnavailable):  # an outage, not a bug the tick logs and goes past
        await rig.scheduler.tick()
    assert queue.get_nowait() is None
    await rig.scheduler.tick()  # the broker is back
    d = queue.get_nowait()
    assert d is not None and d.run.job_id == job.id and d.run.scheduled_for == T0 + timedelta(seconds=1)


async def test_run_now_while_the_queue_fails_is_dispatched_by_the_scheduler() -> None:
    queue = FailingQueue()
    rig = build(queue=queue)
    queue = rig.queue
    jobs = rig.jobs
    scheduler = rig.scheduler
    job = await jobs.create({"name": "j", "type": "shell", "payload": {"command": "true"}})
    queue.fail = 1
    run = await jobs.trigger(job.id)  # accepted: the run is recorded, and not lost
    assert run.status is RunStatus.QUEUED and queue.get_nowait() is None
    await scheduler.tick()
    d = queue.get_nowait()
    assert d is not None and d.run.id == run.id
