"""Breaks found by reviewing issue #17's refactors (helper racereview2): the worker's in-flight state, the
scheduler's shared retry rule, the BrokerUnavailable split, the SQL store's split into dialects and row
codecs. Each a deterministic reproduction with the real engines on a FakeClock over every real store."""

from __future__ import annotations

from typing import Any

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus
from chronos_core import FakeClock, Jobs, JobTypes, RunStatus, Trigger, Worker
from chronos_core.notifier import Notifier
from chronos_core.ports import Store
from tests.engine.test_races import T0, StepExecutor, StepPayload


def _engines(store: Store) -> tuple[FakeClock, MemoryDispatchQueue, Jobs, Worker, Notifier]:
    clock, queue, bus = FakeClock(T0), MemoryDispatchQueue(), MemoryEventBus()
    types = JobTypes()
    types.register("step", StepPayload)
    jobs = Jobs(store, queue, bus, clock, types)
    worker = Worker(store, queue, bus, clock, {"step": StepExecutor()}, job_types=types, lease=30)
    notifier = Notifier(store, queue, bus, clock, {}, lease=60)
    return clock, queue, jobs, worker, notifier


async def _run_now(jobs: Jobs, queue: MemoryDispatchQueue, worker: Worker, job_id: str) -> None:
    await jobs.trigger(job_id)
    d = queue.get_nowait()
    assert d is not None and (await worker.process(d)) is not None


async def test_a_chain_changed_by_an_update_is_the_chain_that_fires(store: Store) -> None:
    """``Jobs.update`` writes only the changed fields (``Store.change_job``). The SQL store kept the
    fields whose column has their name: ``then`` (column ``chain``) was dropped, so the update answered
    with the old chain and the old chain went on firing - a removed chain still started its job."""
    clock, queue, jobs, worker, notifier = _engines(store)
    old_child = await jobs.create({"name": "old-child", "type": "step"})
    new_child = await jobs.create({"name": "new-child", "type": "step"})
    parent = await jobs.create({"name": "parent", "type": "step", "then": [{"job": "old-child"}]})
    spec: dict[str, Any] = {"name": "parent", "type": "step", "then": [{"job": "new-child"}]}
    updated = await jobs.update(parent.id, spec)
    assert [r.job for r in updated.then] == ["new-child"]
    assert [r.job for r in (await jobs.get(parent.id)).then] == ["new-child"]
    await _run_now(jobs, queue, worker, parent.id)
    await notifier.tick()
    while (d := queue.get_nowait()) is not None:  # the chained run
        await worker.process(d)
    assert [(r.trigger, r.status) for r in await jobs.history(new_child.id)] == [
        (Trigger.CHAIN, RunStatus.SUCCEEDED)]
    assert await jobs.history(old_child.id) == []

    # and a chain taken away fires nothing
    updated = await jobs.update(parent.id, {"name": "parent", "type": "step"})
    assert updated.then == [] and (await jobs.get(parent.id)).then == []
    clock.advance(10)
    await _run_now(jobs, queue, worker, parent.id)
    clock.advance(120)
    await notifier.tick()
    assert queue.get_nowait() is None
    assert len(await jobs.history(new_child.id)) == 1
    assert [r.status for r in await jobs.history(parent.id)] == [RunStatus.SUCCEEDED] * 2
