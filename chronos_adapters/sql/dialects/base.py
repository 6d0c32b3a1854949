"""What differs between SQLite and MySQL/MariaDB, as one interface: the named statements of the due-job
claim, the batched inserts and updates and the group commit (``sqlite.py`` and ``mysql.py`` implement
it), and the calls of the group commit they apply (:class:`Start`, :class:`Cancel`, :class:`Finish`,
:class:`Finished`).

The hot statements are driver SQL written once per store, binding datetimes as
:func:`~chronos_adapters.sql.tables.utc_text`: the claim selects, inserts and updates thousands of rows a
second and SQLAlchemy's generic path (a compiled statement, a bind processor per value) cost more than
the database. Everything else stays on SQLAlchemy Core, in the dialect-neutral modules."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, Select, select

from chronos_core.hooks import OutcomeHooks
from chronos_core.models import Job, JobSummary, Run, RunStatus

from ..rows import JOBS, RUNS, SUMMARIES, RunRows, memo
from ..tables import jobs, runs, utc_text

__all__ = ["CHUNK", "Cancel", "Dialect", "DueRow", "Finish", "Finished", "Start", "chunks"]

T = TypeVar("T")

CHUNK = 500  # ids per IN list / rows per CASE update

DueRow = tuple[datetime, str, Any]  # a due job: (next_run_at, id, version of its definition)


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass(slots=True)
class Start:
    """A ``start_run`` call waiting for the group commit."""

    run_id: str
    owner: str
    now: datetime
    until: datetime


@dataclass(slots=True)
class Cancel:
    """A ``cancel_queued_run`` call waiting for the group commit: a queued run ends ``status``
    (cancelled, or missed: a late slot a worker records) at ``now`` with ``reason`` as its error."""

    run_id: str
    now: datetime
    reason: str
    status: RunStatus


@dataclass(slots=True)
class Finish:
    """A ``finish_run`` call waiting for the group commit."""

    run_id: str
    owner: str | None
    status: RunStatus
    finished_at: datetime
    exit_code: int | None
    output: str
    error: str | None
    retry: Run | None
    output_lines: int
    lease: datetime | None = None  # the lease expiry the caller read (the reaper's fence), if any
    hooks: OutcomeHooks | None = None  # the job's notifications, chains, auto-pause
    result: str | None = None  # the run's result as JSON text

    @property
    def plain(self) -> bool:
        """No retry to insert, no lease to compare, no hooks: a dialect's fast path may apply it."""
        return self.retry is None and self.lease is None and self.hooks is None


@dataclass(slots=True)
class Finished:
    """An applied finish, as the job's summary folds it in."""

    run_id: str
    job_id: str
    status: RunStatus
    scheduled_for: datetime
    started_at: datetime | None
    finished_at: datetime
    final: bool = True  # no retry follows
    op: Finish | None = None  # with hooks: the finish, for the notices
    attempt: int = 1
    trigger: str = "schedule"


