"""Race review of branch latepath (the worker's late path): attacks on I1-I7. Real engines on a FakeClock
over every real store (the rig of tests/engine/test_races.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chronos_core import RunStatus
from chronos_core.ports import Store
from tests.engine.test_late_path import first_of, hold_summary_reads, queued_slots, queued_slots_of
from tests.engine.test_races import T0, Rig, S, StepExecutor, build_rig


@pytest.fixture
def rig(store: Store) -> Rig:
    return build_rig(store, StepExecutor())


async def test_rr_two_late_fire_once_runs_of_one_job_taken_together_run_once(rig: Rig) -> None:
    """fire_once: one late run for a backlog. A worker that fell behind takes several runs at once
    (concurrency > 1): two late slots of one job reach their check together; neither sees the other's
    start (it is not confirmed yet), the coalesced read says None for both, and both run."""
    job = await rig.create(schedule="*/10 * * * * *", misfire="fire_once", misfire_grace=5,
                           payload={"behaviour": "block"})
    d10, d20 = await queued_slots(rig, job, 10, 20)
    rig.clock.set(T0 + 40 * S)  # both late (30 s and 20 s), nothing of the job started
    handlers = [asyncio.create_task(rig.worker.process(d)) for d in (d10, d20)]
    await rig.executor.wait_started(1)  # one of them runs (and blocks)
    await first_of(*handlers, rig.executor.wait_started(2))  # the other one recorded, or started too
    rig.executor.release.set()
    done = await asyncio.wait_for(asyncio.gather(*handlers), 30)
    statuses = sorted(r.status.value for r in done if r is not None)
    assert statuses == ["missed", "succeeded"], (statuses, rig.executor.started)


async def test_rr_one_waiter_cancelled_does_not_cancel_the_shared_read_of_the_others(rig: Rig) -> None:
    """Two late runs of two jobs share one summary read; the handler of one is cancelled while the read
    is under way: the other still gets its answer and runs, and nothing hangs."""
    a = await rig.create(name="rr-a", schedule="*/10 * * * * *", misfire="fire_once", misfire_grace=5)
    b = await rig.create(name="rr-b", schedule="*/10 * * * * *", misfire="fire_once", misfire_grace=5)
    slots = await queued_slots_of(rig, 10)
    rig.clock.set(T0 + 30 * S)
    gate, reading = hold_summary_reads(rig)
    first = asyncio.create_task(rig.worker.process(slots[(a.id, 10)]))
    second = asyncio.create_task(rig.worker.process(slots[(b.id, 10)]))
    await asyncio.wait_for(reading.wait(), 30)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    gate.set()
    done = await asyncio.wait_for(second, 30)  # (a hang guard only)
    assert done is not None and done.status is RunStatus.SUCCEEDED
    assert rig.executor.started == [slots[(b.id, 10)].run.id]
    assert (await rig.store.get_run(slots[(a.id, 10)].run.id)).status is RunStatus.QUEUED


async def test_rr_a_request_made_during_a_read_is_not_answered_by_it(rig: Rig) -> None:
    """I2: the read answering a request starts after it. A run of the job finishes (on another worker)
    while round 1's read is under way; a late run asking then must see it (round 2), not round 1's
    older answer."""
    a = await rig.create(name="rr-x", schedule="*/10 * * * * *", misfire="fire_once", misfire_grace=5)
    b = await rig.create(name="rr-y", schedule="*/10 * * * * *", misfire="fire_once", misfire_grace=5)
    slots = await queued_slots_of(rig, 10, 20)
    rig.clock.set(T0 + 30 * S)
    gate, reading = asyncio.Event(), asyncio.Event()
    reads: list[list[str]] = []

    async def held(real: Any, ids: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(list(ids))
        if len(reads) == 1:
            result = await real(ids, *args, **kwargs)  # read before the other worker's run ends
            reading.set()
            await gate.wait()
            return result
        return await real(ids, *args, **kwargs)
    rig.store.hooks["job_summaries"] = held
    first = asyncio.create_task(rig.worker.process(slots[(a.id, 10)]))
    await asyncio.wait_for(reading.wait(), 30)
    # another worker runs b's slot-10 run now (late, nothing stood for it): started at 30 >= 20
    from tests.engine.test_late_path import another_worker
    other = another_worker(rig)
    assert (await other.process(slots[(b.id, 10)])).status is RunStatus.SUCCEEDED
    second = asyncio.create_task(rig.worker.process(slots[(b.id, 20)]))
    for _ in range(20):
        await asyncio.sleep(0)
    gate.set()
    done = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert done[0] is not None and done[0].status is RunStatus.SUCCEEDED
    assert done[1] is not None and done[1].status is RunStatus.MISSED, done[1]
    assert len(reads) == 3 and reads[2] == [b.id]  # (reads[1]: the other worker's own check)


async def test_rr_one_late_run_delivered_to_two_workers_where_one_drops_it_and_one_starts_it(
        rig: Rig) -> None:
    """Scale-out redelivery (a rebalance, the relay sending the row again): the same late run reaches two
    workers at once. Worker 1 started a run of the job after the slot (its own start: drop it), worker 2
    knows nothing and the summary shows nothing finished (start it). The record and the start race in the
    store: exactly one applies; the run either ran once or is recorded missed once, counted once."""
    from tests.engine.test_late_path import another_worker, missed_counted
    job = await rig.create(schedule="*/10 * * * * *", misfire="fire_once", misfire_grace=5,
                           payload={"behaviour": "block"})
    d10, d20 = await queued_slots(rig, job, 10, 20)
    rig.clock.set(T0 + 27 * S)
    first = asyncio.create_task(rig.worker.process(d10))  # starts at 27 here, blocks
    await rig.executor.wait_started(1)
    assert rig.executor.started == [d10.run.id]
    other = another_worker(rig)
    here, there = asyncio.create_task(rig.worker.process(d20)), asyncio.create_task(other.process(d20))
    await asyncio.wait([here])  # here: recorded missed, or found it started there (never runs it)
    await first_of(there, rig.executor.wait_started(2))  # there: found it recorded, or started it
    rig.executor.release.set()
    a, b, _ = await asyncio.wait_for(asyncio.gather(here, there, first), 30)
    outcomes = [r.status for r in (a, b) if r is not None]
    assert len(outcomes) == 1, (a, b)
    stored = await rig.store.get_run(d20.run.id)
    assert stored.status is outcomes[0]
    assert await missed_counted(rig) == (1 if outcomes[0] is RunStatus.MISSED else 0)
    assert rig.executor.started.count(d20.run.id) == (0 if outcomes[0] is RunStatus.MISSED else 1)
