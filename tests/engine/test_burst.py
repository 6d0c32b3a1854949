"""A burst of jobs due at one instant, on the memory store (whose claim holds the event loop), with a fake
clock: the claim order follows the jittered slot, and a tick stops claiming after a batch that left runs
waiting for their jitter, so what came due is started before the next batch is claimed (issue 18 target 2).
The stores whose claim runs off the loop are covered by tests/engine/test_notify.py
(``test_a_burst_of_jittered_jobs_hands_out_due_runs_between_claim_batches``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus, MemoryStore
from chronos_core import FakeClock, Job, Jobs, JobTypes, Scheduler
from chronos_core.planning import jitter_offset
from tests.engine.test_engines import T0, StepPayload

HOUR = T0.replace(hour=13)  # the slot of "0 * * * *" after T0


@dataclass
class B:
    clock: FakeClock
    store: MemoryStore
    queue: MemoryDispatchQueue
    jobs: Jobs
    scheduler: Scheduler
    claims: list[list[str]]  # the job ids of each claim, in claim order
    advance: float = 0.0  # seconds the clock moves during each claim (a large burst takes a while)

    async def burst(self, n: int, **spec: Any) -> list[Job]:
        return await self.jobs.create_many([{"name": f"burst-{i}", "type": "step", "schedule": "0 * * * *",
                                             **spec} for i in range(n)])

    def handed(self) -> list[Any]:
        out = []
        while (d := self.queue.get_nowait()) is not None:
            out.append(d)
        return out


@pytest.fixture
async def b() -> AsyncIterator[B]:
    clock = FakeClock(T0)
    store, queue, bus = MemoryStore(), MemoryDispatchQueue(), MemoryEventBus()
    types = JobTypes()
    types.register("step", StepPayload)
    harness = B(clock=clock, store=store, queue=queue, jobs=Jobs(store, queue, bus, clock, types),
                scheduler=Scheduler(store, queue, bus, clock, batch_size=50), claims=[])
    real, seen = store.claim_due, set[str]()

    async def watched(now: Any, limit: int, planner: Any) -> Any:
        claim = await real(now, limit, planner)
        new = [r for r in await store.list_runs(limit=1000) if r.id not in seen]
        seen.update(r.id for r in new)
        harness.claims.append([r.job_id for r in new])
        harness.clock.advance(harness.advance)
        return claim

    store.claim_due = watched  # type: ignore[method-assign]
    yield harness


def offset(job: Job) -> timedelta:
    assert job.jitter is not None
    return jitter_offset(job.id, HOUR, job.jitter)


async def test_the_memory_store_claims_one_instants_jobs_smallest_jitter_offset_first(b: B) -> None:
    jobs = await b.burst(120, jitter=30)
    by_id = {j.id: j for j in jobs}
    b.clock.set(HOUR)
    for _ in range(5):  # (a tick may end after a batch that left runs waiting: tick until all claimed)
        await b.scheduler.tick()
    batches = [c for c in b.claims if c]
    assert [len(c) for c in batches] == [50, 50, 20]
    assert sorted(i for c in batches for i in c) == sorted(by_id)  # every job claimed once
    in_order = sorted(by_id, key=lambda i: offset(by_id[i]))  # the order their jittered slots come due
    assert [set(c) for c in batches] == [set(in_order[:50]), set(in_order[50:100]), set(in_order[100:])]


async def test_a_tick_ends_its_claiming_after_a_batch_that_left_runs_waiting_for_their_jitter(b: B) -> None:
    jobs = await b.burst(120, jitter=30)
    by_id = {j.id: j for j in jobs}
    b.clock.set(HOUR)
    b.advance = 1.0  # each claim takes a second
    nxt = await b.scheduler.tick()
    assert len(b.claims) == 1  # not three: the other 70 jobs are claimed by the next ticks
    first = b.handed()
    # handed out before the tick ended: the first batch's runs whose offset passed during its claim
    assert first and all(d.run.due_at <= HOUR + timedelta(seconds=1) for d in first)
    assert {d.run.id for d in first} == {r.id for r in await b.store.list_runs(limit=1000)
                                         if r.due_at <= b.clock.now()}
    assert nxt is not None and nxt <= b.clock.now()  # the rest is due at once: the loop ticks again
    handed = [d.run for d in first]
    for _ in range(40):
        await b.scheduler.tick()
        handed.extend(d.run for d in b.handed())
        assert all(r.due_at <= b.clock.now() for r in handed)  # none before its jittered slot
    assert [len(c) for c in b.claims if c] == [50, 50, 20]  # one batch a tick
    assert sorted(r.job_id for r in handed) == sorted(by_id)  # every slot handed out once


async def test_an_unjittered_burst_is_claimed_in_one_tick(b: B) -> None:
    await b.burst(120)
    b.clock.set(HOUR)
    b.advance = 1.0
    await b.scheduler.tick()
    assert len(b.claims) == 3  # nothing waits: the tick claims on
    assert len(b.handed()) == 120


def test_event_times_are_the_isoformat_of_each_time_whatever_its_zone() -> None:
    # _iso remembers the text of UTC times (a burst's runs share their slot); an equal instant in another
    # zone has another text
    from datetime import UTC, datetime, timezone
    from zoneinfo import ZoneInfo

    from chronos_core.events import _iso

    utc = datetime(2030, 1, 1, 13, 0, 0, 250, tzinfo=UTC)
    berlin = utc.astimezone(ZoneInfo("Europe/Berlin"))
    plus2 = utc.astimezone(timezone(timedelta(hours=2)))
    assert berlin == utc == plus2
    for _ in range(2):
        assert [_iso(t) for t in (utc, berlin, plus2, None)] == [
            "2030-01-01T13:00:00.000250+00:00", "2030-01-01T14:00:00.000250+01:00",
            "2030-01-01T15:00:00.000250+02:00", None]