class Dialect(ABC):
    """One store's statements for its database. ``rows`` turns runs into rows; ``writer`` is the key of
    this store's rows of the per-minute totals (see ``tables.run_counts``)."""

    name = ""
    mark = "%s"  # the driver's parameter mark

    def __init__(self, engine: Engine, rows: RunRows, writer: str) -> None:
        self.rows = rows
        self.writer = writer
        self.quote = engine.dialect.identifier_preparer.quote
        self.run_columns = [c.name for c in runs.c]
        self.insert_head = f"INSERT INTO runs ({', '.join(self.quote(c) for c in self.run_columns)})"
        # the due jobs' version (see claim.JobCache): every column of the definition but next_run_at
        # (and next_offset, which follows it)
        self.definition = [self.quote(c.name) for c in jobs.c
                           if c.name not in ("next_run_at", "next_offset")]
        # the listings' readers of driver rows (rows.Codec.reader): a job (its table's columns first),
        # the summary joined after them (the whole job_summaries row), a run
        self.read_job: Callable[[Sequence[Any]], Job] = JOBS.reader(self.stored_time)
        self.read_joined_summary: Callable[[Sequence[Any]], JobSummary] = SUMMARIES.reader(
            self.stored_time, offset=len(jobs.c))
        self.read_run: Callable[[Sequence[Any]], Run] = RUNS.reader(self.stored_time)

    # SQLAlchemy Core modifiers ------------------------------------------------------------------
    def skip_locked(self, query: Select[Any]) -> Select[Any]:
        """Lock the selected rows, skipping rows another transaction holds (where rows are locked)."""
        return query

    def for_update(self, query: Select[Any]) -> Select[Any]:
        """Lock the selected rows for this transaction (where rows are locked)."""
        return query

    @abstractmethod
    def name_prefix(self, name: str) -> ColumnElement[bool]:
        """Job names that start with ``name``, exactly (case and trailing blanks count)."""

    # the claim ----------------------------------------------------------------------------------
    @abstractmethod
    def due_jobs(self, conn: Connection, status: str, now: datetime, limit: int) -> list[DueRow]:
        """The jobs of ``status`` due at ``now``, oldest ``next_run_at`` first (then smallest
        ``next_offset``: the order their jittered slots come due in), at most ``limit``: each with a
        version of its definition that changes whenever any column but ``next_run_at`` (and
        ``next_offset``) does."""

    @abstractmethod
    def set_next_run_at(self, conn: Connection, next_at: dict[datetime | None, list[str]]) -> None:
        """Each job's new ``next_run_at`` (the job ids by value)."""

    @abstractmethod
    def set_next_offsets(self, conn: Connection, offsets: Sequence[tuple[str, int]]) -> None:
        """Each (job id, ``next_offset``): the jitter order of the jittered jobs' new ``next_run_at``."""

    def insert_runs(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert runs given as :meth:`RunRows.values` (driver datetimes); a taken slot fails it."""
        conn.exec_driver_sql(
            f"{self.insert_head} VALUES ({', '.join([self.mark] * len(self.run_columns))})", rows)

    @abstractmethod
    def insert_new_runs(self, conn: Connection, planned: Sequence[Run],
                        rows: list[tuple[Any, ...]]) -> set[str]:
        """Insert the runs ``planned`` (as ``rows``) whose (job, slot, attempt) is not taken, also
        within ``planned``; the ids of those left out. Any other constraint still fails it."""

    def existing_slots(self, conn: Connection, planned: Sequence[Run]) -> set[tuple[str, datetime, int]]:
        """Which (job, slot, attempt) keys of ``planned`` already exist. Driver SQL with the slots as
        text: SQLAlchemy's expanding IN with a bind processor per slot cost more than the query (MySQL's
        claim runs this for every planned run)."""
        found: set[tuple[str, datetime, int]] = set()
        dt = memo(utc_text)
        for chunk in chunks(planned):
            job_ids = sorted({r.job_id for r in chunk})
            slots = sorted({dt(r.scheduled_for) for r in chunk})
            rows = conn.exec_driver_sql(
                f"SELECT job_id, scheduled_for, attempt FROM runs WHERE job_id IN "
                f"({', '.join([self.mark] * len(job_ids))}) "
                f"AND scheduled_for IN ({', '.join([self.mark] * len(slots))})", (*job_ids, *slots)).all()
            found.update((j, self.stored_time(s), a) for j, s, a in rows)
        return found

    @abstractmethod
    def stored_time(self, value: Any) -> datetime:
        """A ``UtcDateTime`` as a bare driver query returns it, as an aware datetime."""

    def missing_ids(self, conn: Connection, ids: list[str]) -> set[str]:
        """Which of the run ``ids`` are not in ``runs``."""
        present: set[str] = set()
        for chunk in chunks(ids):
            present.update(conn.execute(select(runs.c.id).where(runs.c.id.in_(chunk))).scalars())
        return set(ids) - present

    # the group commit ---------------------------------------------------------------------------
    @abstractmethod
    def update_runs(self, conn: Connection, rows: Sequence[dict[str, Any]],
                    fixed: dict[str, Any] | None = None) -> int:
        """UPDATE each run (by ``id``) with its own values (and the ``fixed`` ones), in few statements;
        the rows matched."""

    @abstractmethod
    def start_runs(self, conn: Connection, starts: Sequence[Start]) -> list[bool] | None:
        """Apply the starts whose run is queued (a second start of a run in the batch loses): whether
        each applied; None if this dialect could not decide them in one go (the caller checks each)."""

    @abstractmethod
    def finish_runs(self, conn: Connection, finishes: Sequence[Finish]
                    ) -> tuple[list[bool], list[Finished]] | None:
        """Apply the plain finishes (:attr:`Finish.plain`) whose run is running and held by the call's
        owner: whether each applied, and the applied ones; None as for :meth:`start_runs`."""

    @abstractmethod
    def read_summaries(self, conn: Connection, job_ids: Collection[str]) -> dict[str, JobSummary]:
        """The summaries of ``job_ids`` (sorted), locked for this transaction where rows are locked."""

    @abstractmethod
    def write_summaries(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Upsert summaries given as (job id, *the summary's columns), driver datetimes."""

    @abstractmethod
    def add_counts(self, conn: Connection, totals: list[tuple[Any, ...]],
                   per_job: list[tuple[Any, ...]]) -> None:
        """Add (bucket, writer, status, n) to ``run_counts`` and (bucket, job id, status, n) to
        ``job_run_counts``, in the order given."""
