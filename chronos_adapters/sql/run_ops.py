"""Runs: add one, read and list them, record live output, renew leases, find expired leases, delete
history, release undispatched ones. Each function is one call of the store's thread pool, on SQLAlchemy
Core, taking the :class:`~.engine.Database` and, where a statement differs, the store's
:class:`~.dialects.Dialect`. (Starts, cancels of queued runs and finishes go through the group commit,
``group_commit.py``.)"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, insert, select, update
from sqlalchemy import exc as sa_exc

from chronos_core.errors import JobNotFound, RunConflict, RunNotFound
from chronos_core.models import FINISHED_RUN_STATUSES, JobStatus, Run, RunStatus, Trigger
from chronos_core.ports import Dispatch

from .claim import OnDispatch
from .dialects import Dialect
from .dialects.base import chunks
from .engine import Database, driver_rows
from .outcomes import count_outcomes
from .rows import JOBS, RUNS
from .tables import jobs, runs

__all__ = ["add_run", "delete_runs", "expired_leases", "get_run", "list_runs", "next_due_time",
           "record_output", "release_undispatched", "renew_leases"]

_FINISHED = sorted(s.value for s in FINISHED_RUN_STATUSES)


def add_run(db: Database, d: Dialect, on_dispatch: OnDispatch | None, run: Run, dispatched: bool) -> None:
    try:
        with db.transaction() as conn:
            if conn.scalar(select(jobs.c.id).where(jobs.c.id == run.job_id)) is None:
                raise JobNotFound(run.job_id)
            conn.execute(insert(runs).values(d.rows.row(run, dispatched)))
            if run.status in FINISHED_RUN_STATUSES:
                count_outcomes(conn, d, [(run.finished_at or run.created_at, run.job_id, run.status)])
            if on_dispatch is not None and dispatched and run.status is RunStatus.QUEUED:
                job = JOBS.load_row(conn.execute(select(jobs).where(jobs.c.id == run.job_id)).one())
                on_dispatch(conn, [Dispatch(run, job)], run.created_at)
    except sa_exc.IntegrityError:
        raise RunConflict(f"a run of job {run.job_id} for {run.scheduled_for.isoformat()} attempt "
                          f"{run.attempt} already exists") from None


def get_run(db: Database, run_id: str) -> Run:
    with db.transaction(read=True) as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
    if row is None:
        raise RunNotFound(run_id)
    return RUNS.load_row(row)


def list_runs(db: Database, d: Dialect, read: Callable[[Sequence[Any]], Run], job_id: str | None,
              status: Collection[RunStatus] | None, before: str | None,
              limit: int, trigger: Collection[Trigger] | None, since: datetime | None,
              until: datetime | None) -> list[Run]:
    """A page of runs, newest first; ``read`` decodes a driver row of ``runs`` (the store's
    ``DecodedRows``)."""
    def query(statuses: Collection[RunStatus] | None) -> Select[Any]:
        q = select(runs).order_by(runs.c.id.desc()).limit(limit)
        if job_id is not None:
            q = q.where(runs.c.job_id == job_id)
        if statuses is not None:
            q = q.where(runs.c.status.in_(sorted(s.value for s in statuses)))
        if before is not None:
            q = q.where(runs.c.id < before)
        if trigger is not None:
            q = q.where(runs.c.trigger.in_(sorted(t.value for t in trigger)))
        if since is not None:
            q = q.where(runs.c.scheduled_for >= since)
        if until is not None:
            q = q.where(runs.c.scheduled_for <= until)
        return q

    # Across jobs, one query per status, each reading the (status, id) index newest first for at most
    # `limit` rows, merged here: one query with `status IN (...)` would sort every run of those statuses
    # (neither SQLite nor MySQL merges index ranges in order), a cost growing with history.
    if job_id is None and status is not None and len(status) > 1:
        queries = [query([s]) for s in sorted(status)]
    else:
        queries = [query(status)]
    with db.transaction(read=True) as conn:
        found = [read(r) for q in queries for r in driver_rows(conn, q)]
    if len(queries) > 1:
        found.sort(key=lambda r: r.id, reverse=True)
    return found[:limit]


def record_output(db: Database, d: Dialect, items: Sequence[tuple[str, tuple[str, int]]],
                  owner: str) -> set[str]:
    written: set[str] = set()
    with db.transaction() as conn:
        for run_id, (text, lines) in items:  # a worker holds a few runs: one statement each
            if conn.execute(update(runs).where(
                    runs.c.id == run_id, runs.c.status == RunStatus.RUNNING.value,
                    runs.c.owner == owner, runs.c.output_lines <= lines)
                    .values(output=d.rows.cap(text), output_lines=lines)).rowcount == 1:
                written.add(run_id)
    return written


def renew_leases(db: Database, d: Dialect, ids: Sequence[str], owner: str, until: datetime) -> set[str]:
    held: set[str] = set()
    with db.transaction() as conn:
        for chunk in chunks(ids):
            mine = [run_id for run_id, status, held_by in conn.execute(d.for_update(
                select(runs.c.id, runs.c.status, runs.c.owner).where(runs.c.id.in_(chunk))))
                if status == RunStatus.RUNNING.value and held_by == owner]
            if mine:
                conn.execute(update(runs).where(runs.c.id.in_(mine)).values(lease_expires_at=until))
            held.update(mine)
    return held


def expired_leases(db: Database, now: datetime, limit: int) -> list[Run]:
    q = (select(runs).where(runs.c.status == RunStatus.RUNNING.value, runs.c.lease_expires_at < now)
         .order_by(runs.c.lease_expires_at, runs.c.id).limit(limit))
    with db.transaction(read=True) as conn:
        return [RUNS.load_row(r) for r in conn.execute(q)]


def delete_runs(db: Database, job_id: str) -> int:
    with db.transaction() as conn:
        if conn.scalar(select(jobs.c.id).where(jobs.c.id == job_id)) is None:
            raise JobNotFound(job_id)
        return int(conn.execute(delete(runs).where(runs.c.job_id == job_id,
                                                   runs.c.status.in_(_FINISHED))).rowcount)


def next_due_time(db: Database) -> datetime | None:
    job_q = (select(jobs.c.next_run_at)
             .where(jobs.c.status == JobStatus.ACTIVE.value, jobs.c.next_run_at.is_not(None))
             .order_by(jobs.c.next_run_at).limit(1))
    run_q = (select(runs.c.dispatch_due_at).where(runs.c.dispatch_due_at.is_not(None))
             .order_by(runs.c.dispatch_due_at).limit(1))
    with db.transaction(read=True) as conn:
        times = [conn.scalar(job_q), conn.scalar(run_q)]
    found = [t for t in times if t is not None]
    return min(found) if found else None


def release_undispatched(db: Database, run_ids: Collection[str] | None) -> int:
    where = [runs.c.status == RunStatus.QUEUED.value, runs.c.dispatch_due_at.is_(None)]
    with db.transaction() as conn:
        if run_ids is None:
            return int(conn.execute(update(runs).where(*where)
                                    .values(dispatch_due_at=runs.c.due_at)).rowcount)
        count = 0
        ids = list(run_ids)
        for chunk in chunks(ids):
            count += conn.execute(update(runs).where(runs.c.id.in_(chunk), *where)
                                  .values(dispatch_due_at=runs.c.due_at)).rowcount
        return count
