"""What a run's outcome writes besides the run, in the transaction that records it: the outcome counts
(per-minute totals and per-job hourly counts, for ``stats``) and the job's summary (``JobSummary``,
folded in Python with the same rule as every store), with the notices its hooks make."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection

from chronos_core.hooks import Notice, outcome_notices, run_facts
from chronos_core.ids import new_id
from chronos_core.models import JobSummary, RunStatus

from .dialects import Dialect
from .dialects.base import Finished
from .notice_ops import insert_notices
from .rows import SUMMARIES, memo
from .tables import utc_text

__all__ = ["count_outcomes", "record_summaries"]


def count_outcomes(conn: Connection, d: Dialect, outcomes: Sequence[tuple[datetime, str, RunStatus]]) -> None:
    """Add run outcomes (end time, job id, status) to the counts, in the caller's transaction: the
    per-minute totals (this store's rows) and the per-job hourly counts, one upsert each of the batch's
    distinct keys, in key order (concurrent batches lock the rows in the same order)."""
    totals: dict[tuple[str, str, str], int] = defaultdict(int)
    per_job: dict[tuple[str, str, str], int] = defaultdict(int)
    minute = memo(lambda t: utc_text(t.replace(second=0, microsecond=0)))
    hour = memo(lambda t: utc_text(t.replace(minute=0, second=0, microsecond=0)))
    for at, job_id, status in outcomes:
        totals[(minute(at), d.writer, status.value)] += 1
        per_job[(hour(at), job_id, status.value)] += 1
    d.add_counts(conn, [(*key, n) for key, n in sorted(totals.items())],
                 [(*key, n) for key, n in sorted(per_job.items())])


def record_summaries(conn: Connection, d: Dialect, applied: Sequence[Finished]) -> None:
    """Fold applied finishes into their jobs' summaries, in the finishes' transaction: read the
    summaries (locked where rows are locked), fold in finishing order (``JobSummary.record``), insert the
    notices of the finishes with hooks, write the summaries back."""
    if not applied:
        return
    count_outcomes(conn, d, [(f.finished_at, f.job_id, f.status) for f in applied])
    job_ids = sorted({f.job_id for f in applied})
    summaries = d.read_summaries(conn, job_ids)
    outbox: list[Notice] = []
    for fin in sorted(applied, key=lambda f: f.finished_at):
        summary = summaries.get(fin.job_id)
        if summary is None:
            summary = summaries[fin.job_id] = JobSummary()
        before = dataclasses.replace(summary) if fin.op is not None else summary
        summary.record(fin.run_id, fin.status, fin.scheduled_for, fin.started_at, fin.finished_at,
                       fin.final)
        op = fin.op
        if op is not None and op.hooks is not None:
            facts = run_facts(fin.run_id, fin.status, fin.attempt, fin.trigger, fin.scheduled_for,
                              fin.started_at, fin.finished_at, op.exit_code, op.error, op.output)
            outbox += outcome_notices(op.hooks, job_id=fin.job_id, run=facts, status=fin.status,
                                      final=fin.final, before=before, after=summary,
                                      now=fin.finished_at, new_id=new_id)
    if outbox:
        insert_notices(conn, outbox)
    dt = memo(utc_text)
    d.write_summaries(conn, [(job_id, *SUMMARIES.values(summaries[job_id], dt)) for job_id in job_ids])
