"""Issue #12 item 9: the worker's fence holds inside one worker. Two deliveries of one run reaching the same
worker (the outbox relay sends a row again when it could not mark it sent) must not both execute it, and a
handler may only go ahead on a start that is its own. The real worker on a FakeClock over every real store,
the outage injected through a failing proxy around it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, ClassVar

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus
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
from chronos_core.ports import LogSink, Store
from tests.engine.proxies import Proxy

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


class CountingExecutor(Executor):
    type_name: ClassVar[str] = "shell"

    def __init__(self) -> None:
        self.executed: list[str] = []

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        self.executed.append(run.id)
        await log("hello")
        return ExecutionResult(ok=True, exit_code=0)


def down_while(proxy: Proxy, name: str, outage: dict[str, bool]) -> None:
    """``name`` raises StoreUnavailable while ``outage["down"]``."""
    async def hook(real: Any, *args: Any, **kwargs: Any) -> Any:
        if outage["down"]:
            raise StoreUnavailable("connection refused")
        return await real(*args, **kwargs)
    proxy.hooks[name] = hook


async def drive(clock: FakeClock, tasks: list[asyncio.Task[Any]], until: Any = None) -> None:
    """Move the fake clock while the tasks wait out the outage (``until()`` ends it when true)."""
    for _ in range(2000):
        for _ in range(5):
            await asyncio.sleep(0)
        if until is not None and until():
            return
        if all(t.done() for t in tasks):
            return
        clock.advance(0.5)
        await asyncio.sleep(0.001)  # a SQL store answers from its threads


async def setup(store: Store, **worker_options: Any) -> tuple[FakeClock, Proxy, MemoryDispatchQueue, Jobs,
                                                                 Worker, CountingExecutor]:
    clock = FakeClock(T0)
    proxy, queue, bus = Proxy(store), MemoryDispatchQueue(), MemoryEventBus()
    jobs = Jobs(proxy, queue, bus, clock, JobTypes())  # type: ignore[arg-type]
    executor = CountingExecutor()
    worker = Worker(proxy, queue, bus, clock, {"shell": executor}, **worker_options)  # type: ignore[arg-type]
    return clock, proxy, queue, jobs, worker, executor


async def test_two_deliveries_of_one_run_waiting_out_an_outage_execute_it_once(store: Store) -> None:
    clock, proxy, queue, jobs, worker, executor = await setup(store, store_retry_for=3600)
    job = await jobs.create({"name": "twice", "type": "shell", "payload": {"command": "true"}})
    run = await jobs.trigger(job.id)
    first = queue.get_nowait()
    assert first is not None
    outage = {"down": True}  # the database is down: both copies wait for it
    down_while(proxy, "start_run", outage)
    handlers = [asyncio.create_task(worker.process(first)), asyncio.create_task(worker.process(first))]
    await drive(clock, handlers, until=lambda: proxy.calls.get("start_run", 0) >= 2)
    outage["down"] = False  # back: one start applies
    await drive(clock, handlers)
    results = await asyncio.gather(*handlers)  # neither handler fails (no KeyError on the output tail)
    assert executor.executed == [run.id]
    assert sorted(r is None for r in results) == [False, True]
    assert (await store.get_run(run.id)).status is RunStatus.SUCCEEDED
    assert worker.stats.started == 1 and worker.stats.duplicates == 1
    assert queue.get_nowait() is None  # both deliveries acked, none handed back


async def test_a_redelivery_does_not_take_an_earlier_handlers_start_for_its_own(store: Store) -> None:
    clock, proxy, queue, jobs, worker, executor = await setup(store, store_retry_for=30)
    job = await jobs.create({"name": "again", "type": "shell", "payload": {"command": "true"}})
    run = await jobs.trigger(job.id)
    d = queue.get_nowait()
    assert d is not None
    outage = {"down": False}

    async def finish(real: Any, *args: Any, **kwargs: Any) -> Any:  # the outcome cannot be recorded...
        outage["down"] = True
        raise StoreUnavailable("connection refused")
    proxy.hooks["finish_run"] = finish
    down_while(proxy, "start_run", outage)
    first = asyncio.create_task(worker.process(d))
    await drive(clock, [first])
    assert await first is None  # ... past the retry window: handed back (the run stays running here)
    assert executor.executed == [run.id]
    again = queue.get_nowait()
    assert again is not None and again.run.id == run.id
    # the redelivery comes to this worker while the store is still down, then it is back: the run is
    # running under this worker's owner, but started by the handler before, not by this one
    del proxy.hooks["finish_run"]
    second = asyncio.create_task(worker.process(again))
    await drive(clock, [second], until=lambda: proxy.calls.get("start_run", 0) >= 3)
    outage["down"] = False
    await drive(clock, [second])
    assert await second is None
    assert executor.executed == [run.id]  # not executed a second time
    stored = await store.get_run(run.id)
    assert (stored.status, stored.owner) == (RunStatus.RUNNING, worker.owner)  # the reaper's to fail
