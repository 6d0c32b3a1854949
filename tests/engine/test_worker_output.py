"""The worker's side of live output and of its console: numbered lines, the output so far stored while a
run goes, an INFO line per finished run, shutdown naming the runs it waits for, and a job deleted mid-run
said as such. In-memory adapters, a fake clock; the worker's flush is called by hand."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus, MemoryStore
from chronos_core import (
    EventType,
    ExecutionResult,
    Executor,
    FakeClock,
    Job,
    Jobs,
    JobTypes,
    Payload,
    Run,
    RunStatus,
    Worker,
)
from chronos_core.ports import Dispatch, LogSink

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


class TalkPayload(Payload):
    lines: list[str] = []


class TalkExecutor(Executor):
    """Logs the payload's lines (each call may hold several, with newlines), then waits for ``go``."""

    type_name: ClassVar[str] = "talk"

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.talked = asyncio.Event()

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        for text in job.payload.get("lines", []):
            await log(text)
        self.talked.set()
        await self.go.wait()
        return ExecutionResult(ok=True, output="the end")


@pytest.fixture
async def rig() -> Any:
    clock = FakeClock(T0)
    store, queue, bus = MemoryStore(), MemoryDispatchQueue(), MemoryEventBus()
    types = JobTypes()
    types.register("talk", TalkPayload)
    executor = TalkExecutor()
    jobs = Jobs(store, queue, bus, clock, types)
    worker = Worker(store, queue, bus, clock, {"talk": executor}, job_types=types, owner="w1")

    class Rig:
        pass

    r = Rig()
    r.__dict__.update(clock=clock, store=store, queue=queue, bus=bus, jobs=jobs, worker=worker,
                      executor=executor)
    return r


async def _start(rig: Any, lines: list[str]) -> tuple[Job, Run, asyncio.Task[Run | None]]:
    job = await rig.jobs.create({"name": "talker", "type": "talk", "payload": {"lines": lines}})
    run = await rig.jobs.trigger(job.id)
    dispatch: Dispatch = rig.queue.get_nowait()
    task = asyncio.create_task(rig.worker.process(dispatch))
    await asyncio.wait_for(rig.executor.talked.wait(), 10)
    return job, run, task


async def test_lines_are_numbered_and_the_output_so_far_is_stored(rig: Any) -> None:
    events = rig.bus.subscribe(types={EventType.RUN_LOG})
    _, run, task = await _start(rig, ["one", "two\nthree"])
    assert (await rig.store.get_run(run.id)).output == ""  # nothing stored before the flush
    await rig.worker.flush_output()
    stored = await rig.store.get_run(run.id)
    assert (stored.status, stored.output, stored.output_lines) == (RunStatus.RUNNING, "one\ntwo\nthree", 3)
    logged = [await anext(events) for _ in range(3)]
    assert [(e.data["line"], e.data["seq"]) for e in logged] == [("one", 1), ("two", 2), ("three", 3)]
    rig.executor.go.set()
    done = await asyncio.wait_for(task, 10)
    assert done is not None and done.output == "one\ntwo\nthree\nthe end" and done.output_lines == 4
    assert (await rig.store.get_run(run.id)).output_lines == 4
    await events.aclose()


async def test_a_flush_after_the_end_writes_nothing(rig: Any) -> None:
    _, run, task = await _start(rig, ["a"])
    rig.executor.go.set()
    await asyncio.wait_for(task, 10)
    await rig.worker.flush_output()  # nothing is executing: nothing to write
    assert (await rig.store.get_run(run.id)).output == "a\nthe end"


async def test_a_line_per_finished_run_at_info(rig: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chronos.worker")
    _, run, task = await _start(rig, [])
    rig.executor.go.set()
    await asyncio.wait_for(task, 10)
    lines = [r.getMessage() for r in caplog.records if r.name == "chronos.worker"]
    assert lines == [f"job talker: run {run.id} succeeded in 0s"]


async def test_shutdown_names_the_runs_it_waits_for(rig: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chronos.worker")
    job = await rig.jobs.create({"name": "slow one", "type": "talk", "payload": {"lines": []}})
    await rig.worker.start()
    run = await rig.jobs.trigger(job.id)
    await asyncio.wait_for(rig.executor.talked.wait(), 10)
    stop = asyncio.create_task(rig.worker.stop(grace=30))
    await asyncio.sleep(0.05)
    rig.executor.go.set()
    await asyncio.wait_for(stop, 10)
    messages = [r.getMessage() for r in caplog.records if r.name == "chronos.worker"]
    assert f"shutting down: waiting up to 30s for 1 running run(s): slow one (run {run.id})" in messages
    assert (await rig.store.get_run(run.id)).status is RunStatus.SUCCEEDED


async def test_a_job_deleted_mid_run_is_said_so(rig: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chronos.worker")
    job, run, task = await _start(rig, [])
    await rig.jobs.delete(job.id)
    rig.executor.go.set()
    assert await asyncio.wait_for(task, 10) is None
    messages = [r.getMessage() for r in caplog.records if r.name == "chronos.worker"]
    assert any(f"run {run.id} of job talker: the job was deleted while the run was going" in m
               for m in messages), messages
    assert not any("lease was taken over" in m for m in messages)
