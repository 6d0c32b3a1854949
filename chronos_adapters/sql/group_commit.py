"""The body of a group commit: the ``start_run`` / ``cancel_queued_run`` / ``finish_run`` calls that arrived
together, applied in one transaction with each call's compare-and-set exact. The dialect applies what it
can in one go (its ``start_runs`` / ``finish_runs``); the rest, the cancels (a late slot a worker records
missed: one per late run, so a service that falls behind must not pay a transaction for each), and every
finish with a retry to insert, a lease to compare or hooks, is checked here run by run from rows read
(and locked where rows are locked) first.

Calls in one batch were all in flight at once, so any order is a valid one; the batch applies the starts,
then the cancels, then the finishes, each seeing what the ones before wrote (a start and a cancel of the
same queued run: the start wins, the cancel reports False, as if it had come second)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from chronos_core.errors import RunConflict
from chronos_core.models import RunStatus

from .dialects import Dialect
from .dialects.base import Cancel, Finish, Finished, Start, chunks
from .outcomes import count_outcomes, record_summaries
from .rows import cut, memo
from .tables import runs, utc_text

__all__ = ["apply_writes"]

_QUEUED, _RUNNING = RunStatus.QUEUED.value, RunStatus.RUNNING.value


Op = Start | Cancel | Finish


def apply_writes(conn: Connection, d: Dialect, ops: Sequence[Op]) -> list[Any]:
    """Apply ``ops`` in ``conn``'s transaction: per call True (applied), False (its compare-and-set
    failed) or the exception it raises (a retry whose slot is taken)."""
    results: list[Any] = [False] * len(ops)
    starts = [(i, op) for i, op in enumerate(ops) if isinstance(op, Start)]
    cancels = [(i, c) for i, c in enumerate(ops) if isinstance(c, Cancel)]
    finishes = [(i, fin) for i, fin in enumerate(ops) if isinstance(fin, Finish)]
    if starts:
        done = d.start_runs(conn, [op for _, op in starts])
        if done is None:
            done = _start_checked(conn, d, [op for _, op in starts])
        for (i, _), ok in zip(starts, done, strict=True):
            results[i] = ok
    if cancels:
        for (i, _), ok in zip(cancels, _cancel_checked(conn, d, [c for _, c in cancels]), strict=True):
            results[i] = ok
    if finishes:
        fast = d.finish_runs(conn, [fin for _, fin in finishes]) if all(
            fin.plain for _, fin in finishes) else None
        if fast is None:
            outcome, applied = _finish_checked(conn, d, [fin for _, fin in finishes])
        else:
            outcome, applied = fast
        for (i, _), result in zip(finishes, outcome, strict=True):
            results[i] = result
        record_summaries(conn, d, applied)
    return results


def _start_checked(conn: Connection, d: Dialect, starts: Sequence[Start]) -> list[bool]:
    queued: set[str] = set()
    for chunk in chunks(sorted({op.run_id for op in starts})):
        # filter the status here, not in SQL: given a long IN list and a status, SQLite's planner
        # (without ANALYZE) prefers the status index and would scan every queued run
        queued.update(run_id for run_id, status in conn.execute(d.for_update(
            select(runs.c.id, runs.c.status).where(runs.c.id.in_(chunk)))) if status == _QUEUED)
    results: list[bool] = []
    rows = []
    for op in starts:
        results.append(op.run_id in queued)
        if results[-1]:
            queued.discard(op.run_id)  # a second start of the same run in this batch loses
            rows.append({"id": op.run_id, "started_at": op.now, "owner": op.owner,
                         "lease_expires_at": op.until})
    d.update_runs(conn, rows, {"status": _RUNNING, "dispatch_due_at": None})
    return results


def _cancel_checked(conn: Connection, d: Dialect, cancels: Sequence[Cancel]) -> list[bool]:
    """queued -> cancelled/missed, each a compare-and-set on the run being queued (a second cancel of
    the same run in this batch loses), with the outcomes counted in the same transaction: a record is
    counted exactly when it is written."""
    queued: dict[str, str] = {}  # run id -> job id, of the runs still queued
    for chunk in chunks(sorted({c.run_id for c in cancels})):
        # (the status compared here, not in SQL: see _start_checked)
        queued.update((run_id, job_id) for run_id, status, job_id in conn.execute(d.for_update(
            select(runs.c.id, runs.c.status, runs.c.job_id).where(runs.c.id.in_(chunk))))
            if status == _QUEUED)
    results: list[bool] = []
    rows = []
    counted = []
    for c in cancels:
        job_id = queued.pop(c.run_id, None)
        results.append(job_id is not None)
        if job_id is not None:
            rows.append({"id": c.run_id, "status": c.status.value, "finished_at": c.now,
                         "error": cut(c.reason)})
            counted.append((c.now, job_id, c.status))
    if rows:
        d.update_runs(conn, rows, {"dispatch_due_at": None})
        count_outcomes(conn, d, counted)
    return results


def _finish_checked(conn: Connection, d: Dialect, finishes: Sequence[Finish]
                    ) -> tuple[list[Any], list[Finished]]:
    owners: dict[str, str | None] = {}
    leases: dict[str, datetime | None] = {}
    found: dict[str, tuple[str, datetime, datetime | None, int, str]] = {}
    for chunk in chunks(sorted({fin.run_id for fin in finishes})):
        for row in conn.execute(d.for_update(
                select(runs.c.id, runs.c.owner, runs.c.status, runs.c.lease_expires_at, runs.c.job_id,
                       runs.c.scheduled_for, runs.c.started_at, runs.c.attempt, runs.c.trigger)
                .where(runs.c.id.in_(chunk)))):
            if row.status == _RUNNING:
                owners[row.id], leases[row.id] = row.owner, row.lease_expires_at
                found[row.id] = (row.job_id, row.scheduled_for, row.started_at, row.attempt, row.trigger)
    retries = [fin.retry for fin in finishes if fin.retry is not None]
    taken = d.existing_slots(conn, retries) if retries else set()
    results: list[Any] = []
    rows, inserts = [], []
    applied: list[Finished] = []
    dt = memo(utc_text)
    cap = d.rows.cap
    for fin in finishes:
        results.append(False)
        if fin.run_id not in owners or owners[fin.run_id] != fin.owner:
            continue
        if fin.lease is not None and leases[fin.run_id] != fin.lease:
            continue  # renewed since the caller read it
        if fin.retry is not None:
            slot = (fin.retry.job_id, fin.retry.scheduled_for, fin.retry.attempt)
            if slot in taken:
                results[-1] = RunConflict(f"attempt {fin.retry.attempt} of this slot already exists")
                continue
            taken.add(slot)
            inserts.append(d.rows.values(fin.retry, False, dt))
        del owners[fin.run_id]
        results[-1] = True
        rows.append({"id": fin.run_id, "status": fin.status.value, "finished_at": fin.finished_at,
                     "exit_code": fin.exit_code, "output": cap(fin.output), "error": cut(fin.error),
                     "output_lines": fin.output_lines, "result": fin.result})
        job_id, slot_at, started, attempt, trigger = found[fin.run_id]
        applied.append(Finished(fin.run_id, job_id, fin.status, slot_at, started, fin.finished_at,
                                fin.retry is None, fin if fin.hooks is not None else None, attempt, trigger))
    d.update_runs(conn, rows, {"lease_expires_at": None, "dispatch_due_at": None})
    if inserts:
        d.insert_runs(conn, inserts)
    return results, applied
