"""Jobs: add, read, list, change (compare-and-set on what was read), delete, and their summaries. Each
function is one call of the store's thread pool, on SQLAlchemy Core, taking the
:class:`~.engine.Database` and, where a statement differs, the store's :class:`~.dialects.Dialect`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import Connection, Select, delete, insert, select, update
from sqlalchemy import exc as sa_exc

from chronos_core.errors import JobNotFound, NameConflict, RunConflict
from chronos_core.models import (
    ACTIVE_RUN_STATUSES,
    Job,
    JobStatus,
    JobSummary,
    Run,
    RunStatus,
    check_job_names,
)
from chronos_core.planning import jitter_order
from chronos_core.ports import JobChange

from .dialects import Dialect
from .dialects.base import chunks
from .engine import Database, driver_rows
from .outcomes import count_outcomes
from .rows import JOBS, RUNS, SUMMARIES, job_row, memo
from .tables import job_summaries, jobs, runs, utc_text

__all__ = ["add_jobs", "change_job", "delete_job", "get_job", "get_job_by_name", "list_jobs",
           "list_jobs_with_summaries", "read_summaries", "update_job"]

_ACTIVE = sorted(s.value for s in ACTIVE_RUN_STATUSES)


def _check_names(conn: Connection, names: list[str]) -> None:
    """:class:`NameConflict` for the first of ``names`` the jobs' unique index already holds. The
    ``IN`` compares as the index does: on MariaDB (PAD SPACE) a stored ``'foo '`` (from before names
    were refused with blanks at their ends) matches ``'foo'``, so the blanks are dropped here too."""
    taken: set[str] = set()
    for chunk in chunks(names):
        taken.update(t.rstrip(" ") for t in conn.scalars(select(jobs.c.name).where(jobs.c.name.in_(chunk))))
    for name in names:
        if name.rstrip(" ") in taken:
            raise NameConflict(name)


def add_jobs(db: Database, items: list[Job]) -> None:
    names = [j.name for j in items]
    check_job_names(names, index=True)
    try:
        with db.transaction() as conn:
            _check_names(conn, names)
            conn.execute(insert(jobs), [job_row(j) for j in items])
            conn.execute(insert(job_summaries), [{"job_id": j.id} for j in items])
    except sa_exc.IntegrityError:
        with db.transaction(read=True) as conn:  # lost a race: say which name
            _check_names(conn, names)
        raise RunConflict("a job with one of these ids already exists") from None


def get_job(db: Database, job_id: str) -> Job:
    with db.transaction(read=True) as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        raise JobNotFound(job_id)
    return JOBS.load_row(row)


def get_job_by_name(db: Database, name: str) -> Job:
    with db.transaction(read=True) as conn:
        row = conn.execute(select(jobs).where(jobs.c.name == name)).first()
    if row is None or row.name != name:  # MySQL's PAD SPACE collations ignore trailing blanks
        raise JobNotFound(name)
    return JOBS.load_row(row)


def _listing(q: Select[Any], d: Dialect, status: JobStatus | None, type: str | None, name: str | None,
             after: str | None, limit: int, last_status: Collection[RunStatus] | None) -> Select[Any]:
    """A page of jobs in id order, filtered as ``Store.list_jobs`` says."""
    q = q.order_by(jobs.c.id).limit(limit)
    if last_status is not None:
        q = q.where(jobs.c.id.in_(select(job_summaries.c.job_id).where(
            job_summaries.c.last_run_status.in_(sorted(s.value for s in last_status)))))
    if status is not None:
        q = q.where(jobs.c.status == status.value)
    if type is not None:
        q = q.where(jobs.c.type == type)
    if after is not None:
        q = q.where(jobs.c.id > after)
    if name:
        q = q.where(d.name_prefix(name))
    return q


def list_jobs(db: Database, d: Dialect, read: Callable[[Sequence[Any]], Job], status: JobStatus | None,
              type: str | None, name: str | None, after: str | None, limit: int,
              last_status: Collection[RunStatus] | None) -> list[Job]:
    """A page of jobs; ``read`` decodes a driver row of ``jobs`` (the store's ``DecodedRows``)."""
    q = _listing(select(jobs), d, status, type, name, after, limit, last_status)
    with db.transaction(read=True) as conn:
        return [read(r) for r in driver_rows(conn, q)]


_WITH_SUMMARIES = select(jobs, job_summaries).select_from(
    jobs.outerjoin(job_summaries, job_summaries.c.job_id == jobs.c.id))
_NO_SUMMARY_ROW = len(jobs.c) + [c.name for c in job_summaries.c].index("consecutive_failures")  # NULL: none
JOINED_SUMMARY = slice(len(jobs.c), len(jobs.c) + len(job_summaries.c))  # a listing row's summary columns


def list_jobs_with_summaries(db: Database, d: Dialect, read: Callable[[Sequence[Any]], Job],
                             summary: Callable[[Sequence[Any]], JobSummary], status: JobStatus | None,
                             type: str | None, name: str | None, after: str | None, limit: int,
                             last_status: Collection[RunStatus] | None) -> list[tuple[Job, JobSummary]]:
    """The page of ``list_jobs`` and each job's summary, in one query (the summaries' row joined);
    ``summary`` decodes the joined summary's columns (``d.read_joined_summary``, or the store's
    ``DecodedRows`` of it)."""
    q = _listing(_WITH_SUMMARIES, d, status, type, name, after, limit, last_status)
    none = _NO_SUMMARY_ROW
    with db.transaction(read=True) as conn:
        return [(read(r), JobSummary() if r[none] is None else summary(r)) for r in driver_rows(conn, q)]


def read_summaries(db: Database, ids: Sequence[str]) -> dict[str, JobSummary]:
    out: dict[str, JobSummary] = {}
    with db.transaction(read=True) as conn:
        for chunk in chunks(ids):
            q = (select(jobs.c.id, *[job_summaries.c[c] for c in SUMMARIES.columns])
                 .select_from(jobs.outerjoin(job_summaries, job_summaries.c.job_id == jobs.c.id))
                 .where(jobs.c.id.in_(chunk)))
            for row in conn.execute(q):
                out[row.id] = JobSummary() if row.consecutive_failures is None else SUMMARIES.load(row[1:])
    return out


def update_job(db: Database, job: Job) -> None:
    values = job_row(job)
    del values["id"]
    try:
        with db.transaction() as conn:
            if job.name != job.name.strip():  # refused unless it is the stored name (a rename to it)
                stored = conn.scalar(select(jobs.c.name).where(jobs.c.id == job.id))
                if stored is not None and stored != job.name:
                    check_job_names([job.name])
            if conn.execute(update(jobs).where(jobs.c.id == job.id).values(values)).rowcount == 0:
                raise JobNotFound(job.id)
    except sa_exc.IntegrityError:
        raise NameConflict(job.name) from None


def change_job(db: Database, d: Dialect, read: Job, changes: dict[str, Any],
               records: list[Run]) -> JobChange | None:
    if changes.get("name", read.name) != read.name:
        check_job_names([changes["name"]])
    after = dataclasses.replace(read, **changes)
    changed = JOBS.row(after)
    values = {c: changed[c] for c, f in zip(JOBS.columns, JOBS.fields, strict=True) if f in changes}
    if "next_run_at" in changes or "jitter" in changes:
        # the claim's order (see tables.jobs): next_run_at is compared below, so it is the one written
        values["next_offset"] = jitter_order(read.id, after.next_run_at, after.jitter)
    where = [jobs.c.id == read.id, jobs.c.updated_at == read.updated_at]
    if "next_run_at" in changes:
        where.append(jobs.c.next_run_at.is_(None) if read.next_run_at is None
                     else jobs.c.next_run_at == read.next_run_at)
    try:
        with db.transaction() as conn:
            if conn.execute(update(jobs).where(*where).values(values)).rowcount == 0:
                if conn.scalar(select(jobs.c.id).where(jobs.c.id == read.id)) is None:
                    raise JobNotFound(read.id)
                return None  # changed since it was read
            inserted = _insert_records(conn, d, records)
            job = JOBS.load_row(conn.execute(select(jobs).where(jobs.c.id == read.id)).one())
    except sa_exc.IntegrityError:
        raise NameConflict(str(values.get("name", read.name))) from None
    return JobChange(job, inserted)


def _insert_records(conn: Connection, d: Dialect, records: Sequence[Run]) -> list[Run]:
    """Insert finished runs (records of slots), those whose slot is taken left out; counted."""
    if not records:
        return []
    dt = memo(utc_text)
    taken = d.insert_new_runs(conn, records, [d.rows.values(r, True, dt) for r in records])
    inserted = [r for r in records if r.id not in taken]
    if inserted:
        count_outcomes(conn, d, [(r.finished_at or r.created_at, r.job_id, r.status) for r in inserted])
    return inserted


def delete_job(db: Database, d: Dialect, job_id: str) -> list[Run]:
    with db.transaction() as conn:
        # the job's row locked first: no run of it is inserted meanwhile (a claim skips it, an insert's
        # foreign key check waits), so the active runs read are exactly those deleted
        if conn.execute(d.for_update(select(jobs.c.id).where(jobs.c.id == job_id))).first() is None:
            raise JobNotFound(job_id)
        removed = [RUNS.load_row(r) for r in conn.execute(d.for_update(
            select(runs).where(runs.c.job_id == job_id, runs.c.status.in_(_ACTIVE)).order_by(runs.c.id)))]
        conn.execute(delete(runs).where(runs.c.job_id == job_id))
        conn.execute(delete(job_summaries).where(job_summaries.c.job_id == job_id))
        conn.execute(delete(jobs).where(jobs.c.id == job_id))
        return removed
