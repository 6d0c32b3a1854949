"""Breaks found by reviewing issue #17's refactors (helper racereview2): the worker's in-flight state, the
scheduler's shared retry rule, the BrokerUnavailable split, the SQL store's split into dialects and row
codecs. Each a deterministic reproduction with the real engines on a FakeClock over every real store."""

from __future__ import annotations

from typing import Any

import pytest

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus
from chronos_core import FakeClock, Jobs, JobTypes, RunStatus, Trigger, Worker
from chronos_core.notifier import Notifier
from chronos_core.ports import Store
from tests.engine.test_races import T0, Rig, S, StepExecutor, StepPayload, build_rig


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


@pytest.fixture
def rig(store: Store) -> Rig:
    return build_rig(store, StepExecutor())


async def _ran(rig: Rig, run_id: str, owner: str) -> None:
    now = rig.clock.now()
    assert await rig.store.start_run(run_id, owner, now, now + 30 * S)
    assert await rig.store.finish_run(run_id, owner, status=RunStatus.SUCCEEDED, finished_at=now)


async def test_retention_keeps_the_evidence_that_a_running_run_was_replaced(rig: Rig) -> None:
    """Overlap replace: slot B's run replaced the running run of slot A, whose worker then died (its stop
    request reached no one). That B ran is what keeps A from being retried when it is reaped
    (Store.replaced_by_later_slot). Retention by count (a job's history_limit; since 6bb053c every job's,
    CHRONOS_HISTORY_MAX_RUNS) deleted B as soon as a newer run finished (here a manual one), and the
    reaped A came back as a retry of the old slot, after the slot that replaced it."""
    job = await rig.create(schedule="0 1,2 12 * * *", overlap="replace", history_limit=1,
                           retry={"strategy": "immediate", "max_attempts": 3})
    rig.clock.set(T0 + 60 * S)  # 12:01: A
    await rig.scheduler.tick()
    [a] = await rig.history(job)
    assert rig.take() is not None
    # its worker renewed the lease until it died, at about 12:02:30
    assert await rig.store.start_run(a.id, "worker-killed", rig.clock.now(), T0 + 180 * S)
    rig.clock.set(T0 + 120 * S)  # 12:02: B replaces A (the stop request is lost with the worker)
    await rig.scheduler.tick()
    b = next(r for r in await rig.history(job) if r.scheduled_for == T0 + 120 * S)
    assert rig.take() is not None
    rig.clock.set(T0 + 125 * S)
    await _ran(rig, b.id, "worker-2")
    rig.clock.set(T0 + 130 * S)
    manual = await rig.jobs.trigger(job.id)  # a run now, newer than B
    assert rig.take() is not None
    await _ran(rig, manual.id, "worker-2")
    rig.clock.set(T0 + 140 * S)
    await rig.store.prune_runs(rig.clock.now(), None, 1000)
    rig.clock.set(T0 + 191 * S)  # A's lease ran out 11 s ago: reaped
    await rig.scheduler.tick()
    rig.clock.set(T0 + 192 * S)
    await rig.scheduler.tick()
    assert rig.scheduler.stats.reaped == 1
    again = [(r.attempt, r.status) for r in await rig.history(job)
             if r.scheduled_for == a.scheduled_for and r.status in (RunStatus.QUEUED, RunStatus.RUNNING)]
    assert again == [], again  # not retried: a newer slot replaced it
