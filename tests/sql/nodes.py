"""Chronos nodes for the SQL tests, usable in the test process or as OS processes:

    python tests/sql/nodes.py scheduler URL SECONDS BATCH   -> a scheduler + worker on a shared database
    python tests/sql/nodes.py create|resume URL              -> Chronos.embedded(database_url=URL)

Each prints one JSON line of what it did."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any, ClassVar

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus
from chronos_adapters.sql import SqlStore
from chronos_core import ExecutionResult, Executor, Job, Run, Scheduler, SystemClock
from chronos_core.ports import LogSink
from chronos_core.worker import Worker


class NoopExecutor(Executor):
    """Succeeds at once: these tests are about the store, not about what a job does."""

    type_name: ClassVar[str] = "noop"

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        return ExecutionResult(ok=True, output=f"slot {run.scheduled_for.isoformat()}")


async def scheduler_node(url: str, seconds: float, batch_size: int) -> dict[str, Any]:
    """A scheduler and a worker, each with its own SqlStore on ``url``, for ``seconds``."""
    store = SqlStore(url, pool_size=4, create_schema=False)
    queue, bus, clock = MemoryDispatchQueue(), MemoryEventBus(), SystemClock()
    scheduler = Scheduler(store, queue, bus, clock, batch_size=batch_size, max_sleep=1.0)
    worker = Worker(store, queue, bus, clock, {"noop": NoopExecutor()},
                    concurrency=int(os.environ.get("CHRONOS_TEST_NODE_CONCURRENCY", "8")))
    await store.start()
    await queue.start()
    await bus.start()
    try:
        await worker.start()
        await scheduler.start()
        await asyncio.sleep(seconds)
        await scheduler.stop()
        await worker.stop(5.0)
    finally:
        await bus.stop()
        await queue.stop()
        await store.stop()
    return {"fired": scheduler.stats.fired, "recorded": scheduler.stats.recorded,
            "duplicates": scheduler.stats.duplicates, "finished": worker.stats.finished}


async def embedded_node(mode: str, url: str) -> dict[str, Any]:
    """``create``: make a per-second job and wait for two successes; ``resume``: find it again and wait
    for a success of a slot after this process started."""
    from chronos_app import Chronos
    from chronos_core import RunStatus

    started = datetime.now(UTC)
    async with Chronos.embedded(database_url=url) as chronos:
        if mode == "create":
            job = await chronos.jobs.create({
                "name": "persist", "type": "shell", "schedule": "*/1 * * * * *", "misfire": "skip",
                "misfire_grace": 1, "payload": {"command": "echo persisted"}})
        else:
            job = await chronos.jobs.get_by_name("persist")
        async with asyncio.timeout(60):
            while True:
                runs = await chronos.jobs.history(job.id, limit=1000)
                done = [r for r in runs if r.status is RunStatus.SUCCEEDED and r.scheduled_for >= started]
                if len(done) >= 2:
                    break
                await asyncio.sleep(0.2)
    return {"job_id": job.id, "started": started.isoformat(),
            "runs": [{"id": r.id, "slot": r.scheduled_for.isoformat(), "attempt": r.attempt,
                      "status": r.status.value, "error": r.error, "output": r.output} for r in runs]}


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "scheduler":
        result = asyncio.run(scheduler_node(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
    else:
        result = asyncio.run(embedded_node(kind, sys.argv[2]))
    print(json.dumps(result))
