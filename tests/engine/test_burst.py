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
    # per claim: (runs it left waiting for their jitter while no unclaimed job was due yet, its tick, limit)
    waits: list[tuple[int, int, int]]
    ticks: int = 0
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
                scheduler=Scheduler(store, queue, bus, clock, batch_size=50), claims=[], waits=[])
    real, seen = store.claim_due, set[str]()

    async def watched(now: Any, limit: int, planner: Any) -> Any:
        claim = await real(now, limit, planner)
        new = [r for r in await store.list_runs(limit=1000) if r.id not in seen]
        seen.update(r.id for r in new)
        harness.claims.append([r.job_id for r in new])
        harness.clock.advance(harness.advance)
        # what the scheduler holds on: runs left waiting while no job left unclaimed is due yet
        held = claim.waiting if claim.next_due is None or claim.next_due > harness.clock.now() else 0
        harness.waits.append((held, harness.ticks, limit))
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
    for _ in range(30):  # (a tick may end after a batch that left runs waiting: tick until all claimed)
        await b.scheduler.tick()
    batches = [c for c in b.claims if c]
    assert [len(c) for c in batches] == [5] * 24  # a tenth of a batch while runs wait for their jitter
    assert sorted(i for c in batches for i in c) == sorted(by_id)  # every job claimed once
    in_order = sorted(by_id, key=lambda i: offset(by_id[i]))  # the order their jittered slots come due
    assert [set(c) for c in batches] == [set(in_order[k:k + 5]) for k in range(0, 120, 5)]


async def test_a_tick_ends_its_claiming_after_a_batch_that_left_runs_waiting_for_their_jitter(b: B) -> None:
    jobs = await b.burst(120, jitter=30)
    by_id = {j.id: j for j in jobs}
    b.clock.set(HOUR)
    b.advance = 1.0  # each claim takes a second
    nxt = await b.scheduler.tick()
    held = [w for w, _, _ in b.waits]
    # the tick ended after the first batch that left runs waiting while no unclaimed job was due (the
    # first, unless the clock passed the next offsets during it): the rest is claimed by the next ticks
    assert held[-1] and not any(held[:-1]) and sum(map(len, b.claims)) < 120
    first = b.handed()
    # handed out before the tick ended: the runs whose offset passed during the claims
    assert all(d.run.due_at <= b.clock.now() for d in first)
    assert {d.run.id for d in first} == {r.id for r in await b.store.list_runs(limit=1000)
                                         if r.due_at <= b.clock.now()}
    assert nxt is not None and nxt <= b.clock.now()  # the rest is due at once: the loop ticks again
    handed = [d.run for d in first]
    for _ in range(60):
        b.ticks += 1
        await b.scheduler.tick()
        handed.extend(d.run for d in b.handed())
        assert all(r.due_at <= b.clock.now() for r in handed)  # none before its jittered slot
    for (waiting, tick, limit), (_, next_tick, next_limit), size in zip(
            b.waits, b.waits[1:], map(len, b.claims), strict=False):
        if waiting:  # the tick ended there, and the next claim is a tenth of a batch
            assert next_tick > tick and next_limit == 5
        elif size == limit:  # all due by the claim's end (the clock moved): the tick claimed on, larger
            assert next_tick == tick and next_limit == min(50, 2 * size)
    assert any(w for w, _, _ in b.waits)
    assert sorted(r.job_id for r in handed) == sorted(by_id)  # every slot handed out once


async def test_an_unjittered_burst_is_claimed_in_one_tick_in_growing_batches(b: B) -> None:
    await b.burst(120)
    b.clock.set(HOUR)
    b.advance = 1.0
    await b.scheduler.tick()
    # nothing waits: the tick claims on, from a tenth of a batch (after idle ticks) doubling up to a batch
    assert [len(c) for c in b.claims] == [5, 10, 20, 40, 45]
    assert len(b.handed()) == 120
    await b.burst(0)
    b.clock.set(HOUR + timedelta(hours=1))
    await b.scheduler.tick()  # the next hour's slots: the last claim found 45, so it starts at 50
    assert [len(c) for c in b.claims][5:] == [50, 50, 20]


