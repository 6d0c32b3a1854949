"""``Events.resume`` (``chronos_core.streams``): a stream resumed from the bus while it retains the client's
last event id, else started from the runs' current state in history; on the in-memory adapters."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from chronos_adapters.memory import MemoryEventBus, MemoryStore
from chronos_core.clock import FakeClock
from chronos_core.errors import InvalidArgument, RunNotFound
from chronos_core.events import run_event
from chronos_core.ids import new_id
from chronos_core.models import (
    Event,
    EventType,
    Job,
    JobStatus,
    MisfirePolicy,
    OverlapPolicy,
    Run,
    RunStatus,
    Trigger,
    new_run,
)
from chronos_core.operations import Events
from chronos_core.retry import RetryPolicy

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _job() -> Job:
    return Job(id=new_id(), name="j", type="shell", payload={}, schedule=None, timezone="UTC",
               retry=RetryPolicy(), timeout=None, overlap=OverlapPolicy.ALLOW,
               misfire=MisfirePolicy.FIRE_ONCE,
               misfire_grace=5, status=JobStatus.ACTIVE, created_at=T0, updated_at=T0)


async def _rig(retain: int = 10_000) -> tuple[Events, MemoryStore, MemoryEventBus, Job, list[Run]]:
    store, bus = MemoryStore(), MemoryEventBus(retain=retain)
    job = _job()
    await store.add_jobs([job])
    runs = []
    for i, status in enumerate((RunStatus.SUCCEEDED, RunStatus.FAILED)):
        run = new_run(job.id, T0 + timedelta(seconds=i), Trigger.MANUAL, T0)
        await store.add_run(run, dispatched=True)
        assert await store.start_run(run.id, "w", T0, T0 + timedelta(minutes=5))
        assert await store.finish_run(run.id, "w", status=status, finished_at=T0 + timedelta(seconds=i),
                                      output=f"line of {i}", output_lines=1)
        runs.append(await store.get_run(run.id))
    return Events(bus, store, FakeClock(T0)), store, bus, job, runs


async def _next(sub: object) -> Event:
    return await asyncio.wait_for(anext(aiter(sub)), 2)  # type: ignore[call-overload]


async def test_an_id_the_bus_retains_resumes_from_the_bus_without_a_replay() -> None:
    events, _, bus, job, runs = await _rig()
    async with bus.subscribe(job_id=job.id) as probe:
        await bus.publish([run_event(runs[0], T0)])
        seen = await _next(probe)
    assert seen.id is not None
    await bus.publish([run_event(runs[1], T0)])
    resumed = await events.resume(job_id=job.id, after=seen.id)
    async with resumed.subscription as sub:
        assert resumed.replayed == [] and resumed.snapshot == []
        nxt = await _next(sub)
        assert nxt.run_id == runs[1].id and nxt.type is EventType.RUN_FAILED


async def test_an_id_the_bus_no_longer_retains_starts_from_the_runs_in_history_oldest_first() -> None:
    events, _, bus, job, runs = await _rig(retain=2)
    async with bus.subscribe(job_id=job.id) as probe:
        await bus.publish([run_event(runs[0], T0)])
        old = await _next(probe)
    await bus.publish([run_event(runs[1], T0) for _ in range(3)])  # the window moves past ``old``
    assert bus.retains(old.id or "") is False
    resumed = await events.resume(job_id=job.id, after=old.id)
    async with resumed.subscription:
        assert [e.run_id for e in resumed.replayed] == [runs[0].id, runs[1].id]
        assert [e.type for e in resumed.replayed] == [EventType.RUN_SUCCEEDED, EventType.RUN_FAILED]
        assert [e.data["output"] for e in resumed.replayed] == ["line of 0", "line of 1"]
        assert all(e.id is None and e.data["output_lines"] == 1 for e in resumed.replayed)
    filtered = await events.resume(job_id=job.id, after=old.id, types="run.failed")
    async with filtered.subscription:
        assert [e.run_id for e in filtered.replayed] == [runs[1].id]


async def test_a_run_stream_starts_with_its_run_and_a_fresh_job_stream_starts_live() -> None:
    events, _, _, job, runs = await _rig()
    resumed = await events.resume(run_id=runs[1].id)
    async with resumed.subscription:
        assert resumed.snapshot == [runs[1]]
        assert [(e.run_id, e.type) for e in resumed.replayed] == [(runs[1].id, EventType.RUN_FAILED)]
    fresh = await events.resume(job_id=job.id)
    async with fresh.subscription:
        assert fresh.replayed == [] and fresh.snapshot == []


async def test_a_run_stream_of_no_such_run_and_an_unknown_type_are_refused() -> None:
    events, *_ = await _rig()
    with pytest.raises(RunNotFound):
        await events.resume(run_id=new_id())
    with pytest.raises(InvalidArgument):
        await events.resume(types="run.nonsense")
