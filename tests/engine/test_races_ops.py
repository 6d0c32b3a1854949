"""Issue #12's races between the operations (PUT, PATCH, pause, delete), the scheduler's claim and the
workers, each reproduced deterministically: the real engines on a FakeClock over every real store
(memory, SQLite, MariaDB), the other side of the race run at the exact moment through a proxy around the
real store (``tests/engine/proxies.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus
from chronos_core import EventType, FakeClock, Job, Jobs, JobTypes, Run, Runs, RunStatus, Scheduler, Worker
from chronos_core.ports import Store
from tests.engine.proxies import Proxy
from tests.engine.test_races import T0, Rig, S, StepExecutor, StepPayload


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
            return await super().execute(job, run, log)
        except asyncio.CancelledError:
            self.cancelled.append(run.id)
            raise


@pytest.fixture
def rig(store: Store) -> Rig:
    """As test_races' rig, with a Gate executor."""
    clock = FakeClock(T0)
    store_p, queue, bus = Proxy(store), Proxy(MemoryDispatchQueue()), Proxy(MemoryEventBus())
    types = JobTypes()
    types.register("step", StepPayload)
    executor = Gate()
    r = Rig(clock=clock, store=store_p, queue=queue, bus=bus,
            jobs=Jobs(store_p, queue, bus, clock, types),  # type: ignore[arg-type]
            runs=Runs(store_p, bus, clock),  # type: ignore[arg-type]
            scheduler=Scheduler(store_p, queue, bus, clock, batch_size=50, reap_grace=10),  # type: ignore[arg-type]
            worker=Worker(store_p, queue, bus, clock, {"step": executor}, job_types=types,  # type: ignore[arg-type]
                          lease=30, store_retry_for=3600),
            executor=executor)

    async def record(real: Any, events: list[Any]) -> None:
        await real(events)
        r.events.extend(events)
    bus.hooks["publish"] = record
    return r


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
