"""Retention and statistics: pruning finished runs (by each job's ``history_limit`` and by age), old
outcome counts and settled notices, in short transactions; and ``stats`` from the outcome counts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, select

from chronos_core.hooks import NOTICE_RETENTION, NoticeStatus
from chronos_core.models import ACTIVE_RUN_STATUSES, FINISHED_RUN_STATUSES, JobStatus, RunStatus, Trigger
from chronos_core.ports import RunCounts, StoreStats

from .dialects.base import CHUNK, chunks
from .engine import Database
from .tables import job_run_counts, jobs, notices, run_counts, runs

__all__ = ["Pruner", "stats"]

_ACTIVE = sorted(s.value for s in ACTIVE_RUN_STATUSES)
_FINISHED = sorted(s.value for s in FINISHED_RUN_STATUSES)
# finished runs of a slot that was handed out (a missed or skipped record ran nothing), as
# Store.replaced_by_later_slot counts them
_RAN = sorted(s.value for s in FINISHED_RUN_STATUSES - {RunStatus.MISSED, RunStatus.SKIPPED})
_SLOT_TRIGGERS = [Trigger.SCHEDULE.value, Trigger.CATCH_UP.value]


class Pruner:
    """``prune_runs`` of one store: where its ``history_limit`` sweep resumes, and the excess runs it
    found and has not deleted yet."""

    def __init__(self) -> None:
        self.after: str | None = None  # where the history_limit sweep resumes
        self.backlog: list[str] = []  # excess runs found by the sweep, not deleted yet

    def prune(self, db: Database, now: datetime, max_age: timedelta | None, limit: int,
              default_limit: int | None = None) -> int:
        """At most ``limit`` deletions, in short transactions of a few hundred rows. Jobs with a
        ``history_limit`` are swept in id order, 200 per query (one window query ranks their finished
        runs); excess beyond ``limit`` waits in a backlog for the next call, so each job is ranked once
        per sweep (with ``default_limit``, the jobs without one are swept too, held to it). Then runs
        finished before ``now - max_age`` go, oldest first (indexed by ``finished_at``)."""
        deleted = 0
        if self.backlog:
            take, self.backlog = self.backlog[:limit], self.backlog[limit:]
            deleted += _delete_ids(db, take)
        while deleted < limit and not self.backlog:
            q = select(jobs.c.id, jobs.c.history_limit).order_by(jobs.c.id).limit(200)
            if default_limit is None:
                q = q.where(jobs.c.history_limit.is_not(None))
            if self.after is not None:
                q = q.where(jobs.c.id > self.after)
            with db.transaction(read=True) as conn:
                batch = conn.execute(q).all()
                if not batch:
                    self.after = None  # the sweep is complete; the next one starts over
                    break
                excess = _excess_runs(conn, {j: default_limit if n is None else n for j, n in batch})
            self.after = batch[-1][0]
            take, self.backlog = excess[:limit - deleted], excess[limit - deleted:]
            deleted += _delete_ids(db, take)
        with db.transaction() as conn:  # outcome counts older than two days (GET /stats reads one day)
            for table in (run_counts, job_run_counts):
                conn.execute(delete(table).where(table.c.bucket < now - timedelta(days=2)))
        # settled notices past NOTICE_RETENTION (their last attempt's due_at: the (status, due_at) index)
        for status in (NoticeStatus.DELIVERED.value, NoticeStatus.FAILED.value):
            with db.transaction() as conn:
                ids = list(conn.scalars(select(notices.c.id).where(
                    notices.c.status == status, notices.c.due_at < now - NOTICE_RETENTION).limit(CHUNK)))
                if ids:
                    conn.execute(delete(notices).where(notices.c.id.in_(ids)))
        if max_age is not None:
            cutoff = now - max_age
            while deleted < limit:
                with db.transaction(read=True) as conn:
                    old = list(conn.scalars(
                        select(runs.c.id).where(runs.c.finished_at < cutoff, runs.c.status.in_(_FINISHED))
                        .order_by(runs.c.finished_at).limit(min(CHUNK, limit - deleted))))
                if not old:
                    break
                deleted += _delete_ids(db, old)
        return deleted


def _excess_runs(conn: Connection, limits: dict[str, int]) -> list[str]:
    """Ids of finished runs beyond their job's history_limit, oldest first; but not those of the latest
    slot that ran (scheduled, catch-up) after an active run of their job: under overlap ``replace`` they
    are what says that run was replaced (``Store.replaced_by_later_slot``), so that it is not retried
    when it fails or is reaped."""
    ranked = (select(runs.c.id, runs.c.job_id, runs.c.scheduled_for,
                     func.row_number().over(partition_by=runs.c.job_id, order_by=runs.c.id.desc())
                     .label("rank"))
              .where(runs.c.job_id.in_(list(limits)), runs.c.status.in_(_FINISHED)).subquery())
    active_from = dict(conn.execute(  # the (status, job_id) index
        select(runs.c.job_id, func.min(runs.c.scheduled_for))
        .where(runs.c.status.in_(_ACTIVE), runs.c.job_id.in_(list(limits))).group_by(runs.c.job_id)).all())
    kept: set[tuple[str, Any]] = set()
    if active_from:
        for job_id, slot in conn.execute(
                select(runs.c.job_id, func.max(runs.c.scheduled_for))
                .where(runs.c.job_id.in_(list(active_from)), runs.c.status.in_(_RAN),
                       runs.c.trigger.in_(_SLOT_TRIGGERS)).group_by(runs.c.job_id)):
            if slot is not None and slot > active_from[job_id]:
                kept.add((job_id, slot))
    return [run_id for run_id, job_id, slot, rank in conn.execute(select(ranked).order_by(ranked.c.id))
            if rank > limits[job_id] and (job_id, slot) not in kept]


def _delete_ids(db: Database, ids: Sequence[str]) -> int:
    n = 0
    for chunk in chunks(ids):
        with db.transaction() as conn:  # short transactions: retention never holds a lock for long
            # by id alone (a finished status is final): with a status condition too, SQLite's planner
            # would scan the status index
            n += conn.execute(delete(runs).where(runs.c.id.in_(chunk))).rowcount
    return n


def stats(db: Database, since: Sequence[datetime], top: int) -> StoreStats:
    out = StoreStats()
    failures = [RunStatus.FAILED.value, RunStatus.TIMED_OUT.value]
    with db.transaction(read=True) as conn:
        for status, n in conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)):
            out.jobs[JobStatus(status)] = n
        for status in _ACTIVE:  # an index range count each
            n = conn.scalar(select(func.count()).select_from(runs).where(runs.c.status == status))
            if n:
                out.active[RunStatus(status)] = n
        for start in since:
            window = RunCounts(since=start)
            total = func.sum(run_counts.c.n)
            for status, n in conn.execute(
                    select(run_counts.c.status, total)
                    .where(run_counts.c.bucket >= start.replace(second=0, microsecond=0))
                    .group_by(run_counts.c.status)):
                window.by_status[RunStatus(status)] = int(n)
            recent = job_run_counts.c.bucket >= start.replace(minute=0, second=0, microsecond=0)
            runs_of: dict[str, int] = defaultdict(int)
            failures_of: dict[str, int] = defaultdict(int)
            for job_id, status, n in conn.execute(  # one scan of the window for both rankings
                    select(job_run_counts.c.job_id, job_run_counts.c.status,
                           func.sum(job_run_counts.c.n)).where(recent)
                    .group_by(job_run_counts.c.job_id, job_run_counts.c.status)):
                runs_of[job_id] += int(n)
                if status in failures:
                    failures_of[job_id] += int(n)
            window.busiest = sorted(runs_of.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            window.failing = sorted(failures_of.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            out.windows.append(window)
    return out
