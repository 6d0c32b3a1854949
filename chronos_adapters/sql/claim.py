"""The due-job claim, one transaction: select the due jobs (locked, skipping locked ones, where rows are
locked), plan each with the engine's planner, insert the planned runs (a slot already taken is a
duplicate, left out), advance each job's ``next_run_at``, cancel what an overlap ``replace`` replaces,
count the recorded outcomes and hand the dispatches to the ``on_dispatch`` hook (the Kafka outbox) in the
same transaction. And the hand-out of runs that came due later (retries, jitter)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy import exc as sa_exc

from chronos_core.errors import StoreUnavailable
from chronos_core.models import ACTIVE_RUN_STATUSES, Job, JobStatus, OverlapPolicy, Run, RunStatus
from chronos_core.planning import jitter_order, replaced_reason
from chronos_core.ports import Claim, Dispatch, Planner

from .dialects import Dialect
from .dialects.base import chunks
from .engine import Database
from .notice_ops import insert_notices
from .outcomes import count_outcomes
from .rows import JOBS, RUNS, cut, memo, with_next_run_at
from .tables import jobs, runs, utc_text

__all__ = ["JobCache", "OnDispatch", "claim_due", "claim_due_runs", "due_run_ids"]

OnDispatch = Callable[[Connection, Sequence[Dispatch], datetime], None]
_ACTIVE = sorted(s.value for s in ACTIVE_RUN_STATUSES)


JobCache = dict[str, tuple[Any, Job]]
"""Jobs as last claimed, by id: (version, job). The version is what the claim's select reads besides
next_run_at (see ``Dialect.due_jobs``): a job whose row changed in any way (through any store, in any
process) no longer matches and is read again; updated_at alone would not do, since update_job stores
whatever it is given."""


def claim_due(db: Database, d: Dialect, cache: JobCache, cache_size: int, on_dispatch: OnDispatch | None,
              now: datetime, limit: int, planner: Planner) -> Claim:
    """The claim of at most ``limit`` due jobs, with ``cache`` (at most ``cache_size`` jobs: beyond, it
    starts over)."""
    for attempt in range(3):
        try:
            with db.transaction() as conn:
                return _claim_in(conn, d, cache, cache_size, on_dispatch, now, limit, planner)
        except sa_exc.IntegrityError:
            # A run for a planned slot appeared after we looked (a manual trigger or a retry at the
            # same instant): the claim was rolled back; plan again, the slot now counts as taken.
            if attempt == 2:
                raise StoreUnavailable("the claim kept conflicting with concurrent writes") from None
    raise AssertionError("unreachable")


def _due_jobs(conn: Connection, d: Dialect, cache: JobCache, cache_size: int, now: datetime,
              limit: int) -> list[Job]:
    """The due active jobs, oldest next_run_at first. Their definitions come from the cache when the
    stored row still matches the cached version; the others are read in full, one query per chunk."""
    rows = d.due_jobs(conn, JobStatus.ACTIVE.value, now, limit)
    entries = cache
    found: dict[str, Job] = {}
    missing: dict[str, Any] = {}
    for _, job_id, version in rows:
        hit = entries.get(job_id)
        if hit is not None and hit[0] == version:
            found[job_id] = hit[1]
        else:
            missing[job_id] = version
    if missing:
        if len(entries) + len(missing) > cache_size:
            entries.clear()
        for chunk in chunks(list(missing)):
            for row in conn.execute(select(jobs).where(jobs.c.id.in_(chunk))):
                job = found[row.id] = JOBS.load_row(row)
                entries[row.id] = (missing[row.id], job)
    # a copy per claim: the cached job is never handed out (its holder could change it)
    return [with_next_run_at(found[job_id], next_at) for next_at, job_id, _ in rows]


def _claim_in(conn: Connection, d: Dialect, cache: JobCache, cache_size: int,
              on_dispatch: OnDispatch | None, now: datetime, limit: int, planner: Planner) -> Claim:
    claim = Claim()
    due = _due_jobs(conn, d, cache, cache_size, now, limit)
    if not due:
        return claim
    # Only forbid/replace jobs look at their active runs; an `allow` job's planner gets [] without a
    # query (most jobs are `allow`).
    watched = [j.id for j in due if j.overlap is not OverlapPolicy.ALLOW]
    active: dict[str, list[str]] = defaultdict(list)
    for chunk in chunks(watched):
        for run_id, job_id in conn.execute(
                select(runs.c.id, runs.c.job_id)
                .where(runs.c.status.in_(_ACTIVE), runs.c.job_id.in_(chunk)).order_by(runs.c.id)):
            active[job_id].append(run_id)
    plans = [(job, planner(job, active.get(job.id, []), now)) for job in due]
    claim.jobs = len(plans)
    planned: list[Run] = []
    new: list[tuple[Any, ...]] = []
    made: list[tuple[Run, Job]] = []
    values = d.rows.values
    dt = memo(utc_text)
    next_at: dict[datetime | None, list[str]] = defaultdict(list)
    offsets: list[tuple[str, int]] = []  # (job id, next_offset) of the jittered jobs (others keep 0)
    replaces: list[tuple[Run, list[str]]] = []  # (the replacing run, the runs it replaces)
    for job, plan in plans:
        for run in plan.runs:
            # a queued run due later (the job's jitter) waits undispatched for claim_due_runs
            new.append(values(run, run.status is not RunStatus.QUEUED or run.due_at <= now, dt))
            planned.append(run)
            made.append((run, job))
            if plan.cancel and run.status is RunStatus.QUEUED:
                replaces.append((run, plan.cancel))
        next_at[plan.next_run_at].append(job.id)
        if job.jitter:
            offsets.append((job.id, jitter_order(job.id, plan.next_run_at, job.jitter)))
    taken: set[str] = set()
    if new:
        # slots that already have a run are duplicates, left out
        taken = d.insert_new_runs(conn, planned, new)
        claim.duplicates += len(taken)
        dispatch, recorded = claim.dispatch, claim.recorded
        queued = RunStatus.QUEUED
        for run, job in made:
            if taken and run.id in taken:
                continue
            if run.status is queued:
                if run.due_at <= now:
                    dispatch.append(Dispatch(run, job))
                else:
                    claim.waiting += 1
            else:
                recorded.append(run)
        outbox = [n for _, p in plans for n in p.notices]
        if outbox:  # the records' notifications (missed, skipped), with them
            went_in = {run.id for run, _ in made if not (taken and run.id in taken)}
            insert_notices(conn, [n for n in outbox if n.run_id in went_in])
    d.set_next_run_at(conn, next_at)
    if offsets:
        d.set_next_offsets(conn, offsets)
    for by, replaced in replaces:
        if by.id not in taken:  # a duplicate replaces nothing (its slot was planned again)
            _replace(conn, replaced, by, now, claim)
    if claim.recorded or claim.cancelled:
        count_outcomes(conn, d, [(r.finished_at or now, r.job_id, r.status)
                                 for r in (*claim.recorded, *claim.cancelled)])
    if on_dispatch is not None and claim.dispatch:
        on_dispatch(conn, claim.dispatch, now)
    return claim


def _replace(conn: Connection, run_ids: Sequence[str], by: Run, now: datetime, claim: Claim) -> None:
    """Overlap replace, in the claim's transaction: cancel the replaced runs still queued (one
    compare-and-set each: a start that lands first wins), ask the running ones to stop."""
    reason = cut(replaced_reason(by.scheduled_for))
    done: list[str] = []
    for run_id in run_ids:
        if conn.execute(update(runs).where(runs.c.id == run_id, runs.c.status == RunStatus.QUEUED.value)
                        .values(status=RunStatus.CANCELLED.value, finished_at=now, error=reason,
                                dispatch_due_at=None)).rowcount == 1:
            done.append(run_id)
    found = {r.id: RUNS.load_row(r) for r in conn.execute(select(runs).where(runs.c.id.in_(list(run_ids))))}
    claim.cancelled.extend(found[run_id] for run_id in done)
    claim.cancel.extend(run_id for run_id in run_ids if run_id in found and run_id not in done
                        and found[run_id].status is RunStatus.RUNNING)


def due_run_ids(db: Database, now: datetime, limit: int) -> list[str]:
    with db.transaction(read=True) as conn:
        return list(conn.scalars(select(runs.c.id).where(runs.c.dispatch_due_at <= now)
                                 .order_by(runs.c.dispatch_due_at, runs.c.id).limit(limit)))


def claim_due_runs(db: Database, d: Dialect, on_dispatch: OnDispatch | None, now: datetime, limit: int,
                   run_id: str | None) -> list[Dispatch]:
    """Hand out the queued runs whose dispatch is due (at most ``limit``; only ``run_id`` if given)."""
    with db.transaction() as conn:
        q = (select(runs).where(runs.c.dispatch_due_at <= now)
             .order_by(runs.c.dispatch_due_at, runs.c.id).limit(limit))
        if run_id is not None:
            q = q.where(runs.c.id == run_id)
        due = [RUNS.load_row(r) for r in conn.execute(d.skip_locked(q))]
        if not due:
            return []
        ids = [r.id for r in due]
        conn.execute(update(runs).where(runs.c.id.in_(ids)).values(dispatch_due_at=None))
        by_id = {j.id: j for j in map(JOBS.load_row, conn.execute(
            select(jobs).where(jobs.c.id.in_(sorted({r.job_id for r in due})))))}
        out = [Dispatch(r, by_id[r.job_id]) for r in due if r.job_id in by_id]
        if on_dispatch is not None and out:
            on_dispatch(conn, out, now)
    return out
