"""The in-memory adapters keep what accumulates (finished runs, the bus's replay window, jobs' moving
``next_run_at``) out of the cyclic garbage collector's heap, so a long history does not make every full
collection longer. These count the objects the collector tracks, not the time it takes."""

from __future__ import annotations

import gc
from datetime import timedelta

from chronos_adapters.memory import MemoryEventBus, MemoryStore
from chronos_core.models import Event, EventType, Job, Run, RunStatus
from chronos_core.planning import plan_due_job
from tests.contracts.test_store_contract import T0, S, make_job, make_run


def _tracked(cls: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is cls)


async def test_finished_runs_are_not_tracked_by_the_garbage_collector() -> None:
    store = MemoryStore()
    job = make_job()
    await store.add_jobs([job])
    before = _tracked(Run)
    for i in range(500):
        run = make_run(job, T0 + i * S)
        await store.add_run(run, dispatched=True)
        assert await store.start_run(run.id, "w", T0, T0 + 30 * S)
        assert await store.finish_run(run.id, "w", status=RunStatus.SUCCEEDED, finished_at=T0 + S)
    assert _tracked(Run) - before < 10
    # ... and they read back whole
    history = await store.list_runs(job.id, limit=1000)
    assert len(history) == 500 and all(r.status is RunStatus.SUCCEEDED for r in history)
    assert history[0].scheduled_for == T0 + 499 * S and history[0].finished_at == T0 + S


async def test_claims_do_not_accumulate_job_copies() -> None:
    store = MemoryStore()
    jobs = [make_job(f"j{i}", schedule="@every 1s", next_run_at=T0) for i in range(200)]
    await store.add_jobs(jobs)
    for second in range(5):
        claim = await store.claim_due(T0 + second * S, 1000, lambda j, a, n: plan_due_job(j, a, n))
        assert len(claim.dispatch) == 200
        del claim
    assert _tracked(Job) - 200 < 20
    stored = await store.get_job(jobs[0].id)
    assert stored.next_run_at == T0 + 5 * S  # the job still reads as it stands


async def test_the_replay_window_keeps_plain_values() -> None:
    bus = MemoryEventBus(retain=1000)
    before = _tracked(Event)
    await bus.publish([Event(type=EventType.RUN_QUEUED, time=T0 + timedelta(milliseconds=i), run_id=f"r{i}",
                             data={"status": "queued", "attempt": 1}) for i in range(1000)])
    assert _tracked(Event) - before < 10
    async with bus.subscribe(after="990") as sub:
        replay = list(sub.replay)
    assert [e.run_id for e in replay] == [f"r{i}" for i in range(990, 1000)]
    assert replay[0].type is EventType.RUN_QUEUED and replay[0].time == T0 + timedelta(milliseconds=990)
    assert replay[0].id == "991" and replay[0].data == {"status": "queued", "attempt": 1}
