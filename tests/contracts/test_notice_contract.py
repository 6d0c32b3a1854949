"""The notices part of the Store contract (the outbox of notifications, chains and pauses), on every
store: written with the outcome by finish_run, unique by key, claimed by one notifier at a time under a
lease, settled only by their holder, pruned after their retention; the hook fields round-trip."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from chronos_core.hooks import NOTICE_RETENTION, Notice, NoticeKind, NoticeStatus, OutcomeHooks
from chronos_core.hookspec import ChainRule, Exclusion, NotifyRule
from chronos_core.ids import new_id
from chronos_core.models import RunStatus
from chronos_core.planning import plan_retry
from chronos_core.ports import Store
from tests.contracts.test_store_contract import T0, S, make_job, running_run

RULE = NotifyRule.model_validate({"on": ["failed", "succeeded", "recovered"],
                                  "webhook": {"url": "https://hooks.example/x", "secret": "k"}})


def notice(job_id: str, key: str, **kw: object) -> Notice:
    base = dict(id=new_id(), key=key, kind=NoticeKind.NOTIFY, event="failed", job_id=job_id, run_id=None,
                target={"webhook": {"url": "https://x.example"}}, data={"event": "failed"}, created_at=T0,
                due_at=T0)
    return Notice(**{**base, **kw})  # type: ignore[arg-type]


async def test_hook_fields_round_trip(store: Store) -> None:
    job = dataclasses.replace(
        make_job("hooked"), notify=[RULE], then=[ChainRule(job="next")], pause_after_failures=3,
        alert_after=90.0, jitter=12.5, paused_reason="why",
        exclude=[Exclusion.model_validate({"from": "2026-12-24T00:00:00", "to": "2026-12-27T00:00:00"}),
                 Exclusion(cron="* * * * sat,sun")])
    await store.add_jobs([job])
    got = await store.get_job(job.id)
    assert (got.notify, got.then, got.pause_after_failures, got.alert_after, got.jitter, got.exclude,
            got.paused_reason) == (job.notify, job.then, 3, 90.0, 12.5, job.exclude, "why")
    assert await store.list_jobs() == [got]


async def test_finish_writes_notices_for_final_outcomes_only(store: Store) -> None:
    job = dataclasses.replace(make_job("j"), notify=[RULE], retry=make_job().retry.model_copy(
        update={"max_attempts": 2}))
    await store.add_jobs([job])
    hooks = OutcomeHooks.of(job)
    first = await running_run(store, job, T0)
    retry = plan_retry(job, first, T0 + S)
    assert retry is not None
    assert await store.finish_run(first.id, "w1", status=RunStatus.FAILED, finished_at=T0 + S, retry=retry,
                                  error="boom", hooks=hooks)
    assert await store.list_notices(run_id=first.id) == []  # a retry follows: not final
    assert await store.start_run(retry.id, "w1", T0 + 2 * S, T0 + 30 * S)
    assert await store.finish_run(retry.id, "w1", status=RunStatus.FAILED, finished_at=T0 + 3 * S,
                                  error="boom again", output="line\n", hooks=hooks)
    (n,) = await store.list_notices(run_id=retry.id)
    assert (n.event, n.kind, n.status, n.data["run"]["attempt"], n.data["run"]["error"]) == (
        "failed", NoticeKind.NOTIFY, NoticeStatus.PENDING, 2, "boom again")
    summary = (await store.job_summaries([job.id]))[job.id]
    assert (summary.consecutive_failures, summary.consecutive_failed_slots) == (2, 1)
    ok = await running_run(store, job, T0 + 10 * S)
    assert await store.finish_run(ok.id, "w1", status=RunStatus.SUCCEEDED, finished_at=T0 + 11 * S,
                                  hooks=hooks)
    assert sorted(x.event for x in await store.list_notices(run_id=ok.id)) == ["recovered", "succeeded"]
    assert (await store.job_summaries([job.id]))[job.id].consecutive_failed_slots == 0


async def test_keys_are_unique_and_unknown_jobs_dropped(store: Store) -> None:
    job = make_job("j")
    await store.add_jobs([job])
    assert await store.add_notices([notice(job.id, "k1"), notice(job.id, "k1"), notice("nope", "k2")]) == 1
    assert await store.add_notices([notice(job.id, "k1")]) == 0
    assert [n.key for n in await store.list_notices(job_id=job.id)] == ["k1"]


async def test_one_holder_at_a_time_and_only_it_settles(store: Store) -> None:
    job = make_job("j")
    await store.add_jobs([job])
    await store.add_notices([notice(job.id, f"k{i}", due_at=T0 + i * S) for i in range(4)])
    a, b = await asyncio.gather(store.claim_notices(T0 + 10 * S, 3, "a", T0 + 60 * S),
                                store.claim_notices(T0 + 10 * S, 3, "b", T0 + 60 * S))
    assert sorted(n.key for n in a + b) == ["k0", "k1", "k2", "k3"]  # each once
    held = (a or b)[0]
    other = "b" if held in a else "a"
    assert not await store.settle_notice(held.id, other, status=NoticeStatus.DELIVERED, now=T0 + 11 * S)
    # pending again, due later, with the attempt recorded
    assert await store.settle_notice(held.id, held.owner or "", status=NoticeStatus.PENDING, now=T0 + 11 * S,
                                     due_at=T0 + 20 * S, error="HTTP 503", code=503)
    assert await store.claim_notices(T0 + 15 * S, 10, "c", T0 + 60 * S) == []  # the others are held
    (again,) = await store.claim_notices(T0 + 20 * S, 10, "c", T0 + 90 * S)
    assert (again.id, again.attempts, again.last_code, again.tries[0]["code"]) == (held.id, 1, 503, 503)
    # an expired lease lets another notifier take it
    assert [n.id for n in await store.claim_notices(T0 + 91 * S, 10, "d", T0 + 200 * S)
            if n.id == held.id] == [held.id]
    assert not await store.settle_notice(held.id, "c", status=NoticeStatus.DELIVERED, now=T0 + 92 * S)
    assert await store.settle_notice(held.id, "d", status=NoticeStatus.DELIVERED, now=T0 + 92 * S,
                                     code=200, result="HTTP 200")
    (done,) = [n for n in await store.list_notices(job_id=job.id) if n.id == held.id]
    assert (done.status, done.attempts, done.result, done.finished_at) == (
        NoticeStatus.DELIVERED, 2, "HTTP 200", T0 + 92 * S)
    assert [t["ok"] for t in done.tries] == [False, True]
    assert not await store.settle_notice(held.id, "d", status=NoticeStatus.FAILED, now=T0 + 93 * S)


async def test_settled_notices_are_pruned_after_their_retention_pending_ones_kept(store: Store) -> None:
    job = make_job("j")
    await store.add_jobs([job])
    await store.add_notices([notice(job.id, "old"), notice(job.id, "waiting")])
    (first,) = [n for n in await store.claim_notices(T0, 1, "a", T0 + 60 * S)]
    assert await store.settle_notice(first.id, "a", status=NoticeStatus.DELIVERED, now=T0)
    await store.prune_runs(T0 + NOTICE_RETENTION - S, None, 100)
    assert len(await store.list_notices(job_id=job.id)) == 2
    await store.prune_runs(T0 + NOTICE_RETENTION + timedelta(minutes=1), None, 100)
    assert [n.status for n in await store.list_notices(job_id=job.id)] == [NoticeStatus.PENDING]
    await store.delete_job(job.id)  # a job's notices go with it
    assert await store.list_notices(job_id=job.id) == []
