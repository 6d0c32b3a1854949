"""A worker keeps a run's start and outcome through a store outage (the database restarting)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus, MemoryStore
from chronos_core import (
    ExecutionResult,
    Executor,
    FakeClock,
    Job,
    Jobs,
    JobTypes,
    Run,
    RunStatus,
    StoreUnavailable,
    Worker,
)
from chronos_core.ports import LogSink


class OkExecutor(Executor):
    type_name: ClassVar[str] = "shell"

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        return ExecutionResult(ok=True, exit_code=0)


class FlakyStore(MemoryStore):
    """A memory store whose run writes fail ``failures`` times: before applying, or (``applied``) after
    applying, as when a commit succeeds but the connection breaks before the answer arrives."""

    def __init__(self, failures: int, applied: bool) -> None:
        super().__init__()
        self.failures = failures
        self.applied = applied
        self.calls = 0

    async def _flaky(self, method: Any, *args: Any, **kwargs: Any) -> bool:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            if self.applied:
                await method(*args, **kwargs)
            raise StoreUnavailable("connection lost")
        result: bool = await method(*args, **kwargs)
        return result

    async def start_run(self, *args: Any, **kwargs: Any) -> bool:
        return await self._flaky(super().start_run, *args, **kwargs)

    async def finish_run(self, *args: Any, **kwargs: Any) -> bool:
        return await self._flaky(super().finish_run, *args, **kwargs)


@pytest.mark.parametrize("applied", [False, True], ids=["lost-before-commit", "lost-after-commit"])
async def test_start_and_outcome_survive_a_store_outage(applied: bool) -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    store, queue, bus = FlakyStore(failures=0, applied=applied), MemoryDispatchQueue(), MemoryEventBus()
    jobs = Jobs(store, queue, bus, clock, JobTypes())
    worker = Worker(store, queue, bus, clock, {"shell": OkExecutor()}, store_retry_for=60)
    job = await jobs.create({"name": "j", "type": "shell", "payload": {"command": "true"}})
    run = await jobs.trigger(job.id)
    d = queue.get_nowait()
    assert d is not None
    store.failures = 4  # two failed tries of start_run, two of finish_run (the clock does not move)
    worker.store_retry_for = 1e9
    # FakeClock never reaches the retry pauses by itself: move it while the worker waits
    task = asyncio.create_task(worker.process(d))
    for _ in range(200):
        await asyncio.sleep(0)
        clock.advance(10)
        if task.done():
            break
    finished = await task
    assert finished is not None and finished.status is RunStatus.SUCCEEDED
    stored = await store.get_run(run.id)
    assert stored.status is RunStatus.SUCCEEDED
    assert store.calls >= 6


async def test_after_a_long_outage_the_dispatch_is_handed_back_not_lost() -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    store, queue, bus = FlakyStore(failures=10**6, applied=False), MemoryDispatchQueue(), MemoryEventBus()
    jobs = Jobs(store, queue, bus, clock, JobTypes())
    worker = Worker(store, queue, bus, clock, {"shell": OkExecutor()}, store_retry_for=30)
    job = await jobs.create({"name": "j", "type": "shell", "payload": {"command": "true"}})
    await jobs.trigger(job.id)
    d = queue.get_nowait()
    assert d is not None
    task = asyncio.create_task(worker.process(d))
    for _ in range(500):
        await asyncio.sleep(0)
        clock.advance(1)
        if task.done():
            break
    assert await task is None
    assert (await MemoryStore.get_run(store, d.run.id)).status is RunStatus.QUEUED
    # not lost: handed back to the queue, and it runs once the store is back
    again = queue.get_nowait()
    assert again is not None and again.run.id == d.run.id
    store.failures = 0
    finished = await worker.process(again)
    assert finished is not None and finished.status is RunStatus.SUCCEEDED
