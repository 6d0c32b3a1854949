"""The ``Store`` contract (chronos_core.ports.Store), run against every store: memory, SQLite, MariaDB.

Each test pins one promise of the port's docstrings. Claims use the real planner. For the SQL stores the
fixture also checks that no pooled connection is left checked out after the test."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from chronos_core.errors import InvalidJob, JobNotFound, NameConflict, RunConflict, RunNotFound
from chronos_core.ids import new_id
from chronos_core.models import (
    Job,
    JobStatus,
    MisfirePolicy,
    OverlapPolicy,
    Run,
    RunStatus,
    Trigger,
)
from chronos_core.planning import jitter_order, plan_due_job
from chronos_core.ports import Store
from chronos_core.retry import RetryPolicy, RetryStrategy

from .conftest import assert_no_connection_checked_out

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def make_job(name: str = "job", *, next_run_at: datetime | None = T0, status: JobStatus = JobStatus.ACTIVE,
             schedule: str | None = "*/1 * * * * *", type: str = "shell", history_limit: int | None = None,
             overlap: OverlapPolicy = OverlapPolicy.ALLOW, misfire: MisfirePolicy = MisfirePolicy.FIRE_ONCE,
             misfire_grace: float = 5.0) -> Job:
    return Job(id=new_id(), name=name, type=type, payload={"command": f"echo {name}"}, schedule=schedule,
               timezone="UTC", retry=RetryPolicy(), timeout=None, overlap=overlap, misfire=misfire,
               misfire_grace=misfire_grace, status=status, created_at=T0 - 60 * S, updated_at=T0 - 60 * S,
               next_run_at=next_run_at, history_limit=history_limit)


def make_run(job: Job, slot: datetime, *, attempt: int = 1, status: RunStatus = RunStatus.QUEUED,
             due_at: datetime | None = None, finished_at: datetime | None = None,
             trigger: Trigger = Trigger.SCHEDULE) -> Run:
    if finished_at is None and status not in (RunStatus.QUEUED, RunStatus.RUNNING):
        finished_at = slot
    return Run(id=new_id(), job_id=job.id, scheduled_for=slot, trigger=trigger, attempt=attempt,
               status=status, created_at=slot, due_at=due_at or slot, finished_at=finished_at)


async def running_run(store: Store, job: Job, slot: datetime, owner: str = "w1",
                      lease: timedelta = 30 * S) -> Run:
    run = make_run(job, slot)
    await store.add_run(run, dispatched=True)
    assert await store.start_run(run.id, owner, slot, slot + lease)
    return await store.get_run(run.id)


# ------------------------------------------------------------------------------------------- jobs


async def test_job_round_trips_every_field(store: Store) -> None:
    job = dataclasses.replace(
        make_job("ünïcode ☃ job", history_limit=7),
        payload={"url": "https://x", "nested": {"a": [1, 2.5, None]}},
        timezone="Europe/Berlin", description="d" * 1500, timeout=12.5, overlap=OverlapPolicy.FORBID,
        misfire=MisfirePolicy.FIRE_ALL, misfire_grace=0.25, start_at=T0 + timedelta(microseconds=123456),
        end_at=T0 + timedelta(days=3), next_run_at=T0 + timedelta(microseconds=999999),
        retry=RetryPolicy(strategy=RetryStrategy.LINEAR, max_attempts=4, delay=2, max_delay=60, jitter=0.5))
    await store.add_jobs([job])
    assert await store.get_job(job.id) == job
    assert await store.get_job_by_name(job.name) == job
    assert await store.list_jobs() == [job]  # (the listings decode the driver's rows themselves)
    got = await store.get_job(job.id)
    assert got.next_run_at is not None and got.next_run_at.utcoffset() == timedelta(0)


async def test_times_in_other_zones_are_stored_as_the_same_instant(store: Store) -> None:
    at = datetime(2030, 6, 1, 14, 0, 0, 5, tzinfo=ZoneInfo("America/New_York"))
    job = dataclasses.replace(make_job(), next_run_at=at)
    await store.add_jobs([job])
    assert (await store.get_job(job.id)).next_run_at == at


async def test_names_are_unique_across_and_within_batches(store: Store) -> None:
    await store.add_jobs([make_job("a")])
    with pytest.raises(NameConflict) as info:
        await store.add_jobs([make_job("b"), make_job("a")])
    assert info.value.name == "a"
    with pytest.raises(NameConflict) as info:
        await store.add_jobs([make_job("c"), make_job("c")])
    assert info.value.name == "c"
    assert_no_connection_checked_out(store)
    # all or none: nothing of the refused batches was stored
    assert [j.name for j in await store.list_jobs()] == ["a"]
    await store.add_jobs([])


async def test_names_are_case_and_blank_sensitive(store: Store) -> None:
    await store.add_jobs([make_job("Report"), make_job("report")])
    assert (await store.get_job_by_name("report")).name == "report"
    with pytest.raises(JobNotFound):
        await store.get_job_by_name("report ")


async def test_names_with_blanks_at_their_ends_are_refused_by_every_store(store: Store) -> None:
    """A name is exact (above), so it cannot have whitespace at its ends: on MariaDB the unique index's
    PAD SPACE collation makes 'foo ' the name 'foo' (adding it beside 'foo' failed as a RunConflict about
    ids) while memory and SQLite kept two jobs. Every store refuses such a name alike, as an invalid
    name located in the batch, before looking for a conflict, and writes nothing."""
    foo, bar = make_job("foo"), make_job("bar")
    await store.add_jobs([foo, bar])
    for name in ["foo ", " foo", "new ", "new\t", "new\u00a0", "\u3000new"]:
        with pytest.raises(InvalidJob) as info:
            await store.add_jobs([make_job("ok"), make_job(name)])
        assert [e.loc for e in info.value.errors] == [(1, "name")]
        assert repr(name) in info.value.errors[0].reason and "whitespace" in info.value.errors[0].reason
    with pytest.raises(InvalidJob) as info:  # a rename, whole or as a change
        await store.update_job(dataclasses.replace(bar, name="foo "))
    assert [e.loc for e in info.value.errors] == [("name",)]
    with pytest.raises(InvalidJob):
        await store.change_job(bar, {"name": "bar ", "updated_at": bar.updated_at + S})
    assert sorted(j.name for j in await store.list_jobs()) == ["bar", "foo"]
    assert await store.get_job(bar.id) == bar
    with pytest.raises(NameConflict) as conflict:  # inner blanks are part of a name; conflicts as before
        await store.add_jobs([make_job("a  b"), make_job("foo")])
    assert conflict.value.name == "foo"
    await store.add_jobs([make_job("a  b")])
    assert (await store.get_job_by_name("a  b")).name == "a  b"
    assert_no_connection_checked_out(store)


async def test_missing_things_raise_not_found(store: Store) -> None:
    with pytest.raises(JobNotFound):
        await store.get_job(new_id())
    with pytest.raises(JobNotFound) as info:
        await store.get_job_by_name("nobody")
    assert info.value.job_id == "nobody"
    with pytest.raises(JobNotFound):
        await store.update_job(make_job("ghost"))
    with pytest.raises(JobNotFound):
        await store.delete_job(new_id())
    with pytest.raises(JobNotFound):
        await store.delete_runs(new_id())
    with pytest.raises(RunNotFound):
        await store.get_run(new_id())
    with pytest.raises(JobNotFound):
        await store.add_run(make_run(make_job("ghost"), T0), dispatched=False)
    assert_no_connection_checked_out(store)


async def test_update_replaces_the_job_and_keeps_names_unique(store: Store) -> None:
    a, b = make_job("a"), make_job("b")
    await store.add_jobs([a, b])
    changed = dataclasses.replace(a, name="a2", status=JobStatus.PAUSED, payload={"command": "true"},
                                  next_run_at=None, updated_at=T0)
    await store.update_job(changed)
    assert await store.get_job(a.id) == changed
    with pytest.raises(JobNotFound):
        await store.get_job_by_name("a")
    with pytest.raises(NameConflict):
        await store.update_job(dataclasses.replace(changed, name="b"))
    assert await store.get_job(a.id) == changed
    await store.update_job(changed)  # unchanged values: still found, no error
    await store.add_jobs([make_job("a")])  # the old name is free again


async def test_list_jobs_filters_and_keyset_pagination(store: Store) -> None:
    made = [
        make_job("backup-db", type="shell"),
        make_job("backup-files", type="shell", status=JobStatus.PAUSED),
        make_job("Backup-upper", type="http"),
        make_job("report_1", type="http"),
        make_job("reportX1", type="http"),
        make_job("100%done", type="email"),
        make_job("1000done", type="email"),
    ]
    await store.add_jobs(made)
    ids = [j.id for j in made]
    assert [j.id for j in await store.list_jobs()] == sorted(ids)
    assert {j.name for j in await store.list_jobs(name="backup")} == {"backup-db", "backup-files"}
    assert {j.name for j in await store.list_jobs(name="report_")} == {"report_1"}
    assert {j.name for j in await store.list_jobs(name="100%")} == {"100%done"}
    assert {j.name for j in await store.list_jobs(type="http")} == {"Backup-upper", "report_1", "reportX1"}
    assert {j.name for j in await store.list_jobs(status=JobStatus.PAUSED)} == {"backup-files"}
    assert [j.name for j in await store.list_jobs(status=JobStatus.ACTIVE, type="shell", name="b")] == [
        "backup-db"]
    pages, after = [], None
    while page := await store.list_jobs(after=after, limit=3):
        pages.append([j.id for j in page])
        after = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == sorted(ids)


async def test_delete_job_deletes_its_runs(store: Store) -> None:
    job, other = make_job("a"), make_job("b")
    await store.add_jobs([job, other])
    runs = [make_run(job, T0), make_run(job, T0 + S, status=RunStatus.SUCCEEDED), make_run(other, T0)]
    for run in runs:
        await store.add_run(run, dispatched=False)
    await store.delete_job(job.id)
    with pytest.raises(JobNotFound):
        await store.get_job(job.id)
    for run in runs[:2]:
        with pytest.raises(RunNotFound):
            await store.get_run(run.id)
    assert await store.list_runs(job.id) == []
    assert [r.id for r in await store.list_runs()] == [runs[2].id]
    # runs of a deleted job are never dispatched
    assert [d.run.id for d in await store.claim_due_runs(T0 + 10 * S, 10)] == [runs[2].id]
    await store.add_jobs([make_job("a")])


# ------------------------------------------------------------------------------------- scheduling


async def test_claim_due_claims_earliest_first_up_to_the_limit(store: Store) -> None:
    # off-second slots so that each due job has exactly one slot due; due0 is the earliest
    due = [make_job(f"due{i}", next_run_at=T0 + i * timedelta(milliseconds=10)) for i in reversed(range(5))]
    future = make_job("future", next_run_at=T0 + 60 * S)
    paused = make_job("paused", next_run_at=T0 - 100 * S, status=JobStatus.PAUSED)
    manual = make_job("manual", next_run_at=None, schedule=None)
    await store.add_jobs([*due, future, paused, manual])
    now = T0 + timedelta(milliseconds=500)

    first = await store.claim_due(now, 2, plan_due_job)
    assert first.jobs == 2
    assert [d.job.name for d in first.dispatch] == ["due0", "due1"]
    second = await store.claim_due(now, 10, plan_due_job)
    assert second.jobs == 3 and {d.job.name for d in second.dispatch} == {"due2", "due3", "due4"}
    assert (await store.claim_due(now, 10, plan_due_job)).jobs == 0

    for job in due:  # the run is stored queued, next_run_at moved to the next slot after now
        stored = await store.get_job(job.id)
        assert stored.next_run_at == T0 + S
        [run] = await store.list_runs(job.id)
        assert run.status is RunStatus.QUEUED and run.scheduled_for == job.next_run_at
    for d in first.dispatch + second.dispatch:  # the dispatch carries the run as stored
        assert await store.get_run(d.run.id) == d.run
    assert await store.list_runs(future.id) == [] and await store.list_runs(paused.id) == []
    # claimed runs are dispatched: claim_due_runs does not hand them out again
    assert await store.claim_due_runs(now, 100) == []


async def test_claim_takes_one_instants_jobs_in_the_order_their_jittered_slots_come_due(store: Store) -> None:
    # 30 jobs with jitter due at T0 and one without: claimed 10 at a time, smallest jitter offset first
    # (the unjittered one, offset 0, first of all); the claim writes the offset of each job's next slot
    # too, so the next instant's claims follow its order
    jittered = [dataclasses.replace(make_job(f"jit{i}"), jitter=60.0) for i in range(29)]
    jittered.append(dataclasses.replace(make_job("a-day"), jitter=86400.0))  # the largest offset there is
    plain = make_job("plain")
    await store.add_jobs([*jittered, plain])
    await store.update_job(dataclasses.replace(jittered[0], description="changed"))  # (a full rewrite)
    seen: set[str] = set()
    for at in (T0, T0 + S):
        order = sorted(jittered, key=lambda j: jitter_order(j.id, at, j.jitter))
        batches = []
        for _ in range(4):
            claim = await store.claim_due(at, 10, plan_due_job)
            new = [r for r in await store.list_runs(limit=200) if r.id not in seen]
            seen.update(r.id for r in new)
            batches.append({r.job_id for r in new})
            assert {d.run.job_id for d in claim.dispatch} <= {plain.id}
            assert claim.waiting == len(batches[-1] - {plain.id})  # the others are due later
        assert batches == [{plain.id} | {j.id for j in order[:9]}, {j.id for j in order[9:19]},
                           {j.id for j in order[19:29]}, {order[29].id}]


async def test_a_jitter_change_moves_the_jobs_claim_rank(store: Store) -> None:
    # 20 jittered jobs due at T0; the two with the largest offsets lose their jitter, one through
    # change_job (as Jobs.update / patch / pause / resume write: jitter is not a timing field, next_run_at
    # stays), one through update_job: both are due at T0 sharp now, and the first claim of 5 holds them
    jittered = [dataclasses.replace(make_job(f"jit{i}"), jitter=60.0) for i in range(20)]
    await store.add_jobs(jittered)
    last, second = sorted(jittered, key=lambda j: jitter_order(j.id, T0, j.jitter))[-1:-3:-1]
    read = await store.get_job(last.id)
    assert await store.change_job(read, {"jitter": None, "updated_at": read.updated_at + S}) is not None
    read = await store.get_job(second.id)
    await store.update_job(dataclasses.replace(read, jitter=None, updated_at=read.updated_at + S))
    claim = await store.claim_due(T0, 5, plan_due_job)
    assert {last.id, second.id} <= {d.run.job_id for d in claim.dispatch}, "the unjittered jobs come first"


async def test_claim_records_missed_slots_and_one_catch_up(store: Store) -> None:
    job = make_job("late", next_run_at=T0, misfire=MisfirePolicy.FIRE_ONCE, misfire_grace=1)
    await store.add_jobs([job])
    now = T0 + 10 * S + timedelta(milliseconds=500)
    claim = await store.claim_due(now, 10, plan_due_job)
    # T0+10s is within the 1s grace and runs; T0 .. T0+9s are recorded missed (fire_once: an on-time
    # slot runs instead of a catch-up)
    assert [(d.run.trigger, d.run.scheduled_for) for d in claim.dispatch] == [(Trigger.SCHEDULE, T0 + 10 * S)]
    assert sorted(r.scheduled_for for r in claim.recorded) == [T0 + i * S for i in range(10)]
    assert {r.status for r in claim.recorded} == {RunStatus.MISSED}
    stored = await store.list_runs(job.id, limit=100)
    assert sorted(r.scheduled_for for r in stored) == [T0 + i * S for i in range(11)]
    missed = await store.list_runs(job.id, status={RunStatus.MISSED}, limit=100)
    assert len(missed) == 10 and all(r.error and "missed" in r.error for r in missed)
    assert (await store.get_job(job.id)).next_run_at == T0 + 11 * S


async def test_claim_counts_a_slot_that_already_has_its_run_as_duplicate(store: Store) -> None:
    job = make_job("dup", next_run_at=T0)
    await store.add_jobs([job])
    existing = make_run(job, T0, trigger=Trigger.MANUAL)
    await store.add_run(existing, dispatched=True)
    claim = await store.claim_due(T0 + timedelta(milliseconds=100), 10, plan_due_job)
    assert claim.duplicates == 1 and claim.dispatch == [] and claim.jobs == 1
    assert [r.id for r in await store.list_runs(job.id)] == [existing.id]
    assert (await store.get_job(job.id)).next_run_at == T0 + S  # the job still moves on


async def test_claim_counts_exactly_the_taken_slots_among_many(store: Store) -> None:
    jobs = [make_job(f"j{i}", next_run_at=T0) for i in range(50)]
    await store.add_jobs(jobs)
    taken = jobs[::6]  # another scheduler already fired these slots
    for job in taken:
        await store.add_run(make_run(job, T0), dispatched=True)
    claim = await store.claim_due(T0 + timedelta(milliseconds=100), 100, plan_due_job)
    assert claim.jobs == 50 and claim.duplicates == len(taken) == 9
    assert {d.run.job_id for d in claim.dispatch} == {j.id for j in jobs} - {j.id for j in taken}
    for job in jobs:
        assert len(await store.list_runs(job.id)) == 1
        assert (await store.get_job(job.id)).next_run_at == T0 + S


async def test_claim_is_all_or_nothing_when_the_planner_fails(store: Store) -> None:
    a, b = make_job("a", next_run_at=T0), make_job("b", next_run_at=T0 + timedelta(milliseconds=1))
    await store.add_jobs([a, b])

    def planner(job: Job, active: list[str], now: datetime):  # type: ignore[no-untyped-def]
        if job.name == "b":
            raise RuntimeError("cannot plan b")
        return plan_due_job(job, active, now)

    with pytest.raises(RuntimeError):
        await store.claim_due(T0 + timedelta(milliseconds=10), 10, planner)
    assert await store.list_runs() == []  # a's run was not kept
    assert (await store.get_job(a.id)).next_run_at == T0
    assert_no_connection_checked_out(store)
    claim = await store.claim_due(T0 + timedelta(milliseconds=10), 10, plan_due_job)  # nothing was lost
    assert sorted(d.job.name for d in claim.dispatch) == ["a", "b"]


async def test_a_job_indexed_twice_is_claimed_once(store: Store) -> None:
    job = make_job("twice", next_run_at=T0)
    await store.add_jobs([job])
    await store.update_job(dataclasses.replace(job, status=JobStatus.PAUSED))
    await store.update_job(job)  # active again, same next_run_at
    claim = await store.claim_due(T0 + timedelta(milliseconds=10), 10, plan_due_job)
    assert claim.jobs == 1 and len(claim.dispatch) == 1 and claim.duplicates == 0


async def test_claim_gives_the_planner_the_active_runs(store: Store) -> None:
    job = make_job("forbid", next_run_at=T0, overlap=OverlapPolicy.FORBID)
    await store.add_jobs([job])
    busy = await running_run(store, job, T0 - 5 * S)
    finished = make_run(job, T0 - 9 * S, status=RunStatus.SUCCEEDED)
    await store.add_run(finished, dispatched=True)
    seen: list[list[str]] = []

    def planner(j: Job, active: list[str], now: datetime):  # type: ignore[no-untyped-def]
        seen.append(list(active))
        return plan_due_job(j, active, now)

    claim = await store.claim_due(T0 + timedelta(milliseconds=1), 10, planner)
    assert seen == [[busy.id]]
    assert claim.dispatch == [] and [r.status for r in claim.recorded] == [RunStatus.SKIPPED]
    assert busy.id in (claim.recorded[0].error or "")


async def test_claim_passes_replaced_runs_to_cancel(store: Store) -> None:
    job = make_job("replace", next_run_at=T0, overlap=OverlapPolicy.REPLACE)
    await store.add_jobs([job])
    busy = await running_run(store, job, T0 - 5 * S)
    claim = await store.claim_due(T0, 10, plan_due_job)
    assert claim.cancel == [busy.id] and len(claim.dispatch) == 1


async def test_concurrent_claims_never_return_the_same_job(store: Store) -> None:
    jobs_ = [make_job(f"j{i:02d}", next_run_at=T0 + (i % 7) * timedelta(milliseconds=10))
             for i in range(60)]
    await store.add_jobs(jobs_)
    now = T0 + timedelta(milliseconds=300)
    claims = await asyncio.gather(*(store.claim_due(now, 7, plan_due_job) for _ in range(12)))
    claimed = [d.job.id for c in claims for d in c.dispatch]
    assert len(claimed) == len(set(claimed))
    assert sum(c.jobs for c in claims) == len(claimed) <= 60
    while (c := await store.claim_due(now, 50, plan_due_job)).jobs:
        claimed.extend(d.job.id for d in c.dispatch)
    assert sorted(claimed) == sorted(j.id for j in jobs_)
    assert sum(c.duplicates for c in claims) == 0
    for job in jobs_:
        assert len(await store.list_runs(job.id)) == 1


async def test_claim_due_runs_hands_out_waiting_runs_once_when_due(store: Store) -> None:
    job = make_job("retrying", next_run_at=None)
    await store.add_jobs([job])
    later = make_run(job, T0, attempt=2, due_at=T0 + 20 * S, trigger=Trigger.RETRY)
    sooner = make_run(job, T0 + S, attempt=2, due_at=T0 + 10 * S, trigger=Trigger.RETRY)
    sent = make_run(job, T0 + 2 * S)
    for run in (later, sooner):
        await store.add_run(run, dispatched=False)
    await store.add_run(sent, dispatched=True)
    assert await store.next_due_time() == T0 + 10 * S
    assert await store.claim_due_runs(T0 + 9 * S, 10) == []
    got = await store.claim_due_runs(T0 + 30 * S, 10)
    assert [d.run.id for d in got] == [sooner.id, later.id]
    assert all(d.job == job for d in got)
    assert await store.claim_due_runs(T0 + 30 * S, 10) == []
    assert await store.next_due_time() is None


async def test_claim_due_runs_respects_the_limit(store: Store) -> None:
    job = make_job("many", next_run_at=None)
    await store.add_jobs([job])
    waiting = [make_run(job, T0 + i * S) for i in range(5)]
    for run in waiting:
        await store.add_run(run, dispatched=False)
    first = await store.claim_due_runs(T0 + 10 * S, 3)
    rest = await store.claim_due_runs(T0 + 10 * S, 3)
    assert [d.run.id for d in first + rest] == [r.id for r in waiting]


async def test_next_due_time_is_the_earliest_active_job_or_waiting_run(store: Store) -> None:
    assert await store.next_due_time() is None
    await store.add_jobs([make_job("p", next_run_at=T0 - 50 * S, status=JobStatus.PAUSED),
                          make_job("m", next_run_at=None, schedule=None)])
    assert await store.next_due_time() is None
    job = make_job("a", next_run_at=T0 + 30 * S)
    await store.add_jobs([job])
    assert await store.next_due_time() == T0 + 30 * S
    await store.add_run(make_run(job, T0, due_at=T0 + 5 * S), dispatched=False)
    assert await store.next_due_time() == T0 + 5 * S


async def test_release_undispatched_hands_out_queued_runs_again(store: Store) -> None:
    job = make_job("r", next_run_at=None)
    await store.add_jobs([job])
    a, b = make_run(job, T0), make_run(job, T0 + S)
    await store.add_run(a, dispatched=True)
    await store.add_run(b, dispatched=True)
    running = await running_run(store, job, T0 + 2 * S)
    done = make_run(job, T0 + 3 * S, status=RunStatus.SUCCEEDED)
    await store.add_run(done, dispatched=True)
    assert await store.claim_due_runs(T0 + 60 * S, 10) == []
    assert await store.release_undispatched() == 2
    assert [d.run.id for d in await store.claim_due_runs(T0 + 60 * S, 10)] == [a.id, b.id]
    assert running.status is RunStatus.RUNNING
    assert await store.release_undispatched() == 2
    assert await store.release_undispatched() == 0  # already waiting


# ------------------------------------------------------------------------------------------- runs


async def test_add_run_refuses_an_existing_slot(store: Store) -> None:
    job = make_job("x")
    await store.add_jobs([job])
    run = make_run(job, T0, trigger=Trigger.MANUAL)
    await store.add_run(run, dispatched=True)
    assert await store.get_run(run.id) == run
    with pytest.raises(RunConflict):
        await store.add_run(make_run(job, T0), dispatched=True)
    await store.add_run(make_run(job, T0, attempt=2), dispatched=True)  # another attempt is fine
    assert_no_connection_checked_out(store)


async def test_a_claimed_slot_and_a_manual_run_for_it_conflict(store: Store) -> None:
    job = make_job("whole-second", next_run_at=T0)  # a whole second: no microseconds
    await store.add_jobs([job])
    [d] = (await store.claim_due(T0, 10, plan_due_job)).dispatch
    with pytest.raises(RunConflict):
        await store.add_run(make_run(job, T0, trigger=Trigger.MANUAL), dispatched=True)
    retry = make_run(job, T0, attempt=2, trigger=Trigger.RETRY, due_at=T0 + 5 * S)
    assert await store.start_run(d.run.id, "w1", T0, T0 + 5 * S)
    assert await store.renew_leases([d.run.id], "w1", T0 + 6 * S) == {d.run.id}
    assert await store.expired_leases(T0 + 6 * S, 10) == []  # expiry equal to now is not expired
    assert await store.finish_run(d.run.id, "w1", status=RunStatus.FAILED, finished_at=T0 + S, retry=retry)
    with pytest.raises(RunConflict):
        await store.add_run(make_run(job, T0, attempt=2), dispatched=True)
    assert await store.claim_due_runs(T0 + 4 * S, 10) == []
    assert [x.run.id for x in await store.claim_due_runs(T0 + 5 * S, 10)] == [retry.id]


async def test_start_run_moves_queued_to_running_once(store: Store) -> None:
    job = make_job("s")
    await store.add_jobs([job])
    run = make_run(job, T0)
    await store.add_run(run, dispatched=False)
    assert await store.start_run(run.id, "w1", T0 + S, T0 + 31 * S)
    got = await store.get_run(run.id)
    assert (got.status, got.owner, got.started_at, got.lease_expires_at) == (
        RunStatus.RUNNING, "w1", T0 + S, T0 + 31 * S)
    assert not await store.start_run(run.id, "w2", T0 + 2 * S, T0 + 32 * S)
    assert (await store.get_run(run.id)).owner == "w1"
    assert not await store.start_run(new_id(), "w1", T0, T0 + S)
    # a started run is no longer waiting for dispatch
    assert await store.claim_due_runs(T0 + 100 * S, 10) == []


async def test_concurrent_starts_of_one_run_let_exactly_one_win(store: Store) -> None:
    job = make_job("race")
    await store.add_jobs([job])
    runs = [make_run(job, T0 + i * S) for i in range(10)]
    for run in runs:
        await store.add_run(run, dispatched=True)
    results = await asyncio.gather(*(store.start_run(r.id, f"w{k}", T0, T0 + 30 * S)
                                     for r in runs for k in range(3)))
    for i, run in enumerate(runs):
        wins = [k for k in range(3) if results[i * 3 + k]]
        assert len(wins) == 1
        assert (await store.get_run(run.id)).owner == f"w{wins[0]}"


async def test_start_run_refuses_cancelled_and_finished_runs(store: Store) -> None:
    job = make_job("c")
    await store.add_jobs([job])
    run = make_run(job, T0)
    await store.add_run(run, dispatched=True)
    assert await store.cancel_queued_run(run.id, T0 + S, "user asked")
    assert not await store.start_run(run.id, "w1", T0, T0 + S)
    done = make_run(job, T0 + S, status=RunStatus.SKIPPED)
    await store.add_run(done, dispatched=True)
    assert not await store.start_run(done.id, "w1", T0, T0 + S)


async def test_finish_run_is_fenced_by_owner_and_status(store: Store) -> None:
    job = make_job("f")
    await store.add_jobs([job])
    run = await running_run(store, job, T0, owner="w1")
    before = await store.get_run(run.id)
    assert not await store.finish_run(run.id, "w2", status=RunStatus.FAILED, finished_at=T0 + S,
                                      error="stale worker")
    assert await store.get_run(run.id) == before  # nothing written
    assert await store.finish_run(run.id, "w1", status=RunStatus.SUCCEEDED, finished_at=T0 + 2 * S,
                                  exit_code=0, output="line 1\nline 2", error=None)
    got = await store.get_run(run.id)
    assert (got.status, got.finished_at, got.exit_code, got.output, got.error) == (
        RunStatus.SUCCEEDED, T0 + 2 * S, 0, "line 1\nline 2", None)
    assert not await store.finish_run(run.id, "w1", status=RunStatus.FAILED, finished_at=T0 + 3 * S)
    assert (await store.get_run(run.id)).status is RunStatus.SUCCEEDED
    queued = make_run(job, T0 + S)
    await store.add_run(queued, dispatched=True)
    assert not await store.finish_run(queued.id, None, status=RunStatus.FAILED, finished_at=T0)
    assert not await store.finish_run(new_id(), "w1", status=RunStatus.FAILED, finished_at=T0)
    other = await running_run(store, job, T0 + 5 * S)
    with pytest.raises(ValueError):
        await store.finish_run(other.id, "w1", status=RunStatus.RUNNING, finished_at=T0)
    assert (await store.get_run(other.id)).status is RunStatus.RUNNING


_RESULTS = [{"rows": 42, "ok": True, "ratio": 0.5, "none": None, "nested": {"list": [1, "two", [3]]}},
            "ünïcødé ✓ \"quoted\"\n", 7, 0, False, [], "x" * (64 * 1024 - 2)]


async def test_finish_run_keeps_the_result_as_a_json_value(store: Store) -> None:
    job = make_job("result")
    await store.add_jobs([job])
    runs = [await running_run(store, job, T0 + i * S) for i in range(len(_RESULTS) + 1)]
    # finishes in one group commit (the stores' fast path); the last one without a result, and a tuple
    # read back as a list, as plain JSON, by every store
    values = [*_RESULTS, None]
    assert all(await asyncio.gather(*(
        store.finish_run(r.id, "w1", status=RunStatus.SUCCEEDED, finished_at=T0 + 20 * S, result=value)
        for r, value in zip(runs, values, strict=True))))
    for r, value in zip(runs, values, strict=True):
        got = (await store.get_run(r.id)).result
        assert got == value and type(got) is type(value)
    history = {r.id: r.result for r in await store.list_runs(job.id, limit=100)}
    assert [history[r.id] for r in runs] == values
    # a finish that inserts a retry (the locking path): the failed attempt keeps what it returned, the
    # retry starts without one
    failed = await running_run(store, job, T0 + 30 * S)
    retry = make_run(job, T0 + 30 * S, attempt=2, trigger=Trigger.RETRY, due_at=T0 + 40 * S)
    assert await store.finish_run(failed.id, "w1", status=RunStatus.FAILED, finished_at=T0 + 31 * S,
                                  error="partly done", result=("done", 3), retry=retry)
    assert (await store.get_run(failed.id)).result == ["done", 3]
    assert (await store.get_run(retry.id)).result is None
    # a stale finish writes no result either
    assert not await store.finish_run(failed.id, "w1", status=RunStatus.SUCCEEDED, finished_at=T0 + 32 * S,
                                      result="late")
    assert (await store.get_run(failed.id)).result == ["done", 3]


async def test_finish_run_inserts_the_retry_in_the_same_step(store: Store) -> None:
    job = make_job("retry")
    await store.add_jobs([job])
    run = await running_run(store, job, T0)
    retry = make_run(job, T0, attempt=2, trigger=Trigger.RETRY, due_at=T0 + 8 * S)
    assert await store.finish_run(run.id, "w1", status=RunStatus.FAILED, finished_at=T0 + S,
                                  exit_code=3, error="exit code 3", retry=retry)
    assert await store.get_run(retry.id) == retry
    assert await store.next_due_time() <= T0 + 8 * S  # type: ignore[operator]
    assert await store.claim_due_runs(T0 + 7 * S, 10) == []
    [d] = await store.claim_due_runs(T0 + 8 * S, 10)
    assert d.run == retry and d.job == job


async def test_finish_run_with_a_conflicting_retry_writes_nothing(store: Store) -> None:
    job = make_job("conflict")
    await store.add_jobs([job])
    run = await running_run(store, job, T0)
    taken = make_run(job, T0, attempt=2, trigger=Trigger.RETRY)
    await store.add_run(taken, dispatched=True)
    clash = make_run(job, T0, attempt=2, trigger=Trigger.RETRY)
    with pytest.raises(RunConflict):
        await store.finish_run(run.id, "w1", status=RunStatus.FAILED, finished_at=T0 + S, retry=clash)
    assert (await store.get_run(run.id)).status is RunStatus.RUNNING
    with pytest.raises(RunNotFound):
        await store.get_run(clash.id)
    assert_no_connection_checked_out(store)


async def test_concurrent_finishes_apply_each_compare_and_set_exactly(store: Store) -> None:
    job = make_job("batch")
    await store.add_jobs([job])
    runs = [await running_run(store, job, T0 + i * S, owner=f"w{i % 2}") for i in range(8)]
    results = await asyncio.gather(*(
        store.finish_run(r.id, owner, status=RunStatus.SUCCEEDED, finished_at=T0 + 20 * S, output=owner)
        for r in runs for owner in ("w0", "w1")))
    for i, run in enumerate(runs):
        assert results[2 * i:2 * i + 2] == [i % 2 == 0, i % 2 == 1]
        got = await store.get_run(run.id)
        assert got.status is RunStatus.SUCCEEDED and got.output == f"w{i % 2}"


async def test_renew_leases_extends_only_the_owners_running_runs(store: Store) -> None:
    job = make_job("lease")
    await store.add_jobs([job])
    mine = await running_run(store, job, T0, owner="w1")
    theirs = await running_run(store, job, T0 + S, owner="w2")
    done = await running_run(store, job, T0 + 2 * S, owner="w1")
    assert await store.finish_run(done.id, "w1", status=RunStatus.SUCCEEDED, finished_at=T0 + 3 * S)
    until = T0 + 100 * S
    assert await store.renew_leases([mine.id, theirs.id, done.id, new_id()], "w1", until) == {mine.id}
    assert (await store.get_run(mine.id)).lease_expires_at == until
    assert (await store.get_run(theirs.id)).lease_expires_at == T0 + 31 * S
    assert await store.renew_leases([], "w1", until) == set()


async def test_expired_leases_oldest_first(store: Store) -> None:
    job = make_job("exp")
    await store.add_jobs([job])
    a = await running_run(store, job, T0, lease=20 * S)  # expires T0+20
    b = await running_run(store, job, T0 + S, lease=5 * S)  # expires T0+6
    c = await running_run(store, job, T0 + 2 * S, lease=100 * S)  # expires T0+102
    await store.add_run(make_run(job, T0 + 3 * S), dispatched=True)  # queued: has no lease
    assert [r.id for r in await store.expired_leases(T0 + 30 * S, 10)] == [b.id, a.id]
    assert [r.id for r in await store.expired_leases(T0 + 30 * S, 1)] == [b.id]
    assert await store.expired_leases(T0 + 6 * S, 10) == []  # strictly before now
    assert (await store.renew_leases([b.id], "w1", T0 + 200 * S)) == {b.id}
    assert [r.id for r in await store.expired_leases(T0 + 150 * S, 10)] == [a.id, c.id]
    assert await store.finish_run(a.id, "w1", status=RunStatus.FAILED, finished_at=T0 + 150 * S)
    assert [r.id for r in await store.expired_leases(T0 + 150 * S, 10)] == [c.id]


async def test_cancel_queued_run(store: Store) -> None:
    job = make_job("cancel")
    await store.add_jobs([job])
    run = make_run(job, T0, due_at=T0 + 5 * S)
    await store.add_run(run, dispatched=False)
    assert await store.cancel_queued_run(run.id, T0 + S, "no longer wanted")
    got = await store.get_run(run.id)
    assert (got.status, got.finished_at, got.error) == (RunStatus.CANCELLED, T0 + S, "no longer wanted")
    assert not await store.cancel_queued_run(run.id, T0 + 2 * S, "again")
    assert await store.claim_due_runs(T0 + 60 * S, 10) == []  # a cancelled run is not dispatched
    running = await running_run(store, job, T0 + S)
    assert not await store.cancel_queued_run(running.id, T0 + 2 * S, "too late")
    assert not await store.cancel_queued_run(new_id(), T0, "nothing")


async def test_cancels_and_starts_of_queued_runs_in_flight_together_each_end_a_run_once(store: Store) -> None:
    """cancel_queued_run calls in flight at once with starts of the same runs (a worker recording late
    slots missed while another starts them; a user's cancel): each run ends one way, the calls that
    lost say False, and each applied record is counted once."""
    job = make_job("together")
    await store.add_jobs([job])
    runs = [make_run(job, T0 + i * S) for i in range(4)]
    for run in runs:
        await store.add_run(run, dispatched=True)
    at = T0 + 30 * S
    missed = RunStatus.MISSED
    a, b, c, d = (r.id for r in runs)
    results = await asyncio.gather(
        store.cancel_queued_run(a, at, "late", status=missed),
        store.cancel_queued_run(a, at, "late", status=missed),
        store.cancel_queued_run(b, at, "late", status=missed), store.start_run(b, "w", at, at + 30 * S),
        store.start_run(c, "w", at, at + 30 * S), store.cancel_queued_run(c, at, "stop"),
        store.cancel_queued_run(d, at, "stop"), store.cancel_queued_run(d, at, "late", status=missed))
    assert sum(results[0:2]) == sum(results[2:4]) == sum(results[4:6]) == sum(results[6:8]) == 1
    got = {run_id: await store.get_run(run_id) for run_id in (a, b, c, d)}
    assert got[a].status is missed
    assert got[b].status is (missed if results[2] else RunStatus.RUNNING)
    assert got[c].status is (RunStatus.RUNNING if results[4] else RunStatus.CANCELLED)
    assert got[d].status is (RunStatus.CANCELLED if results[6] else missed)
    ended = [r for r in got.values() if r.status is not RunStatus.RUNNING]
    assert all(r.finished_at == at for r in ended)
    counts = (await store.stats([T0 - 3600 * S])).windows[0].by_status
    assert counts == {s: sum(r.status is s for r in ended) for s in {r.status for r in ended}}
    assert await store.claim_due_runs(T0 + 60 * S, 10) == []


async def test_list_runs_newest_first_with_keyset_and_status(store: Store) -> None:
    a, b = make_job("a"), make_job("b")
    await store.add_jobs([a, b])
    statuses = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.MISSED, RunStatus.QUEUED]
    made: list[Run] = []
    for i in range(12):
        job = a if i % 3 else b
        run = make_run(job, T0 + i * S, status=statuses[i % 4])
        await store.add_run(run, dispatched=True)
        made.append(run)
    of_a = [r.id for r in reversed(made) if r.job_id == a.id]
    assert [r.id for r in await store.list_runs(a.id, limit=100)] == of_a
    pages, before = [], None
    while page := await store.list_runs(a.id, before=before, limit=3):
        pages.extend(r.id for r in page)
        before = page[-1].id
    assert pages == of_a
    failed = {RunStatus.FAILED, RunStatus.QUEUED}
    assert [r.id for r in await store.list_runs(a.id, status=failed)] == [
        r.id for r in reversed(made) if r.job_id == a.id and r.status in failed]
    assert [r.id for r in await store.list_runs(limit=5)] == [r.id for r in reversed(made)][:5]
    assert [r.id for r in await store.list_runs(status={RunStatus.MISSED}, before=made[10].id)] == [
        r.id for r in reversed(made[:10]) if r.status is RunStatus.MISSED]
    assert await store.list_runs(new_id()) == []


async def test_list_runs_reads_every_field_as_get_run_does(store: Store) -> None:
    job = make_job("fields")
    await store.add_jobs([job])
    waiting = make_run(job, T0, due_at=T0 + 5 * S)
    await store.add_run(waiting, dispatched=False)
    running = await running_run(store, job, T0 + S)
    done = await running_run(store, job, T0 + 2 * S)
    assert await store.finish_run(done.id, "w1", status=RunStatus.FAILED, finished_at=T0 + 3 * S, exit_code=2,
                                  output="line ü\nline 2", error="boom ☃", result={"x": [1, 2.5, None]})
    got = [await store.get_run(r.id) for r in sorted((waiting, running, done), key=lambda r: r.id,
                                                       reverse=True)]
    assert await store.list_runs(job.id) == got
    assert await store.list_runs() == got
    assert got[0].output_lines == 2 and got[0].result == {"x": [1, 2.5, None]}


async def test_delete_runs_keeps_active_runs(store: Store) -> None:
    job, other = make_job("a"), make_job("b")
    await store.add_jobs([job, other])
    queued = make_run(job, T0)
    await store.add_run(queued, dispatched=True)
    running = await running_run(store, job, T0 + S)
    finished = [make_run(job, T0 + (2 + i) * S, status=s)
                for i, s in enumerate([RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.SKIPPED])]
    for run in finished:
        await store.add_run(run, dispatched=True)
    keep = make_run(other, T0, status=RunStatus.SUCCEEDED)
    await store.add_run(keep, dispatched=True)
    assert await store.delete_runs(job.id) == 3
    assert {r.id for r in await store.list_runs(job.id)} == {queued.id, running.id}
    assert await store.get_run(keep.id) == keep
    assert await store.delete_runs(job.id) == 0


async def test_prune_runs_by_history_limit_in_batches(store: Store) -> None:
    limited = make_job("limited", history_limit=2)
    free = make_job("free")
    await store.add_jobs([limited, free])
    finished = [make_run(limited, T0 + i * S, status=RunStatus.SUCCEEDED) for i in range(6)]
    for run in finished:
        await store.add_run(run, dispatched=True)
    active = make_run(limited, T0 - S)  # oldest, but active: never pruned, not counted
    await store.add_run(active, dispatched=True)
    for i in range(5):
        await store.add_run(make_run(free, T0 + i * S, status=RunStatus.FAILED), dispatched=True)
    now = T0 + 60 * S
    assert await store.prune_runs(now, None, 3) == 3
    assert await store.prune_runs(now, None, 3) == 1
    assert await store.prune_runs(now, None, 3) == 0
    assert {r.id for r in await store.list_runs(limited.id)} == {finished[4].id, finished[5].id, active.id}
    assert len(await store.list_runs(free.id)) == 5


async def test_prune_runs_by_a_default_limit_for_jobs_that_set_none(store: Store) -> None:
    # the service-wide count (CHRONOS_HISTORY_MAX_RUNS): a job without history_limit keeps that many of
    # its finished runs, the newest; a job's own history_limit still applies, here a larger one
    own = make_job("own", history_limit=4)
    free = make_job("free")
    await store.add_jobs([own, free])
    made: dict[str, list[Run]] = {}
    for job in (own, free):
        made[job.id] = [make_run(job, T0 + i * S, status=RunStatus.SUCCEEDED) for i in range(6)]
        for run in made[job.id]:
            await store.add_run(run, dispatched=True)
    active = make_run(free, T0 - S)  # active: never pruned, not counted
    await store.add_run(active, dispatched=True)
    now = T0 + 60 * S
    assert await store.prune_runs(now, None, 100) == 2  # no default: only own's history_limit
    assert len(await store.list_runs(free.id)) == 7
    assert await store.prune_runs(now, None, 3, default_limit=2) == 3  # in batches, as ever
    assert await store.prune_runs(now, None, 3, default_limit=2) == 1
    assert await store.prune_runs(now, None, 3, default_limit=2) == 0
    assert {r.id for r in await store.list_runs(free.id)} == {*(r.id for r in made[free.id][-2:]), active.id}
    assert {r.id for r in await store.list_runs(own.id)} == {r.id for r in made[own.id][-4:]}


async def test_prune_runs_by_max_age(store: Store) -> None:
    job = make_job("aged")
    await store.add_jobs([job])
    old = [make_run(job, T0 + i * S, status=RunStatus.SUCCEEDED, finished_at=T0 + i * S) for i in range(4)]
    recent = make_run(job, T0 + 100 * S, status=RunStatus.FAILED, finished_at=T0 + 100 * S)
    queued_old = make_run(job, T0 - 100 * S)  # active: kept whatever its age
    for run in [*old, recent, queued_old]:
        await store.add_run(run, dispatched=True)
    now = T0 + 200 * S
    assert await store.prune_runs(now, timedelta(seconds=150), 3) == 3
    assert await store.prune_runs(now, timedelta(seconds=150), 3) == 1
    assert await store.prune_runs(now, timedelta(seconds=150), 3) == 0
    assert {r.id for r in await store.list_runs(job.id)} == {recent.id, queued_old.id}


async def test_a_zero_limit_lists_nothing(store: Store) -> None:
    job = make_job("a")
    await store.add_jobs([job])
    await store.add_run(make_run(job, T0, status=RunStatus.SUCCEEDED), dispatched=True)
    assert await store.list_jobs(limit=0) == []
    assert await store.list_runs(job.id, limit=0) == []
    assert await store.list_runs(limit=0) == []


async def test_release_undispatched_of_given_runs_only(store: Store) -> None:
    job = make_job("a", next_run_at=None)
    await store.add_jobs([job])
    lost, kept, done = make_run(job, T0), make_run(job, T0 + S), make_run(job, T0 + 2 * S)
    for run in (lost, kept, done):
        await store.add_run(run, dispatched=True)
    assert await store.start_run(done.id, "w", T0, T0 + 30 * S)
    # the queue failed for `lost` (and `done` is not queued any more): only `lost` is handed out again
    assert await store.release_undispatched([lost.id, done.id, new_id()]) == 1
    assert await store.next_due_time() == T0
    assert [d.run.id for d in await store.claim_due_runs(T0 + 10 * S, 10)] == [lost.id]
    assert await store.claim_due_runs(T0 + 10 * S, 10) == []


async def test_finish_run_fenced_on_the_lease_expiry_read(store: Store) -> None:
    job = make_job("reap")
    await store.add_jobs([job])
    run = await running_run(store, job, T0, lease=10 * S)
    [expired] = await store.expired_leases(T0 + 20 * S, 10)
    assert await store.renew_leases([run.id], "w1", T0 + 60 * S) == {run.id}  # renewed meanwhile
    retry = make_run(job, T0, attempt=2, trigger=Trigger.RETRY, due_at=T0 + 20 * S)
    assert not await store.finish_run(run.id, "w1", status=RunStatus.FAILED, finished_at=T0 + 20 * S,
                                      error="reaped", retry=retry, lease_expires_at=expired.lease_expires_at)
    got = await store.get_run(run.id)
    assert (got.status, got.lease_expires_at) == (RunStatus.RUNNING, T0 + 60 * S)
    with pytest.raises(RunNotFound):
        await store.get_run(retry.id)
    # read again: the fence holds with the expiry as it now stands, with or without a retry
    [again] = await store.expired_leases(T0 + 61 * S, 10)
    assert await store.finish_run(run.id, "w1", status=RunStatus.FAILED, finished_at=T0 + 61 * S,
                                  error="reaped", retry=retry, lease_expires_at=again.lease_expires_at)
    assert (await store.get_run(retry.id)).status is RunStatus.QUEUED
    other = await running_run(store, job, T0 + S, lease=10 * S)
    assert not await store.finish_run(other.id, "w1", status=RunStatus.FAILED, finished_at=T0 + 20 * S,
                                      lease_expires_at=T0 + 5 * S)
    assert await store.finish_run(other.id, "w1", status=RunStatus.FAILED, finished_at=T0 + 20 * S,
                                  lease_expires_at=T0 + 11 * S)
