"""The ``Store`` contract for what operators read across jobs: the job summaries written with each outcome,
runs listed across jobs with filters, and the output so far of running runs. Memory, SQLite, MariaDB."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from chronos_core.hookspec import ChainRule, Exclusion, NotifyRule
from chronos_core.ids import new_id
from chronos_core.models import JobStatus, JobSummary, MisfirePolicy, OverlapPolicy, RunStatus, Trigger
from chronos_core.ports import Store
from chronos_core.retry import RetryPolicy, RetryStrategy

from .conftest import assert_no_connection_checked_out
from .test_store_contract import T0, S, make_job, make_run, running_run


async def _finish(store: Store, job, slot, status: RunStatus, *, took: float = 1.0) -> str:  # type: ignore[no-untyped-def]
    run = await running_run(store, job, slot)
    assert await store.finish_run(run.id, "w1", status=status, finished_at=slot + took * S)
    return run.id


async def test_a_new_job_has_an_empty_summary(store: Store) -> None:
    job = make_job("a")
    await store.add_jobs([job])
    assert await store.job_summaries([job.id, new_id()]) == {job.id: JobSummary()}
    assert await store.job_summaries([]) == {}


async def test_finish_run_folds_each_outcome_into_the_summary(store: Store) -> None:
    job, other = make_job("a"), make_job("b")
    await store.add_jobs([job, other])
    ok = await _finish(store, job, T0, RunStatus.SUCCEEDED, took=2.5)
    summary = (await store.job_summaries([job.id]))[job.id]
    assert summary == JobSummary(last_run_id=ok, last_run_status=RunStatus.SUCCEEDED,
                                 last_run_scheduled_for=T0, last_run_started_at=T0,
                                 last_run_finished_at=T0 + 2.5 * S, last_success_at=T0 + 2.5 * S,
                                 consecutive_failures=0)
    await _finish(store, job, T0 + 10 * S, RunStatus.FAILED)
    bad = await _finish(store, job, T0 + 20 * S, RunStatus.TIMED_OUT)
    summary = (await store.job_summaries([job.id]))[job.id]
    assert (summary.last_run_id, summary.last_run_status) == (bad, RunStatus.TIMED_OUT)
    assert summary.consecutive_failures == 2
    assert summary.last_success_at == T0 + 2.5 * S and summary.last_failure_at == T0 + 21 * S
    # a cancelled attempt is the last run, but neither a failure nor a success
    await _finish(store, job, T0 + 30 * S, RunStatus.CANCELLED)
    summary = (await store.job_summaries([job.id]))[job.id]
    assert summary.last_run_status is RunStatus.CANCELLED and summary.consecutive_failures == 2
    await _finish(store, job, T0 + 40 * S, RunStatus.SUCCEEDED)
    summary = (await store.job_summaries([job.id]))[job.id]
    assert summary.consecutive_failures == 0 and summary.last_failure_at == T0 + 21 * S
    # the other job is untouched, and a refused (stale) finish changes nothing
    assert (await store.job_summaries([other.id]))[other.id] == JobSummary()
    before = await store.job_summaries([job.id])
    assert not await store.finish_run(bad, "w1", status=RunStatus.SUCCEEDED, finished_at=T0 + 99 * S)
    assert await store.job_summaries([job.id]) == before
    assert_no_connection_checked_out(store)


async def test_summaries_of_finishes_that_arrive_together(store: Store) -> None:
    """Finishes of one job recorded in one step (a SQL store's group commit) fold in finishing order."""
    job = make_job("a")
    await store.add_jobs([job])
    runs = [await running_run(store, job, T0 + i * S) for i in range(4)]
    outcomes = [RunStatus.FAILED, RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.FAILED]
    await asyncio.gather(*(store.finish_run(r.id, "w1", status=st, finished_at=T0 + (10 + i) * S)
                           for i, (r, st) in enumerate(zip(runs, outcomes, strict=True))))
    summary = (await store.job_summaries([job.id]))[job.id]
    assert summary.last_run_id == runs[3].id and summary.consecutive_failures == 2
    assert summary.last_success_at == T0 + 11 * S and summary.last_failure_at == T0 + 13 * S


async def test_the_reaper_and_a_finish_with_a_retry_count_too(store: Store) -> None:
    job = make_job("a")
    await store.add_jobs([job])
    run = await running_run(store, job, T0)
    retry = make_run(job, T0, attempt=2, trigger=Trigger.RETRY, due_at=T0 + 5 * S)
    assert await store.finish_run(run.id, "w1", status=RunStatus.FAILED, finished_at=T0 + S, retry=retry)
    summary = (await store.job_summaries([job.id]))[job.id]
    assert summary.last_run_id == run.id and summary.consecutive_failures == 1


async def test_list_jobs_by_the_status_of_their_last_run(store: Store) -> None:
    a, b, c = make_job("a"), make_job("b"), make_job("c")
    await store.add_jobs([a, b, c])
    await _finish(store, a, T0, RunStatus.FAILED)
    await _finish(store, b, T0, RunStatus.SUCCEEDED)
    await _finish(store, c, T0, RunStatus.SUCCEEDED)
    await _finish(store, c, T0 + S, RunStatus.TIMED_OUT)
    failing = {RunStatus.FAILED, RunStatus.TIMED_OUT}
    assert [j.name for j in await store.list_jobs(last_status=failing)] == sorted(
        ["a", "c"], key=lambda n: {"a": a.id, "c": c.id}[n])
    assert [j.name for j in await store.list_jobs(last_status={RunStatus.SUCCEEDED})] == ["b"]
    first = await store.list_jobs(last_status=failing, limit=1)
    assert len(first) == 1
    rest = await store.list_jobs(last_status=failing, after=first[0].id)
    assert [j.id for j in first + rest] == sorted([a.id, c.id])


async def test_list_jobs_with_summaries_is_the_list_with_each_jobs_summary(store: Store) -> None:
    """The listing's one read: the page ``list_jobs`` gives (filters, order, keyset pages) with each job's
    summary as ``job_summaries`` gives it - every field of both, as written (a job that never ran to an
    end has an empty summary), decoded like any other read."""
    hooked = dataclasses.replace(
        make_job("b-hooked", type="http"), payload={"url": "https://x", "n": [1, 2.5, None], "ü": "☃"},
        description="d" * 300, timeout=12.5, overlap=OverlapPolicy.FORBID, misfire=MisfirePolicy.FIRE_ALL,
        misfire_grace=0.25, start_at=T0 + timedelta(microseconds=123456), end_at=T0 + timedelta(days=3),
        next_run_at=T0 + timedelta(microseconds=999999), history_limit=7, pause_after_failures=3,
        alert_after=90.0, jitter=12.5, paused_reason="why", then=[ChainRule(job="next")],
        notify=[NotifyRule.model_validate({"on": ["failed"], "webhook": {"url": "https://hooks.example/x"}})],
        exclude=[Exclusion(cron="* * * * sat,sun")],
        retry=RetryPolicy(strategy=RetryStrategy.LINEAR, max_attempts=4, delay=2, max_delay=60, jitter=0.5))
    jobs = [make_job("a-fails"), hooked, make_job("c-paused", status=JobStatus.PAUSED),
            make_job("d-never", next_run_at=None, schedule=None), make_job("e-ok")]
    await store.add_jobs(jobs)
    await _finish(store, jobs[0], T0, RunStatus.FAILED)
    await _finish(store, hooked, T0, RunStatus.SUCCEEDED)
    await _finish(store, hooked, T0 + S, RunStatus.TIMED_OUT, took=2.5)
    await _finish(store, jobs[4], T0, RunStatus.SUCCEEDED)
    await _finish(store, jobs[2], T0, RunStatus.CANCELLED)
    ids = sorted(j.id for j in jobs)
    failing = {RunStatus.FAILED, RunStatus.TIMED_OUT}
    for kw in [{}, {"type": "http"}, {"status": JobStatus.PAUSED}, {"name": "b-"}, {"name": "x"},
               {"last_status": failing}, {"last_status": {RunStatus.SUCCEEDED}}, {"last_status": set()},
               {"limit": 2}, {"after": ids[1]}, {"after": ids[1], "limit": 2, "last_status": failing},
               {"status": JobStatus.ACTIVE, "type": "shell", "name": "a"}, {"limit": 0}]:
        listed = await store.list_jobs(**kw)  # type: ignore[arg-type]
        summaries = await store.job_summaries([j.id for j in listed])
        got = await store.list_jobs_with_summaries(**kw)  # type: ignore[arg-type]
        assert got == [(j, summaries[j.id]) for j in listed], kw
    pages, after = [], None
    while page := await store.list_jobs_with_summaries(after=after, limit=2):
        pages.append(page)
        after = page[-1][0].id
    assert [len(p) for p in pages] == [2, 2, 1]
    by_id = {job.id: (job, summary) for p in pages for job, summary in p}
    assert [*by_id] == ids
    assert by_id[hooked.id][0] == hooked and by_id[hooked.id][0].next_run_at.tzinfo is not None  # type: ignore[union-attr]
    summary = by_id[hooked.id][1]
    assert (summary.last_run_status, summary.consecutive_failures) == (RunStatus.TIMED_OUT, 1)
    assert summary.last_run_finished_at == T0 + 3.5 * S and summary.last_success_at == T0 + S
    assert summary.last_run_finished_at.utcoffset() == timedelta(0)  # type: ignore[union-attr]
    assert by_id[jobs[2].id][1].last_run_status is RunStatus.CANCELLED
    assert by_id[jobs[3].id] == (jobs[3], JobSummary())


async def test_deleting_a_job_deletes_its_summary(store: Store) -> None:
    job = make_job("a")
    await store.add_jobs([job])
    await _finish(store, job, T0, RunStatus.FAILED)
    await store.delete_job(job.id)
    assert await store.job_summaries([job.id]) == {}
    again = make_job("a")
    await store.add_jobs([again])
    assert await store.list_jobs(last_status={RunStatus.FAILED}) == []


# ---------------------------------------------------------------------------------- runs across jobs


async def test_list_runs_across_jobs_with_filters(store: Store) -> None:
    a, b = make_job("a"), make_job("b")
    await store.add_jobs([a, b])
    made = [
        make_run(a, T0, status=RunStatus.SUCCEEDED),
        make_run(b, T0 + S, status=RunStatus.FAILED),
        make_run(a, T0 + 2 * S, status=RunStatus.MISSED),
        make_run(b, T0 + 3 * S, status=RunStatus.TIMED_OUT, trigger=Trigger.MANUAL),
        make_run(a, T0 + 4 * S, status=RunStatus.FAILED, trigger=Trigger.MANUAL),
        make_run(b, T0 + 5 * S),
    ]
    for run in made:
        await store.add_run(run, dispatched=True)
    newest_first = [r.id for r in reversed(made)]

    async def ids(**filters) -> list[str]:  # type: ignore[no-untyped-def]
        return [r.id for r in await store.list_runs(**filters)]

    assert await ids() == newest_first
    failing = {RunStatus.FAILED, RunStatus.TIMED_OUT}
    assert await ids(status=failing) == [made[4].id, made[3].id, made[1].id]
    assert await ids(status=failing, limit=2) == [made[4].id, made[3].id]
    assert await ids(status=failing, before=made[3].id) == [made[1].id]
    assert await ids(status=failing, job_id=b.id) == [made[3].id, made[1].id]
    assert await ids(trigger={Trigger.MANUAL}) == [made[4].id, made[3].id]
    assert await ids(trigger={Trigger.MANUAL}, status={RunStatus.TIMED_OUT}) == [made[3].id]
    assert await ids(since=T0 + 2 * S) == newest_first[:4]
    assert await ids(until=T0 + 2 * S) == newest_first[3:]
    assert await ids(since=T0 + S, until=T0 + 3 * S, job_id=b.id) == [made[3].id, made[1].id]
    assert await ids(since=T0 + 10 * S) == []
    assert await ids(limit=0) == []
    pages, before = [], None
    while page := await store.list_runs(before=before, limit=4):
        pages.append([r.id for r in page])
        before = page[-1].id
    assert pages == [newest_first[:4], newest_first[4:]]


async def test_list_runs_skips_deleted_runs(store: Store) -> None:
    a, b = make_job("a"), make_job("b")
    await store.add_jobs([a, b])
    keep = make_run(b, T0, status=RunStatus.SUCCEEDED)
    for run in (make_run(a, T0, status=RunStatus.SUCCEEDED), keep, make_run(a, T0 + S)):
        await store.add_run(run, dispatched=True)
    await store.delete_job(a.id)
    assert [r.id for r in await store.list_runs()] == [keep.id]
    assert [r.id for r in await store.list_runs(status={RunStatus.SUCCEEDED, RunStatus.QUEUED})] == [
        keep.id]


# -------------------------------------------------------------------------------- output so far


async def test_record_output_is_fenced_and_never_goes_backwards(store: Store) -> None:
    job = make_job("a")
    await store.add_jobs([job])
    run = await running_run(store, job, T0)
    other = await running_run(store, job, T0 + S, owner="w2")
    assert await store.record_output({run.id: ("one\ntwo", 2), other.id: ("x", 1)}, "w1") == {run.id}
    got = await store.get_run(run.id)
    assert (got.output, got.output_lines, got.status) == ("one\ntwo", 2, RunStatus.RUNNING)
    assert (await store.get_run(other.id)).output == ""  # not w1's run
    # an older snapshot arriving late does not undo a newer one
    assert await store.record_output({run.id: ("one", 1)}, "w1") == set()
    assert (await store.get_run(run.id)).output_lines == 2
    assert await store.record_output({}, "w1") == set()
    assert await store.finish_run(run.id, "w1", status=RunStatus.SUCCEEDED, finished_at=T0 + 2 * S,
                                  output="one\ntwo\nthree", output_lines=3)
    # once finished, a late flush changes nothing
    assert await store.record_output({run.id: ("late", 9)}, "w1") == set()
    got = await store.get_run(run.id)
    assert (got.output, got.output_lines) == ("one\ntwo\nthree", 3)
    assert_no_connection_checked_out(store)


async def test_finish_counts_the_lines_of_its_output_unless_told(store: Store) -> None:
    job = make_job("a")
    await store.add_jobs([job])
    run = await running_run(store, job, T0)
    assert await store.finish_run(run.id, "w1", status=RunStatus.FAILED, finished_at=T0 + S,
                                  output="a\nb\nc")
    assert (await store.get_run(run.id)).output_lines == 3
    cut = await running_run(store, job, T0 + timedelta(minutes=1))
    assert await store.finish_run(cut.id, "w1", status=RunStatus.SUCCEEDED, finished_at=T0 + 70 * S,
                                  output="[... 10 earlier characters not kept]\nlast", output_lines=40)
    assert (await store.get_run(cut.id)).output_lines == 40


# ---------------------------------------------------------------------------------------- stats


async def test_stats_count_jobs_active_runs_and_outcomes_per_window(store: Store) -> None:
    from chronos_core.models import JobStatus
    from chronos_core.planning import plan_due_job

    a, b = make_job("a", next_run_at=None), make_job("b", next_run_at=None, status=JobStatus.PAUSED)
    late = make_job("late", next_run_at=T0 - 3600 * S, schedule="0 * * * *")  # its slot was missed
    await store.add_jobs([a, b, late])
    await _finish(store, a, T0 - 7200 * S, RunStatus.SUCCEEDED)  # two hours ago: in the day only
    for i in range(3):
        await _finish(store, a, T0 - (600 + i) * S, RunStatus.FAILED)
    await _finish(store, b, T0 - 60 * S, RunStatus.SUCCEEDED)
    await _finish(store, b, T0 - 50 * S, RunStatus.TIMED_OUT)
    queued = make_run(a, T0)
    await store.add_run(queued, dispatched=True)
    await running_run(store, b, T0 + S)
    cancelled = make_run(b, T0 + 2 * S)
    await store.add_run(cancelled, dispatched=True)
    assert await store.cancel_queued_run(cancelled.id, T0, "no")
    claim = await store.claim_due(T0, 10, plan_due_job)
    assert [r.status for r in claim.recorded] == [RunStatus.MISSED]

    stats = await store.stats([T0 - 3600 * S, T0 - 86400 * S], top=1)
    assert stats.jobs == {JobStatus.ACTIVE: 2, JobStatus.PAUSED: 1}
    assert stats.active == {RunStatus.QUEUED: 2, RunStatus.RUNNING: 1}  # a's run, late's catch-up; b's
    hour, day = stats.windows
    assert hour.since == T0 - 3600 * S
    assert hour.by_status == {RunStatus.FAILED: 3, RunStatus.SUCCEEDED: 1, RunStatus.TIMED_OUT: 1,
                              RunStatus.CANCELLED: 1, RunStatus.MISSED: 1}
    assert hour.busiest == [(a.id, 3)] and hour.failing == [(a.id, 3)]
    assert day.by_status[RunStatus.SUCCEEDED] == 2
    assert day.busiest == [(a.id, 4)]
    both = (await store.stats([T0 - 86400 * S], top=5)).windows[0]
    assert both.failing == [(a.id, 3), (b.id, 1)]
    # counts are of what happened: deleting the history does not change them
    await store.delete_runs(a.id)
    assert (await store.stats([T0 - 3600 * S])).windows[0].by_status[RunStatus.FAILED] == 3
    assert_no_connection_checked_out(store)