async def test_a_batch_that_leaves_runs_waiting_makes_the_next_claim_small_again(b: B) -> None:
    jobs = await b.jobs.create_many([{"name": f"plain-{i}", "type": "step", "schedule": "0 * * * *"}
                                     for i in range(60)])
    await b.burst(60, jitter=30)  # (named burst-i: claimed after the plain ones, offset 0)
    b.clock.set(HOUR)
    await b.scheduler.tick()
    await b.scheduler.tick()
    sizes = [len(c) for c in b.claims]
    # 5, 10, 20 plain, then 40 of which 25 plain and 15 jittered: waiting, so the tick ends and the next
    # claim is 5 again
    assert sizes[:5] == [5, 10, 20, 40, 5]
    assert [w > 0 for w, _, _ in b.waits[:5]] == [False, False, False, True, True]
    assert len(jobs) == 60


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


async def test_a_due_job_of_a_later_instant_does_not_wait_behind_jittered_jobs_not_due_yet(b: B) -> None:
    # 120 jobs at 12:59 with jitter 600 s (their runs due 12:59..13:09), claimed before x (13:00, no
    # jitter): the tick must not end (nor the claims shrink) while x, due now, is still unclaimed
    await b.jobs.create_many([{"name": f"j-{i}", "type": "step", "schedule": "59 12 * * *", "jitter": 600,
                               "misfire_grace": 3600} for i in range(120)])
    (x,) = await b.jobs.create_many([{"name": "x", "type": "step", "schedule": "0 13 * * *"}])
    b.clock.set(HOUR)  # 13:00: all due
    await b.scheduler.tick()
    assert any(x.id in c for c in b.claims), [len(c) for c in b.claims]  # claimed in the first tick
    assert x.id in {d.run.job_id for d in b.handed()}


async def test_a_burst_split_over_ticks_keeps_its_jitter_past_the_grace(b: B) -> None:
    # 120 jittered jobs (jitter 600 s, misfire_grace 1 s), each claim takes 0.1 s: the tick ends after each
    # batch that left runs waiting, and the later ticks plan with a later `now`, past slot + grace. The
    # grace counts from each jittered slot, so no slot becomes a catch-up run handed out at once
    jobs = await b.burst(120, jitter=600, misfire_grace=1)
    b.clock.set(HOUR)
    b.advance = 0.1
    for _ in range(40):
        await b.scheduler.tick()
    runs = await b.store.list_runs(limit=1000)
    assert len(runs) == 120
    by_id = {j.id: j for j in jobs}
    assert all(r.trigger.value == "schedule" and r.due_at == r.scheduled_for + offset(by_id[r.job_id])
               for r in runs)
    assert all(d.run.due_at <= b.clock.now() for d in b.handed())  # none before its jittered slot


async def test_a_jittered_slot_claimed_past_the_grace_starts_at_its_jittered_time(b: B) -> None:
    jobs = await b.burst(20, jitter=600)  # misfire_grace 5 s (default), fire_once (default)
    late = {j.id for j in jobs if offset(j) > timedelta(seconds=60)}
    assert late
    b.clock.set(HOUR + timedelta(seconds=6))  # the scheduler gets to the burst 6 s after its slot
    for _ in range(10):
        await b.scheduler.tick()
    early = [d.run for d in b.handed() if d.run.job_id in late]
    assert not early, "runs started before their jittered slot (catch-up without jitter)"
    runs = await b.store.list_runs(limit=100)
    assert {r.job_id for r in runs if r.trigger.value == "schedule"} >= late


async def test_a_batch_of_records_only_claims_on(b: B) -> None:
    # a burst whose slots are all skipped (exclude): no run waits, so the tick claims on (review F4.1)
    await b.burst(120, exclude=[{"cron": "0 13 * * *"}])
    b.clock.set(HOUR)
    await b.scheduler.tick()
    assert sum(map(len, b.claims)) == 120, [len(c) for c in b.claims]  # all claimed in one tick


async def test_a_claim_that_found_nothing_makes_the_next_claim_small_again(b: B) -> None:
    await b.burst(120)
    b.clock.set(HOUR)
    await b.scheduler.tick()  # 5, 10, 20, 40, 45: the next claim would be 50
    b.clock.set(HOUR + timedelta(minutes=30))
    await b.scheduler.tick()  # an idle tick: its claim finds nothing
    b.clock.set(HOUR + timedelta(hours=1))
    await b.scheduler.tick()
    sizes = [len(c) for c in b.claims]
    assert sizes[:6] == [5, 10, 20, 40, 45, 0] and sizes[6] == 5, sizes
