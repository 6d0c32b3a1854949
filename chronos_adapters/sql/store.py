"""``SqlStore``: the ``Store`` port on SQLAlchemy 2.x Core, for SQLite (file) and MySQL/MariaDB (pymysql).

The drivers are synchronous: every call runs in the store's own thread pool (never on the event loop),
one transaction per call. ``start_run`` / ``finish_run`` calls that arrive together are coalesced into one
transaction (group commit) whose compare-and-set results stay exact per call. The due-job claim is one
transaction: ``FOR UPDATE SKIP LOCKED`` on MySQL (schedulers claim disjoint jobs), ``BEGIN IMMEDIATE`` on
SQLite (writers are serialized). Driver errors become ``chronos_core`` exceptions here, at the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import TypeAdapter
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from chronos_core.errors import (
    ChronosError,
    JobNotFound,
    NameConflict,
    RunConflict,
    RunNotFound,
    StoreUnavailable,
)
from chronos_core.hooks import (
    NOTICE_RETENTION,
    Notice,
    NoticeKind,
    NoticeStatus,
    OutcomeHooks,
    outcome_notices,
    run_facts,
)
from chronos_core.hookspec import ChainRule, Exclusion, NotifyRule
from chronos_core.ids import new_id
from chronos_core.models import (
    ACTIVE_RUN_STATUSES,
    FINISHED_RUN_STATUSES,
    Job,
    JobStatus,
    JobSummary,
    MisfirePolicy,
    OverlapPolicy,
    Run,
    RunStatus,
    Trigger,
    count_lines,
)
from chronos_core.planning import replaced_reason
from chronos_core.ports import Claim, Dispatch, JobChange, Planner, RunCounts, Store, StoreStats
from chronos_core.retry import RetryPolicy

from . import sqlite_batch
from .engine import Database, open_engine
from .migrate import upgrade_connection
from .tables import UtcDateTime, job_run_counts, job_summaries, jobs, notices, run_counts, runs

__all__ = ["SqlStore"]

log = logging.getLogger("chronos.store.sql")

T = TypeVar("T")

_ACTIVE = sorted(s.value for s in ACTIVE_RUN_STATUSES)
_FINISHED = sorted(s.value for s in FINISHED_RUN_STATUSES)
_RUN_STATUS = {s.value: s for s in RunStatus}
_TRIGGER = {t.value: t for t in Trigger}
_JOB_STATUS = {s.value: s for s in JobStatus}
_OVERLAP = {p.value: p for p in OverlapPolicy}
_MISFIRE = {p.value: p for p in MisfirePolicy}
_Guard = Callable[[list[dict[str, Any]]], tuple[str, list[Any]]]  # a chunk's extra WHERE and its params
_CHUNK = 500  # ids per IN list / rows per CASE update


_NOTIFY = TypeAdapter(list[NotifyRule])
_CHAIN = TypeAdapter(list[ChainRule])
_EXCLUDE = TypeAdapter(list[Exclusion])


def _dump_list(items: Sequence[Any]) -> str | None:
    if not items:
        return None
    return json.dumps([i.model_dump(mode="json", by_alias=True, exclude_none=True) for i in items],
                      separators=(",", ":"), ensure_ascii=False)


@functools.lru_cache(maxsize=4096)
def _load_list(adapter_name: str, text_: str | None) -> tuple[Any, ...]:
    if not text_:
        return ()
    return tuple({"notify": _NOTIFY, "chain": _CHAIN, "exclude": _EXCLUDE}[adapter_name].validate_json(text_))


@functools.lru_cache(maxsize=1024)
def _retry_policy(text_: str) -> RetryPolicy:
    return RetryPolicy.model_validate_json(text_)


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ----------------------------------------------------------------------------------- marshalling


def _job_values(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "name": job.name, "type": job.type,
        "payload": json.dumps(job.payload, separators=(",", ":"), ensure_ascii=False),
        "schedule": job.schedule, "timezone": job.timezone, "description": job.description,
        "retry": job.retry.model_dump_json(), "timeout": job.timeout, "overlap": job.overlap.value,
        "misfire": job.misfire.value, "misfire_grace": job.misfire_grace, "status": job.status.value,
        "created_at": job.created_at, "updated_at": job.updated_at, "next_run_at": job.next_run_at,
        "start_at": job.start_at, "end_at": job.end_at, "history_limit": job.history_limit,
        "notify": _dump_list(job.notify), "chain": _dump_list(job.then),
        "pause_after_failures": job.pause_after_failures, "alert_after": job.alert_after,
        "jitter": job.jitter, "exclude": _dump_list(job.exclude), "paused_reason": job.paused_reason,
    }


def _job(row: Any) -> Job:
    return Job(
        id=row.id, name=row.name, type=row.type, payload=json.loads(row.payload), schedule=row.schedule,
        timezone=row.timezone, description=row.description, retry=_retry_policy(row.retry),
        timeout=row.timeout, overlap=_OVERLAP[row.overlap], misfire=_MISFIRE[row.misfire],
        misfire_grace=row.misfire_grace, status=_JOB_STATUS[row.status], created_at=row.created_at,
        updated_at=row.updated_at, next_run_at=row.next_run_at, start_at=row.start_at, end_at=row.end_at,
        history_limit=row.history_limit, notify=list(_load_list("notify", row.notify)),
        then=list(_load_list("chain", row.chain)), pause_after_failures=row.pause_after_failures,
        alert_after=row.alert_after, jitter=row.jitter, exclude=list(_load_list("exclude", row.exclude)),
        paused_reason=row.paused_reason,
    )


def _copier() -> Callable[[Job, datetime | None], Job]:
    # A copy of a Job with another next_run_at, slot by slot (no __init__, no keyword arguments): a sixth
    # of what evolve costs, and the claim copies every job it hands out.
    names = [f.name for f in dataclasses.fields(Job) if f.name != "next_run_at"]
    src = ("def copy(job, next_run_at):\n    new = make(Job)\n"
           + "".join(f"    new.{n} = job.{n}\n" for n in names)
           + "    new.next_run_at = next_run_at\n    return new\n")
    scope: dict[str, Any] = {"make": object.__new__, "Job": Job}
    exec(src, scope)
    fn: Callable[[Job, datetime | None], Job] = scope["copy"]
    return fn


_with_next_run_at = _copier()


def _run(row: Any) -> Run:
    return Run(
        id=row.id, job_id=row.job_id, scheduled_for=row.scheduled_for, trigger=_TRIGGER[row.trigger],
        attempt=row.attempt, status=_RUN_STATUS[row.status], created_at=row.created_at, due_at=row.due_at,
        started_at=row.started_at, finished_at=row.finished_at, exit_code=row.exit_code, output=row.output,
        error=row.error, owner=row.owner, lease_expires_at=row.lease_expires_at,
        output_lines=row.output_lines, result=None if row.result is None else json.loads(row.result),
    )


_SUMMARY_COLUMNS = [c.name for c in job_summaries.c if c.name != "job_id"]


def _summary(row: Any) -> JobSummary:
    status = row.last_run_status
    return JobSummary(
        last_run_id=row.last_run_id, last_run_status=None if status is None else _RUN_STATUS[status],
        last_run_scheduled_for=row.last_run_scheduled_for, last_run_started_at=row.last_run_started_at,
        last_run_finished_at=row.last_run_finished_at, last_success_at=row.last_success_at,
        last_failure_at=row.last_failure_at, consecutive_failures=row.consecutive_failures,
        consecutive_failed_slots=row.consecutive_failed_slots,
    )


@dataclass(slots=True)
class _Finished:
    """An applied finish, as the job's summary folds it in."""

    run_id: str
    job_id: str
    status: RunStatus
    scheduled_for: datetime
    started_at: datetime | None
    finished_at: datetime
    final: bool = True  # no retry follows
    op: _Finish | None = None  # with hooks: the finish, for the notices
    attempt: int = 1
    trigger: str = "schedule"


@dataclass(slots=True)
class _Start:
    run_id: str
    owner: str
    now: datetime
    until: datetime


@dataclass(slots=True)
class _Finish:
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


def _json(value: Any) -> str | None:
    """A run result as stored: JSON text, NULL for None."""
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _cut(error: str | None, limit: int = 8000) -> str | None:
    """Errors are stored whole up to 8000 characters (a TEXT column holds 64 KiB of UTF-8 on MySQL)."""
    return error if error is None or len(error) <= limit else error[:limit] + " [...]"


def _utc_text(value: datetime) -> str:
    """An aware datetime as the driver value of the hot statements: naive UTC as
    ``YYYY-MM-DD HH:MM:SS.ffffff``. On SQLite that is exactly the text SQLAlchemy's ``DATETIME`` stores
    for ``UtcDateTime`` (comparisons and the unique slot key work on this text); MySQL reads it into a
    ``DATETIME(6)`` exactly, and pymysql escapes a string several times faster than a datetime."""
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: Chronos stores aware UTC datetimes")
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def _memo(convert: Callable[[datetime], Any]) -> Callable[[datetime | None], Any]:
    """``convert`` for one batch of rows, each distinct value converted once: a claim's runs share their
    creation time, and a first attempt's slot is also its due time."""
    done: dict[datetime, Any] = {}

    def memo(value: datetime | None) -> Any:
        if value is None:
            return None
        out = done.get(value)
        if out is None:
            out = done[value] = convert(value)
        return out
    return memo


def _from_utc_text(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _db_value(value: Any) -> Any:
    return _utc_text(value) if isinstance(value, datetime) else value


def _owner_guard(owners: dict[str, str | None], rows: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """A finish's compare-and-set on MySQL: running, and held by the call's owner (NULL-safe)."""
    params: list[Any] = [RunStatus.RUNNING.value]
    for r in rows:
        params += (r["id"], owners[r["id"]])
    return (f" AND `status` = %s AND `owner` <=> CASE `id` {' '.join(['WHEN %s THEN %s'] * len(rows))} END",
            params)


# -------------------------------------------------------------------------------------- the store


class SqlStore(Store):
    """Jobs and runs in SQLite or MySQL/MariaDB. ``url`` is a SQLAlchemy URL (``sqlite:///chronos.db``,
    ``mysql+pymysql://user:pw@host/db``); ``pool_size`` bounds the connections and the threads that use
    them; stored output is cut to its last ``output_limit`` characters; with ``create_schema``,
    :meth:`start` brings the schema to the newest migration. ``engine_options`` go to ``create_engine``."""

    def __init__(self, url: str, *, pool_size: int = 10, output_limit: int = 64 * 1024,
                 create_schema: bool = True,
                 on_dispatch: Callable[[Connection, Sequence[Dispatch], datetime], None] | None = None,
                 **engine_options: Any) -> None:
        self.url = url
        # called with the transaction's connection whenever runs are handed out for dispatch (claims,
        # retries, manual triggers): the Kafka outbox writes its messages in the same transaction
        self.on_dispatch = on_dispatch
        self.pool_size = pool_size
        self.output_limit = output_limit
        self.create_schema = create_schema
        self.engine_options = engine_options
        self.max_write_batch = 500
        self._db: Database | None = None
        self._sqlite = make_url(url).get_backend_name() == "sqlite"
        self._pending: list[tuple[_Start | _Finish, asyncio.Future[Any]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        # group commits in flight at once: MySQL overlaps one batch's commit with the next batch; SQLite
        # serializes writers anyway
        self.parallel_commits = 1 if self._sqlite else 2
        self._prune_after: str | None = None  # where the history_limit sweep resumes
        self._prune_backlog: list[str] = []  # excess runs found by the sweep, not deleted yet
        # Jobs as last claimed, by id: (version, job). The version is what the claim's select reads
        # besides next_run_at: the definition columns themselves on SQLite, a digest of them computed by
        # MySQL. A job whose row changed in any way (through any store, in any process) no longer matches
        # and is read again; updated_at alone would not do, since update_job stores whatever it is given.
        self.job_cache_size = 50_000
        self._job_cache: dict[str, tuple[Any, Job]] = {}
        # this instance's rows of the per-minute totals (see tables.run_counts)
        self._writer_id = uuid.uuid4().hex[:16]

    def __repr__(self) -> str:
        return f"SqlStore({make_url(self.url).render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (after :meth:`start`)."""
        return self._database.engine

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._db is not None:
            return
        engine, threads = open_engine(self.url, pool_size=self.pool_size, options=self.engine_options)
        self._db = Database(engine, threads)
        self._prepare_sql(engine)
        try:
            if self.create_schema:
                await self._call(_upgrade, engine)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        while self._flushers:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*self._flushers)
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def ping(self) -> None:
        def ping() -> None:
            with self._tx(read=True) as conn:
                conn.execute(select(literal(1)))
        await self._call(ping)

    # plumbing ---------------------------------------------------------------------------------
    @property
    def _database(self) -> Database:
        if self._db is None:
            raise RuntimeError("the store is not started")
        return self._db

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` (one transaction) in the store's thread pool, driver errors as Chronos errors."""
        if self._db is None:
            raise StoreUnavailable("the store is not started")
        return await self._db.call(fn, *args)

    def _tx(self, read: bool = False) -> contextlib.AbstractContextManager[Connection]:
        """One transaction (see :meth:`Database.transaction`)."""
        return self._database.transaction(read)

    def _locking(self, query: Select[Any]) -> Select[Any]:
        """MySQL: lock the selected rows, skipping rows another transaction holds (SQLite serializes
        writers with BEGIN IMMEDIATE instead)."""
        return query if self._sqlite else query.with_for_update(skip_locked=True)

    def _for_update(self, query: Select[Any]) -> Select[Any]:
        return query if self._sqlite else query.with_for_update()

    def _run_params(self, run: Run, dispatched: bool,
                    dt: Callable[[datetime | None], Any]) -> tuple[Any, ...]:
        """The run's insert parameters, in the order of ``runs``' columns, datetimes converted by ``dt``."""
        due = dt(run.due_at)
        return (run.id, run.job_id, dt(run.scheduled_for), run.trigger.value, run.attempt, run.status.value,
                dt(run.created_at), due, due if run.status is RunStatus.QUEUED and not dispatched else None,
                dt(run.started_at), dt(run.finished_at), run.exit_code, self._cap(run.output),
                _cut(run.error), run.owner, dt(run.lease_expires_at), run.output_lines, _json(run.result))

    def _run_values(self, run: Run, dispatched: bool) -> dict[str, Any]:
        waiting = run.status is RunStatus.QUEUED and not dispatched
        return {
            "id": run.id, "job_id": run.job_id, "scheduled_for": run.scheduled_for,
            "trigger": run.trigger.value, "attempt": run.attempt, "status": run.status.value,
            "created_at": run.created_at, "due_at": run.due_at,
            "dispatch_due_at": run.due_at if waiting else None, "started_at": run.started_at,
            "finished_at": run.finished_at, "exit_code": run.exit_code,
            "output": self._cap(run.output), "error": _cut(run.error), "owner": run.owner,
            "lease_expires_at": run.lease_expires_at, "output_lines": run.output_lines,
            "result": _json(run.result),
        }

    def _prepare_sql(self, engine: Engine) -> None:
        """The claim's hot statements as driver SQL, written once: the claim selects, inserts and
        updates thousands of rows a second and SQLAlchemy's generic path costs more than the database."""
        dialect = engine.dialect
        quote = dialect.identifier_preparer.quote
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        # the due jobs: next_run_at, id, then the version (see _job_cache); the index (status,
        # next_run_at) serves the condition and the order
        definition = [quote(c.name) for c in jobs.c if c.name != "next_run_at"]
        version = (", ".join(definition) if self._sqlite
                   else f"SHA2(JSON_ARRAY({', '.join(definition)}), 256)")
        self._due_sql = (f"SELECT next_run_at, id, {version} FROM jobs WHERE status = {mark} AND "
                         f"next_run_at <= {mark} ORDER BY next_run_at LIMIT {mark}"
                         + ("" if self._sqlite else " FOR UPDATE SKIP LOCKED"))
        self._due_fields = (f"next_run_at || char(31) || id || char(31) || "
                            f"json_array({', '.join(definition)})")
        self._due_rest = ("FROM jobs WHERE status = ? AND next_run_at <= ? ORDER BY next_run_at LIMIT ?")
        self._quote = quote
        self._run_columns = [c.name for c in runs.c]
        if self._run_columns != ["id", "job_id", "scheduled_for", "trigger", "attempt", "status",
                                 "created_at", "due_at", "dispatch_due_at", "started_at", "finished_at",
                                 "exit_code", "output", "error", "owner", "lease_expires_at",
                                 "output_lines", "result"]:
            raise AssertionError("_run_params no longer matches the runs table")
        # datetimes bound as driver values without SQLAlchemy's per-value processors (see _utc_text)
        self._to_db: Callable[[datetime], str] = _utc_text
        self._datetime_columns = {c.name for c in runs.c if isinstance(c.type, UtcDateTime)}
        self._insert_head = f"INSERT INTO runs ({', '.join(quote(c) for c in self._run_columns)})"
        self._insert_sql = f"{self._insert_head} VALUES ({', '.join([mark] * len(self._run_columns))})"
        # only the slot key: any other constraint (a primary key) still fails the statement
        slot_key = ", ".join(quote(c) for c in ("job_id", "scheduled_for", "attempt"))
        self._skip_taken = f" ON CONFLICT ({slot_key}) DO NOTHING"
        # SQLite's group commit: UPDATE … FROM (VALUES …) of the calls whose compare-and-set holds
        self._start_set = (f"status = '{RunStatus.RUNNING.value}', dispatch_due_at = NULL, "
                           "started_at = v.column2, owner = v.column3, lease_expires_at = v.column4")
        self._finish_set = ("status = v.column2, finished_at = v.column3, exit_code = v.column4, "
                            "output = v.column5, error = v.column6, output_lines = v.column7, "
                            "result = v.column8, "
                            "lease_expires_at = NULL, dispatch_due_at = NULL")
        summary_columns = ["job_id", *_SUMMARY_COLUMNS]
        self._summary_head = (f"INSERT INTO job_summaries ({', '.join(quote(c) for c in summary_columns)})")
        self._counts_sql = []
        for table, key in (("run_counts", "writer"), ("job_run_counts", "job_id")):
            tail = (f" ON CONFLICT (bucket, {key}, status) DO UPDATE SET n = {table}.n + excluded.n"
                    if self._sqlite else " ON DUPLICATE KEY UPDATE n = n + VALUES(n)")
            self._counts_sql.append((f"INSERT INTO {table} (bucket, {key}, status, n)", tail))
        if self._sqlite:
            self._summary_tail = (" ON CONFLICT (job_id) DO UPDATE SET "
                                  + ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in _SUMMARY_COLUMNS))
        else:
            self._summary_tail = (" ON DUPLICATE KEY UPDATE "
                                  + ", ".join(f"{quote(c)} = VALUES({quote(c)})" for c in _SUMMARY_COLUMNS))

    def _insert_runs(self, conn: Connection, params: list[tuple[Any, ...]], *,
                     skip_taken_slots: bool = False) -> set[str]:
        """Insert runs given as :meth:`_run_params`; with ``skip_taken_slots`` (SQLite only) a row whose
        (job, slot, attempt) is already taken is left out instead of failing the statement, and the ids
        of the rows left out are returned (found by id only when the inserted count falls short: the ids
        are new, so every one present was inserted here)."""
        if self._sqlite:  # multi-row statements: see sqlite_batch
            tail = self._skip_taken if skip_taken_slots else ""
            if sqlite_batch.insert_rows(conn, self._insert_head, params, tail) == len(params):
                return set()
        elif not skip_taken_slots:
            conn.exec_driver_sql(self._insert_sql, params)
            return set()
        elif conn.exec_driver_sql(self._insert_sql + self._skip_taken, params).rowcount == len(params):
            return set()
        ids = [p[0] for p in params]
        present: set[str] = set()
        for chunk in _chunks(ids):
            present.update(conn.execute(select(runs.c.id).where(runs.c.id.in_(chunk))).scalars())
        return set(ids) - present

    def _set_next_run_at(self, conn: Connection, next_at: dict[datetime | None, list[str]]) -> None:
        """Each claimed job's new ``next_run_at`` as driver SQL (a statement compiled per claim cost more
        than the update): on SQLite one ``UPDATE … FROM (VALUES …)`` per chunk (see sqlite_batch), and
        on MySQL one ``WHERE id IN`` update per distinct value when there are few, else one ``CASE`` per
        chunk (one round trip)."""
        if self._sqlite:
            sqlite_batch.update_from_values(conn, "jobs", "next_run_at = v.column2", [
                (job_id, text_) for value, job_ids in next_at.items()
                for text_ in [None if value is None else _utc_text(value)] for job_id in job_ids])
            return
        if len(next_at) <= 8:
            for value, job_ids in next_at.items():
                for chunk in _chunks(job_ids):
                    conn.exec_driver_sql(
                        f"UPDATE jobs SET next_run_at = %s WHERE id IN ({', '.join(['%s'] * len(chunk))})",
                        (_db_value(value), *chunk))
            return
        pairs = [(job_id, _db_value(value)) for value, job_ids in next_at.items() for job_id in job_ids]
        for part in _chunks(pairs):
            params: list[Any] = [x for pair in part for x in pair]
            params += (job_id for job_id, _ in part)
            conn.exec_driver_sql(
                f"UPDATE jobs SET next_run_at = CASE id {' '.join(['WHEN %s THEN %s'] * len(part))} END "
                f"WHERE id IN ({', '.join(['%s'] * len(part))})", tuple(params))

    def _cap(self, output: str) -> str:
        return output if len(output) <= self.output_limit else output[-self.output_limit:]

    def _existing_slots(self, conn: Connection, planned: Sequence[Run]) -> set[tuple[str, datetime, int]]:
        """Which (job, slot, attempt) keys of ``planned`` already exist. Driver SQL with the slots as
        text (see _utc_text): SQLAlchemy's expanding IN with a bind processor per slot cost more than the
        query (MySQL's claim runs this for every planned run)."""
        found: set[tuple[str, datetime, int]] = set()
        mark = "?" if self._sqlite else "%s"
        dt = _memo(_utc_text)
        for chunk in _chunks(planned):
            job_ids = sorted({r.job_id for r in chunk})
            slots = sorted({dt(r.scheduled_for) for r in chunk})
            rows = conn.exec_driver_sql(
                f"SELECT job_id, scheduled_for, attempt FROM runs WHERE job_id IN "
                f"({', '.join([mark] * len(job_ids))}) "
                f"AND scheduled_for IN ({', '.join([mark] * len(slots))})", (*job_ids, *slots)).all()
            if self._sqlite:
                found.update((j, datetime.fromisoformat(s).replace(tzinfo=UTC), a) for j, s, a in rows)
            else:
                found.update((j, s.replace(tzinfo=UTC), a) for j, s, a in rows)
        return found

    def _bulk_update(self, conn: Connection, key: str, rows: Sequence[dict[str, Any]],
                     fixed: dict[str, Any] | None = None, guard: _Guard | None = None) -> int:
        """UPDATE each row (by ``key``) with its own values, in few statements: an executemany on SQLite
        (in-process, cheap), one CASE statement per chunk on MySQL (one round trip), there with the extra
        condition ``guard`` makes for each chunk. Returns the rows matched."""
        if not rows:
            return 0
        fixed = fixed or {}
        cols = [c for c in rows[0] if c != key]
        if self._sqlite:  # driver SQL, datetimes converted as for inserts
            dt = _memo(self._to_db)
            times = self._datetime_columns
            sets = ", ".join(f"{self._quote(c)} = ?" for c in [*cols, *fixed])
            tail = tuple(dt(v) if c in times else v for c, v in fixed.items())
            return int(conn.exec_driver_sql(f"UPDATE runs SET {sets} WHERE {self._quote(key)} = ?", [
                tuple(dt(r[c]) if c in times else r[c] for c in cols) + tail + (r[key],) for r in rows]
            ).rowcount)
        size = matched = 0
        chunk: list[dict[str, Any]] = []
        for r in rows:
            chunk.append(r)
            size += sum(len(v) for v in r.values() if isinstance(v, str))
            if len(chunk) >= _CHUNK or size > 4_000_000:
                matched += self._case_update(conn, key, cols, chunk, fixed, guard)
                chunk, size = [], 0
        if chunk:
            matched += self._case_update(conn, key, cols, chunk, fixed, guard)
        return matched

    @staticmethod
    def _case_update(conn: Connection, key: str, cols: list[str], rows: list[dict[str, Any]],
                     fixed: dict[str, Any], guard: _Guard | None = None) -> int:
        """``UPDATE runs SET c = CASE key WHEN k1 THEN v1 ... END ... WHERE key IN (...)``, written as
        driver SQL: building it as SQLAlchemy expressions costs more than the round trips it saves."""
        whens = " ".join(["WHEN %s THEN %s"] * len(rows))
        sets: list[str] = []
        params: list[Any] = []
        dt = _memo(_utc_text)
        for c in cols:
            sets.append(f"`{c}` = CASE `{key}` {whens} END")
            for r in rows:
                v = r[c]
                params += (r[key], dt(v) if isinstance(v, datetime) else v)
        for c, v in fixed.items():
            sets.append(f"`{c}` = %s")
            params.append(_db_value(v))
        params += (r[key] for r in rows)
        extra = ""
        if guard is not None:
            extra, more = guard(rows)
            params += more
        # SQLAlchemy's MySQL dialects set CLIENT.FOUND_ROWS: the rowcount is the rows matched
        return int(conn.exec_driver_sql(f"UPDATE runs SET {', '.join(sets)} WHERE `{key}` IN "
                                        f"({', '.join(['%s'] * len(rows))}){extra}", tuple(params)).rowcount)

    # jobs -------------------------------------------------------------------------------------
    async def add_jobs(self, jobs_: Sequence[Job]) -> None:
        seen: set[str] = set()
        for job in jobs_:
            if job.name in seen:
                raise NameConflict(job.name)
            seen.add(job.name)
        if jobs_:
            await self._call(self._add_jobs, list(jobs_))

    def _add_jobs(self, items: list[Job]) -> None:
        names = [j.name for j in items]
        try:
            with self._tx() as conn:
                self._check_names(conn, names)
                conn.execute(insert(jobs), [_job_values(j) for j in items])
                conn.execute(insert(job_summaries), [{"job_id": j.id} for j in items])
        except sa_exc.IntegrityError:
            with self._tx(read=True) as conn:  # lost a race: say which name
                self._check_names(conn, names)
            raise RunConflict("a job with one of these ids already exists") from None

    @staticmethod
    def _check_names(conn: Connection, names: list[str]) -> None:
        taken: set[str] = set()
        for chunk in _chunks(names):
            taken.update(conn.scalars(select(jobs.c.name).where(jobs.c.name.in_(chunk))))
        for name in names:
            if name in taken:
                raise NameConflict(name)

    async def get_job(self, job_id: str) -> Job:
        return await self._call(self._get_job, job_id)

    def _get_job(self, job_id: str) -> Job:
        with self._tx(read=True) as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)

    async def get_job_by_name(self, name: str) -> Job:
        def get() -> Job:
            with self._tx(read=True) as conn:
                row = conn.execute(select(jobs).where(jobs.c.name == name)).first()
            if row is None or row.name != name:  # MySQL's PAD SPACE collations ignore trailing blanks
                raise JobNotFound(name)
            return _job(row)
        return await self._call(get)

    async def list_jobs(self, *, status: JobStatus | None = None, type: str | None = None,
                        name: str | None = None, after: str | None = None, limit: int = 100,
                        last_status: Collection[RunStatus] | None = None) -> list[Job]:
        q = select(jobs).order_by(jobs.c.id).limit(limit)
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
            if self._sqlite:  # LIKE is case-insensitive on SQLite; compare the prefix exactly
                q = q.where(func.substr(jobs.c.name, 1, len(name)) == name)
            else:  # binary collation: LIKE is exact (and, unlike =, counts trailing blanks)
                escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                q = q.where(jobs.c.name.like(escaped + "%", escape="\\"))

        def list_() -> list[Job]:
            with self._tx(read=True) as conn:
                return [_job(r) for r in conn.execute(q)]
        return await self._call(list_)

    async def job_summaries(self, job_ids: Collection[str]) -> dict[str, JobSummary]:
        ids = sorted(set(job_ids))
        if not ids:
            return {}

        def read() -> dict[str, JobSummary]:
            out: dict[str, JobSummary] = {}
            with self._tx(read=True) as conn:
                for chunk in _chunks(ids):
                    q = (select(jobs.c.id, *[job_summaries.c[c] for c in _SUMMARY_COLUMNS])
                         .select_from(jobs.outerjoin(job_summaries, job_summaries.c.job_id == jobs.c.id))
                         .where(jobs.c.id.in_(chunk)))
                    for row in conn.execute(q):
                        out[row.id] = JobSummary() if row.consecutive_failures is None else _summary(row)
            return out
        return await self._call(read)

    async def update_job(self, job: Job) -> None:
        def update_() -> None:
            values = _job_values(job)
            del values["id"]
            try:
                with self._tx() as conn:
                    if conn.execute(update(jobs).where(jobs.c.id == job.id).values(values)).rowcount == 0:
                        raise JobNotFound(job.id)
            except sa_exc.IntegrityError:
                raise NameConflict(job.name) from None
        await self._call(update_)

    async def change_job(self, read: Job, changes: Mapping[str, Any], *,
                         records: Sequence[Run] = ()) -> JobChange | None:
        if "id" in changes:
            raise ValueError("a job's id never changes")
        return await self._call(self._change_job, read, dict(changes), list(records))

    def _change_job(self, read: Job, changes: dict[str, Any], records: list[Run]) -> JobChange | None:
        values = {k: v for k, v in _job_values(dataclasses.replace(read, **changes)).items() if k in changes}
        where = [jobs.c.id == read.id, jobs.c.updated_at == read.updated_at]
        if "next_run_at" in changes:
            where.append(jobs.c.next_run_at.is_(None) if read.next_run_at is None
                         else jobs.c.next_run_at == read.next_run_at)
        try:
            with self._tx() as conn:
                if conn.execute(update(jobs).where(*where).values(values)).rowcount == 0:
                    if conn.scalar(select(jobs.c.id).where(jobs.c.id == read.id)) is None:
                        raise JobNotFound(read.id)
                    return None  # changed since it was read
                inserted = self._insert_records(conn, records)
                job = _job(conn.execute(select(jobs).where(jobs.c.id == read.id)).one())
        except sa_exc.IntegrityError:
            raise NameConflict(str(values.get("name", read.name))) from None
        return JobChange(job, inserted)

    def _insert_records(self, conn: Connection, records: Sequence[Run]) -> list[Run]:
        """Insert finished runs (records of slots), those whose slot is taken left out; counted."""
        if not records:
            return []
        if self._sqlite:
            dt = _memo(self._to_db)
            taken = self._insert_runs(conn, [self._run_params(r, True, dt) for r in records],
                                      skip_taken_slots=True)
            inserted = [r for r in records if r.id not in taken]
        else:
            existing = self._existing_slots(conn, records)
            inserted = []
            for r in records:
                if (r.job_id, r.scheduled_for, r.attempt) not in existing:
                    existing.add((r.job_id, r.scheduled_for, r.attempt))
                    inserted.append(r)
            if inserted:
                dt = _memo(self._to_db)
                self._insert_runs(conn, [self._run_params(r, True, dt) for r in inserted])
        if inserted:
            self._count_outcomes(conn, [(r.finished_at or r.created_at, r.job_id, r.status)
                                        for r in inserted])
        return inserted

    async def delete_job(self, job_id: str) -> list[Run]:
        def delete_() -> list[Run]:
            with self._tx() as conn:
                # the job's row locked first: no run of it is inserted meanwhile (a claim skips it, an
                # insert's foreign key check waits), so the active runs read are exactly those deleted
                found = conn.execute(self._for_update(select(jobs.c.id).where(jobs.c.id == job_id)))
                if found.first() is None:
                    raise JobNotFound(job_id)
                removed = [_run(r) for r in conn.execute(self._for_update(
                    select(runs).where(runs.c.job_id == job_id, runs.c.status.in_(_ACTIVE))
                    .order_by(runs.c.id)))]
                conn.execute(delete(runs).where(runs.c.job_id == job_id))
                conn.execute(delete(job_summaries).where(job_summaries.c.job_id == job_id))
                conn.execute(delete(jobs).where(jobs.c.id == job_id))
                return removed
        return await self._call(delete_)

    # scheduling -------------------------------------------------------------------------------
    async def claim_due(self, now: datetime, limit: int, planner: Planner) -> Claim:
        return await self._call(self._claim_due, now, limit, planner)

    def _claim_due(self, now: datetime, limit: int, planner: Planner) -> Claim:
        for attempt in range(3):
            try:
                with self._tx() as conn:
                    return self._claim_in(conn, now, limit, planner)
            except sa_exc.IntegrityError:
                # A run for a planned slot appeared after we looked (a manual trigger or a retry at the
                # same instant): the claim was rolled back; plan again, the slot now counts as taken.
                if attempt == 2:
                    raise StoreUnavailable("the claim kept conflicting with concurrent writes") from None
        raise AssertionError("unreachable")

    def _due_jobs(self, conn: Connection, now: datetime, limit: int) -> list[Job]:
        """The due active jobs, oldest next_run_at first (locked on MySQL). Their definitions come from
        the job cache when the stored row still matches the cached version; the others are read in
        full, in one query per chunk."""
        # through SQLAlchemy (not the bare cursor), so driver errors are wrapped and mapped as elsewhere
        if self._sqlite:  # folded into one row (see sqlite_batch); the version is the definition as JSON
            due = sqlite_batch.select_folded(conn, self._due_fields, self._due_rest,
                                             (JobStatus.ACTIVE.value, self._to_db(now), limit))
            due.sort()  # by next_run_at (stored text sorts as time), the order of the folded rows
            rows = [(_from_utc_text(r[0]), r[1], r[2]) for r in due]
        else:
            due = conn.exec_driver_sql(self._due_sql, (JobStatus.ACTIVE.value, self._to_db(now),
                                                        limit)).all()
            rows = [(r[0].replace(tzinfo=UTC), r[1], r[2]) for r in due]
        cache = self._job_cache
        found: dict[str, Job] = {}
        missing: dict[str, Any] = {}
        for _, job_id, version in rows:
            hit = cache.get(job_id)
            if hit is not None and hit[0] == version:
                found[job_id] = hit[1]
            else:
                missing[job_id] = version
        if missing:
            if len(cache) + len(missing) > self.job_cache_size:
                cache.clear()
            for chunk in _chunks(list(missing)):
                for row in conn.execute(select(jobs).where(jobs.c.id.in_(chunk))):
                    job = found[row.id] = _job(row)
                    cache[row.id] = (missing[row.id], job)
        # a copy per claim: the cached job is never handed out (its holder could change it)
        return [_with_next_run_at(found[job_id], next_at) for next_at, job_id, _ in rows]

    def _claim_in(self, conn: Connection, now: datetime, limit: int, planner: Planner) -> Claim:
        claim = Claim()
        due = self._due_jobs(conn, now, limit)
        if not due:
            return claim
        # Only forbid/replace jobs look at their active runs; an `allow` job's planner gets [] without a
        # query (most jobs are `allow`).
        watched = [j.id for j in due if j.overlap is not OverlapPolicy.ALLOW]
        active: dict[str, list[str]] = defaultdict(list)
        for chunk in _chunks(watched):
            for run_id, job_id in conn.execute(
                    select(runs.c.id, runs.c.job_id)
                    .where(runs.c.status.in_(_ACTIVE), runs.c.job_id.in_(chunk)).order_by(runs.c.id)):
                active[job_id].append(run_id)
        plans = [(job, planner(job, active.get(job.id, []), now)) for job in due]
        claim.jobs = len(plans)
        # Slots that already have a run are duplicates. SQLite finds them with the insert itself (the
        # unique slot key, ON CONFLICT DO NOTHING: a slot planned twice in this claim too); MySQL selects
        # them first (INSERT IGNORE would also turn other errors into warnings).
        existing: set[tuple[str, datetime, int]] | None = (
            None if self._sqlite else self._existing_slots(conn, [r for _, p in plans for r in p.runs]))
        new: list[tuple[Any, ...]] = []
        made: list[tuple[Run, Job]] = []
        params = self._run_params
        dt = _memo(self._to_db)
        next_at: dict[datetime | None, list[str]] = defaultdict(list)
        replaces: list[tuple[Run, list[str]]] = []  # (the replacing run, the runs it replaces)
        for job, plan in plans:
            for run in plan.runs:
                if existing is not None:
                    slot = (run.job_id, run.scheduled_for, run.attempt)
                    if slot in existing:
                        claim.duplicates += 1
                        continue
                    existing.add(slot)
                # a queued run due later (the job's jitter) waits undispatched for claim_due_runs
                new.append(params(run, run.status is not RunStatus.QUEUED or run.due_at <= now, dt))
                made.append((run, job))
                if plan.cancel and run.status is RunStatus.QUEUED:
                    replaces.append((run, plan.cancel))
            next_at[plan.next_run_at].append(job.id)
        taken: set[str] = set()
        if new:
            taken = self._insert_runs(conn, new, skip_taken_slots=self._sqlite)
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
                    recorded.append(run)
            outbox = [n for _, p in plans for n in p.notices]
            if outbox:  # the records' notifications (missed, skipped), with them
                went_in = {run.id for run, _ in made if not (taken and run.id in taken)}
                self._insert_notices(conn, [n for n in outbox if n.run_id in went_in])
        self._set_next_run_at(conn, next_at)
        for by, replaced in replaces:
            if by.id not in taken:  # a duplicate replaces nothing (its slot was planned again)
                self._replace(conn, replaced, by, now, claim)
        if claim.recorded or claim.cancelled:
            self._count_outcomes(conn, [(r.finished_at or now, r.job_id, r.status)
                                        for r in (*claim.recorded, *claim.cancelled)])
        if self.on_dispatch is not None and claim.dispatch:
            self.on_dispatch(conn, claim.dispatch, now)
        return claim

    def _replace(self, conn: Connection, run_ids: Sequence[str], by: Run, now: datetime,
                 claim: Claim) -> None:
        """Overlap replace, in the claim's transaction: cancel the replaced runs still queued (one
        compare-and-set each: a start that lands first wins), ask the running ones to stop."""
        reason = _cut(replaced_reason(by.scheduled_for))
        done: list[str] = []
        for run_id in run_ids:
            if conn.execute(update(runs).where(runs.c.id == run_id, runs.c.status == RunStatus.QUEUED.value)
                            .values(status=RunStatus.CANCELLED.value, finished_at=now, error=reason,
                                    dispatch_due_at=None)).rowcount == 1:
                done.append(run_id)
        found = {r.id: _run(r) for r in conn.execute(select(runs).where(runs.c.id.in_(list(run_ids))))}
        claim.cancelled.extend(found[run_id] for run_id in done)
        claim.cancel.extend(run_id for run_id in run_ids if run_id in found and run_id not in done
                            and found[run_id].status is RunStatus.RUNNING)

    async def claim_due_runs(self, now: datetime, limit: int) -> list[Dispatch]:
        try:
            return await self._call(self._claim_due_runs, now, limit, None)
        except RunConflict as exc:
            # One run's hand-off conflicted (the on_dispatch hook's write) and rolled the batch back: hand
            # out the others, each in its own transaction, so one bad run cannot hold up every due retry.
            log.error("handing out due runs failed as a batch (%s); handing them out one by one", exc)
        def due_ids() -> list[str]:
            with self._tx(read=True) as conn:
                return list(conn.scalars(select(runs.c.id).where(runs.c.dispatch_due_at <= now)
                                         .order_by(runs.c.dispatch_due_at, runs.c.id).limit(limit)))
        out: list[Dispatch] = []
        for run_id in await self._call(due_ids):
            try:
                out.extend(await self._call(self._claim_due_runs, now, 1, run_id))
            except RunConflict as exc:
                log.error("run %s could not be handed out: %s", run_id, exc)
        return out

    def _claim_due_runs(self, now: datetime, limit: int, run_id: str | None) -> list[Dispatch]:
        with self._tx() as conn:
            q = (select(runs).where(runs.c.dispatch_due_at <= now)
                 .order_by(runs.c.dispatch_due_at, runs.c.id).limit(limit))
            if run_id is not None:
                q = q.where(runs.c.id == run_id)
            due = [_run(r) for r in conn.execute(self._locking(q))]
            if not due:
                return []
            ids = [r.id for r in due]
            conn.execute(update(runs).where(runs.c.id.in_(ids)).values(dispatch_due_at=None))
            by_id = {j.id: j for j in map(_job, conn.execute(
                select(jobs).where(jobs.c.id.in_(sorted({r.job_id for r in due})))))}
            out = [Dispatch(r, by_id[r.job_id]) for r in due if r.job_id in by_id]
            if self.on_dispatch is not None and out:
                self.on_dispatch(conn, out, now)
        return out

    async def next_due_time(self) -> datetime | None:
        def next_due() -> datetime | None:
            job_q = (select(jobs.c.next_run_at)
                     .where(jobs.c.status == JobStatus.ACTIVE.value, jobs.c.next_run_at.is_not(None))
                     .order_by(jobs.c.next_run_at).limit(1))
            run_q = (select(runs.c.dispatch_due_at).where(runs.c.dispatch_due_at.is_not(None))
                     .order_by(runs.c.dispatch_due_at).limit(1))
            with self._tx(read=True) as conn:
                times = [conn.scalar(job_q), conn.scalar(run_q)]
            found = [t for t in times if t is not None]
            return min(found) if found else None
        return await self._call(next_due)

    async def release_undispatched(self, run_ids: Collection[str] | None = None) -> int:
        def release() -> int:
            where = [runs.c.status == RunStatus.QUEUED.value, runs.c.dispatch_due_at.is_(None)]
            with self._tx() as conn:
                if run_ids is None:
                    return conn.execute(update(runs).where(*where)
                                        .values(dispatch_due_at=runs.c.due_at)).rowcount
                count = 0
                ids = list(run_ids)
                for i in range(0, len(ids), 500):
                    count += conn.execute(update(runs).where(runs.c.id.in_(ids[i:i + 500]), *where)
                                          .values(dispatch_due_at=runs.c.due_at)).rowcount
                return count
        return await self._call(release)

    # runs -------------------------------------------------------------------------------------
    async def add_run(self, run: Run, *, dispatched: bool) -> None:
        def add() -> None:
            try:
                with self._tx() as conn:
                    if conn.scalar(select(jobs.c.id).where(jobs.c.id == run.job_id)) is None:
                        raise JobNotFound(run.job_id)
                    conn.execute(insert(runs).values(self._run_values(run, dispatched)))
                    if run.status in FINISHED_RUN_STATUSES:
                        self._count_outcomes(conn, [(run.finished_at or run.created_at, run.job_id,
                                                     run.status)])
                    if self.on_dispatch is not None and dispatched and run.status is RunStatus.QUEUED:
                        job = _job(conn.execute(select(jobs).where(jobs.c.id == run.job_id)).one())
                        self.on_dispatch(conn, [Dispatch(run, job)], run.created_at)
            except sa_exc.IntegrityError:
                raise RunConflict(f"a run of job {run.job_id} for {run.scheduled_for.isoformat()} attempt "
                                  f"{run.attempt} already exists") from None
        await self._call(add)

    async def get_run(self, run_id: str) -> Run:
        def get() -> Run:
            with self._tx(read=True) as conn:
                row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
            if row is None:
                raise RunNotFound(run_id)
            return _run(row)
        return await self._call(get)

    async def list_runs(self, job_id: str | None = None, *, status: Collection[RunStatus] | None = None,
                        before: str | None = None, limit: int = 50,
                        trigger: Collection[Trigger] | None = None, since: datetime | None = None,
                        until: datetime | None = None) -> list[Run]:
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
        # `limit` rows, merged here: one query with `status IN (...)` would sort every run of those
        # statuses (neither SQLite nor MySQL merges index ranges in order), a cost growing with history.
        if job_id is None and status is not None and len(status) > 1:
            queries = [query([s]) for s in sorted(status)]
        else:
            queries = [query(status)]

        def list_() -> list[Run]:
            with self._tx(read=True) as conn:
                found = [_run(r) for q in queries for r in conn.execute(q)]
            if len(queries) > 1:
                found.sort(key=lambda r: r.id, reverse=True)
            return found[:limit]
        if limit <= 0:
            return []
        return await self._call(list_)

    async def start_run(self, run_id: str, owner: str, now: datetime, lease_until: datetime) -> bool:
        return bool(await self._write(_Start(run_id, owner, now, lease_until)))

    async def finish_run(self, run_id: str, owner: str | None, *, status: RunStatus,
                         finished_at: datetime, exit_code: int | None = None, output: str = "",
                         error: str | None = None, retry: Run | None = None,
                         lease_expires_at: datetime | None = None,
                         output_lines: int | None = None, hooks: OutcomeHooks | None = None,
                         result: Any = None) -> bool:
        status = RunStatus(status)
        if status not in FINISHED_RUN_STATUSES:
            raise ValueError(f"{status} is not a finished status")
        lines = count_lines(output) if output_lines is None else output_lines
        return bool(await self._write(_Finish(run_id, owner, status, finished_at, exit_code, output,
                                              error, retry, lines, lease_expires_at, hooks,
                                              _json(result))))

    async def record_output(self, outputs: Mapping[str, tuple[str, int]], owner: str) -> set[str]:
        items = sorted(outputs.items())
        if not items:
            return set()

        def record() -> set[str]:
            written: set[str] = set()
            with self._tx() as conn:
                for run_id, (text_, lines) in items:  # a worker holds a few runs: one statement each
                    if conn.execute(update(runs).where(
                            runs.c.id == run_id, runs.c.status == RunStatus.RUNNING.value,
                            runs.c.owner == owner, runs.c.output_lines <= lines)
                            .values(output=self._cap(text_), output_lines=lines)).rowcount == 1:
                        written.add(run_id)
            return written
        return await self._call(record)

    async def _write(self, op: _Start | _Finish) -> Any:
        """Queue a start/finish for the next group commit and wait for its own result."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        # (a finished flusher may still be in the set until its done-callback runs: count live ones; the
        # set holds at most parallel_commits + a few)
        if len(self._flushers) < self.parallel_commits or \
                sum(not t.done() for t in self._flushers) < self.parallel_commits:
            task = asyncio.create_task(self._flush(), name="chronos-sql-group-commit")
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return await fut

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[:self.max_write_batch]
            del self._pending[:self.max_write_batch]
            try:
                results = await self._call(self._apply_writes, [op for op, _ in batch])
            except BaseException as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else StoreUnavailable(
                            "the store stopped before the write was done"))
                if not isinstance(exc, Exception):
                    for _, fut in self._pending:
                        if not fut.done():
                            fut.set_exception(StoreUnavailable("the store stopped"))
                    self._pending.clear()
                    raise
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue  # the caller gave up waiting
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    def _apply_writes(self, ops: list[_Start | _Finish]) -> list[Any]:
        try:
            with self._tx() as conn:
                return self._writes_in(conn, ops)
        except sa_exc.IntegrityError:
            if len(ops) == 1:
                raise RunConflict("the retry's (job, slot, attempt) already exists") from None
        # One bad write must not fail the others of its batch: apply each alone.
        results: list[Any] = []
        for op in ops:
            try:
                results.extend(Database.guarded(self._apply_writes, [op]))
            except ChronosError as exc:
                results.append(exc)
        return results

    def _writes_in(self, conn: Connection, ops: list[_Start | _Finish]) -> list[Any]:
        results: list[Any] = [False] * len(ops)
        starts = [(i, op) for i, op in enumerate(ops) if isinstance(op, _Start)]
        finishes = [(i, fin) for i, fin in enumerate(ops) if isinstance(fin, _Finish)]
        if starts and self._sqlite:
            dt = _memo(self._to_db)
            states = self._sqlite_states(conn, {op.run_id for _, op in starts})
            applied: list[tuple[Any, ...]] = []
            for i, op in starts:
                state = states.pop(op.run_id, None)  # (a second start of the same run in a batch loses)
                if state is not None and state[0] == RunStatus.QUEUED.value:
                    results[i] = True
                    applied.append((op.run_id, dt(op.now), op.owner, dt(op.until)))
            sqlite_batch.update_from_values(conn, "runs", self._start_set, applied,
                                            f"runs.status = '{RunStatus.QUEUED.value}'")
        elif starts and self._all_matched(conn, [
                {"id": op.run_id, "started_at": op.now, "owner": op.owner, "lease_expires_at": op.until}
                for _, op in starts], {"status": RunStatus.RUNNING.value, "dispatch_due_at": None},
                lambda _: (" AND `status` = %s", [RunStatus.QUEUED.value])):
            for i, _ in starts:
                results[i] = True
        elif starts:
            queued: set[str] = set()
            for chunk in _chunks(sorted({op.run_id for _, op in starts})):
                # filter the status here, not in SQL: given a long IN list and a status, SQLite's planner
                # (without ANALYZE) prefers the status index and would scan every queued run
                queued.update(run_id for run_id, status in conn.execute(self._for_update(
                    select(runs.c.id, runs.c.status).where(runs.c.id.in_(chunk))))
                    if status == RunStatus.QUEUED.value)
            rows = []
            for i, op in starts:
                if op.run_id in queued:
                    queued.discard(op.run_id)  # a second start of the same run in this batch loses
                    results[i] = True
                    rows.append({"id": op.run_id, "started_at": op.now, "owner": op.owner,
                                 "lease_expires_at": op.until})
            self._bulk_update(conn, "id", rows, {"status": RunStatus.RUNNING.value, "dispatch_due_at": None})
        # finishes with a retry to insert, a lease to compare or hooks take the select path below
        plain = all(fin.retry is None and fin.lease is None and fin.hooks is None for _, fin in finishes)
        if finishes and self._sqlite and plain:
            dt = _memo(self._to_db)
            facts = self._sqlite_finish_states(conn, {fin.run_id for _, fin in finishes})
            done: list[tuple[Any, ...]] = []
            applied: list[_Finished] = []
            for i, fin in finishes:
                fact = facts.get(fin.run_id)
                if fact is not None and fact[:2] == (RunStatus.RUNNING.value, fin.owner):
                    del facts[fin.run_id]  # a second finish of the same run in this batch loses
                    results[i] = True
                    done.append((fin.run_id, fin.status.value, dt(fin.finished_at), fin.exit_code,
                                 self._cap(fin.output), _cut(fin.error), fin.output_lines, fin.result))
                    applied.append(_Finished(fin.run_id, fact[2], fin.status, fact[3], fact[4],
                                             fin.finished_at))
            sqlite_batch.update_from_values(conn, "runs", self._finish_set, done,
                                            f"runs.status = '{RunStatus.RUNNING.value}'")
            self._record_summaries(conn, applied)
        elif finishes and plain and self._all_matched(conn, [
                {"id": fin.run_id, "status": fin.status.value, "finished_at": fin.finished_at,
                 "exit_code": fin.exit_code, "output": self._cap(fin.output), "error": _cut(fin.error),
                 "output_lines": fin.output_lines, "result": fin.result}
                for _, fin in finishes], {"lease_expires_at": None, "dispatch_due_at": None},
                functools.partial(_owner_guard, {fin.run_id: fin.owner for _, fin in finishes})):
            for i, _ in finishes:
                results[i] = True
            facts_by_id: dict[str, tuple[str, datetime, datetime | None]] = {}
            for chunk in _chunks(sorted({fin.run_id for _, fin in finishes})):
                facts_by_id.update((r.id, (r.job_id, r.scheduled_for, r.started_at)) for r in conn.execute(
                    select(runs.c.id, runs.c.job_id, runs.c.scheduled_for, runs.c.started_at)
                    .where(runs.c.id.in_(chunk))))
            self._record_summaries(conn, [
                _Finished(fin.run_id, job_id, fin.status, slot_at, started, fin.finished_at)
                for _, fin in finishes for job_id, slot_at, started in [facts_by_id[fin.run_id]]])
        elif finishes:
            owners: dict[str, str | None] = {}
            leases: dict[str, datetime | None] = {}
            found: dict[str, tuple[str, datetime, datetime | None, int, str]] = {}
            for chunk in _chunks(sorted({fin.run_id for _, fin in finishes})):
                for row in conn.execute(self._for_update(
                        select(runs.c.id, runs.c.owner, runs.c.status, runs.c.lease_expires_at, runs.c.job_id,
                               runs.c.scheduled_for, runs.c.started_at, runs.c.attempt, runs.c.trigger)
                        .where(runs.c.id.in_(chunk)))):
                    if row.status == RunStatus.RUNNING.value:
                        owners[row.id], leases[row.id] = row.owner, row.lease_expires_at
                        found[row.id] = (row.job_id, row.scheduled_for, row.started_at, row.attempt,
                                         row.trigger)
            retries = [fin.retry for _, fin in finishes if fin.retry is not None]
            taken = self._existing_slots(conn, retries) if retries else set()
            rows, inserts = [], []
            applied = []
            dt = _memo(self._to_db)
            for i, fin in finishes:
                if fin.run_id not in owners or owners[fin.run_id] != fin.owner:
                    continue
                if fin.lease is not None and leases[fin.run_id] != fin.lease:
                    continue  # renewed since the caller read it
                if fin.retry is not None:
                    slot = (fin.retry.job_id, fin.retry.scheduled_for, fin.retry.attempt)
                    if slot in taken:
                        results[i] = RunConflict(f"attempt {fin.retry.attempt} of this slot already exists")
                        continue
                    taken.add(slot)
                    inserts.append(self._run_params(fin.retry, False, dt))
                del owners[fin.run_id]
                results[i] = True
                rows.append({"id": fin.run_id, "status": fin.status.value, "finished_at": fin.finished_at,
                             "exit_code": fin.exit_code, "output": self._cap(fin.output),
                             "error": _cut(fin.error), "output_lines": fin.output_lines,
                             "result": fin.result})
                job_id, slot_at, started, attempt, trigger = found[fin.run_id]
                applied.append(_Finished(fin.run_id, job_id, fin.status, slot_at, started, fin.finished_at,
                                         fin.retry is None, fin if fin.hooks is not None else None,
                                         attempt, trigger))
            self._bulk_update(conn, "id", rows, {"lease_expires_at": None, "dispatch_due_at": None})
            if inserts:
                self._insert_runs(conn, inserts)
            self._record_summaries(conn, applied)
        return results

    def _record_summaries(self, conn: Connection, applied: Sequence[_Finished]) -> None:
        """Fold applied finishes into their jobs' summaries, in the finishes' transaction: read the
        summaries (locked on MySQL, in id order so concurrent batches cannot deadlock), fold in Python
        with the same rule as every store (``JobSummary.record``, in finishing order), write them back."""
        if not applied:
            return
        self._count_outcomes(conn, [(f.finished_at, f.job_id, f.status) for f in applied])
        job_ids = sorted({f.job_id for f in applied})
        summaries: dict[str, JobSummary] = {}
        if self._sqlite:
            # folded (see sqlite_batch); datetimes come back as their stored text
            fields = " || char(31) || ".join(
                ["job_id"] + [f"coalesce({c}, char(29))" for c in _SUMMARY_COLUMNS])
            for chunk in _chunks(job_ids):
                for parts in sqlite_batch.select_folded(
                        conn, fields, f"FROM job_summaries WHERE job_id IN ({sqlite_batch.in_list(chunk)})",
                        chunk):
                    values = dict(zip(_SUMMARY_COLUMNS, (None if p == "\x1d" else p for p in parts[1:]),
                                      strict=True))
                    summaries[parts[0]] = JobSummary(
                        last_run_id=values["last_run_id"],
                        last_run_status=None if values["last_run_status"] is None
                        else _RUN_STATUS[values["last_run_status"]],
                        last_run_scheduled_for=_from_utc_text(values["last_run_scheduled_for"]),
                        last_run_started_at=_from_utc_text(values["last_run_started_at"]),
                        last_run_finished_at=_from_utc_text(values["last_run_finished_at"]),
                        last_success_at=_from_utc_text(values["last_success_at"]),
                        last_failure_at=_from_utc_text(values["last_failure_at"]),
                        consecutive_failures=int(values["consecutive_failures"] or 0),
                        consecutive_failed_slots=int(values["consecutive_failed_slots"] or 0))
        else:
            for chunk in _chunks(job_ids):
                summaries.update((row.job_id, _summary(row)) for row in conn.execute(
                    select(job_summaries).where(job_summaries.c.job_id.in_(chunk))
                    .order_by(job_summaries.c.job_id).with_for_update()))
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
            self._insert_notices(conn, outbox)
        dt = _memo(self._to_db)
        values_ = [(job_id, s.last_run_id, None if s.last_run_status is None else s.last_run_status.value,
                    dt(s.last_run_scheduled_for), dt(s.last_run_started_at), dt(s.last_run_finished_at),
                    dt(s.last_success_at), dt(s.last_failure_at), s.consecutive_failures,
                    s.consecutive_failed_slots)
                   for job_id in job_ids for s in [summaries[job_id]]]
        if self._sqlite:
            sqlite_batch.insert_rows(conn, self._summary_head, values_, self._summary_tail)
        else:
            for part in _chunks(values_):
                marks = ", ".join(["(" + ", ".join(["%s"] * len(values_[0])) + ")"] * len(part))
                conn.exec_driver_sql(f"{self._summary_head} VALUES {marks}{self._summary_tail}",
                                     tuple(v for row in part for v in row))

    # notices ------------------------------------------------------------------------------------------
    @staticmethod
    def _notice_values(n: Notice) -> dict[str, Any]:
        return {"id": n.id, "key": n.key, "kind": n.kind.value, "event": n.event, "job_id": n.job_id,
                "run_id": n.run_id, "target": json.dumps(n.target, separators=(",", ":")),
                "data": json.dumps(n.data, separators=(",", ":"), ensure_ascii=False),
                "status": n.status.value, "created_at": n.created_at, "due_at": n.due_at,
                "attempts": n.attempts, "owner": n.owner, "lease_until": n.lease_until,
                "last_error": _cut(n.last_error, 2000), "last_code": n.last_code,
                "finished_at": n.finished_at, "result": n.result, "tries": json.dumps(n.tries)}

    @staticmethod
    def _notice(row: Any) -> Notice:
        return Notice(id=row.id, key=row.key, kind=NoticeKind(row.kind), event=row.event, job_id=row.job_id,
                      run_id=row.run_id, target=json.loads(row.target), data=json.loads(row.data),
                      status=NoticeStatus(row.status), created_at=row.created_at, due_at=row.due_at,
                      attempts=row.attempts, owner=row.owner, lease_until=row.lease_until,
                      last_error=row.last_error, last_code=row.last_code, finished_at=row.finished_at,
                      result=row.result, tries=json.loads(row.tries))

    def _insert_notices(self, conn: Connection, items: Sequence[Notice]) -> int:
        """Insert the notices whose key is new (also within ``items``) and whose job exists."""
        fresh: dict[str, Notice] = {}
        for n in items:
            fresh.setdefault(n.key, n)
        if not fresh:
            return 0
        for chunk in _chunks(sorted(fresh)):
            for key in conn.scalars(select(notices.c.key).where(notices.c.key.in_(chunk))):
                fresh.pop(key, None)
        job_ids = sorted({n.job_id for n in fresh.values()})
        known: set[str] = set()
        for chunk in _chunks(job_ids):
            known.update(conn.scalars(select(jobs.c.id).where(jobs.c.id.in_(chunk))))
        rows = [self._notice_values(n) for n in fresh.values() if n.job_id in known]
        if rows:
            conn.execute(insert(notices), rows)
        return len(rows)

    async def add_notices(self, notices_: Sequence[Notice]) -> int:
        items = list(notices_)
        if not items:
            return 0

        def add() -> int:
            with self._tx() as conn:
                return self._insert_notices(conn, items)
        try:
            return await self._call(add)
        except RunConflict:  # a concurrent writer inserted one of the keys first: the rest, one by one
            added = 0
            for n in items:
                try:
                    added += await self._call(lambda n=n: self._insert_one(n))
                except RunConflict:
                    pass
            return added

    def _insert_one(self, n: Notice) -> int:
        with self._tx() as conn:
            return self._insert_notices(conn, [n])

    async def claim_notices(self, now: datetime, limit: int, owner: str, lease_until: datetime
                            ) -> list[Notice]:
        free = (notices.c.owner.is_(None) | notices.c.lease_until.is_(None) | (notices.c.lease_until < now))

        def any_due() -> bool:  # a read first: most polls find nothing (no write transaction, no lock)
            with self._tx(read=True) as conn:
                return conn.scalar(select(notices.c.id).where(
                    notices.c.status == NoticeStatus.PENDING.value, notices.c.due_at <= now, free)
                    .limit(1)) is not None

        def claim() -> list[Notice]:
            with self._tx() as conn:
                ids = list(conn.scalars(self._locking(
                    select(notices.c.id).where(notices.c.status == NoticeStatus.PENDING.value,
                                               notices.c.due_at <= now, free)
                    .order_by(notices.c.due_at, notices.c.id).limit(max(limit, 0)))))
                if not ids:
                    return []
                conn.execute(update(notices).where(notices.c.id.in_(ids))
                             .values(owner=owner, lease_until=lease_until))
                rows = conn.execute(select(notices).where(notices.c.id.in_(ids))).all()
                found = sorted((self._notice(r) for r in rows), key=lambda n: (n.due_at, n.id))
                return found
        if not await self._call(any_due):
            return []
        return await self._call(claim)

    async def settle_notice(self, notice_id: str, owner: str, *, status: NoticeStatus, now: datetime,
                            due_at: datetime | None = None, error: str | None = None,
                            code: int | None = None, result: str | None = None) -> bool:
        def settle() -> bool:
            with self._tx() as conn:
                row = conn.execute(self._for_update(select(notices.c.owner, notices.c.status,
                                                           notices.c.attempts, notices.c.tries)
                                                    .where(notices.c.id == notice_id))).first()
                if row is None or row.owner != owner or row.status != NoticeStatus.PENDING.value:
                    return False
                tries = json.loads(row.tries)
                tries.append({"at": now.isoformat(), "ok": status is NoticeStatus.DELIVERED, "code": code,
                              "error": None if error is None else error[:500]})
                values: dict[str, Any] = {
                    "attempts": row.attempts + 1, "tries": json.dumps(tries[-20:]), "status": status.value,
                    "last_error": _cut(error, 2000), "last_code": code, "owner": None, "lease_until": None}
                if status is NoticeStatus.PENDING:
                    values["due_at"] = due_at or now
                else:
                    values["finished_at"], values["result"] = now, None if result is None else result[:200]
                conn.execute(update(notices).where(notices.c.id == notice_id).values(**values))
                return True
        return await self._call(settle)

    async def list_notices(self, *, run_id: str | None = None, job_id: str | None = None,
                           result: str | None = None, limit: int = 100) -> list[Notice]:
        def list_() -> list[Notice]:
            q = select(notices)
            if run_id is not None:
                q = q.where(notices.c.run_id == run_id)
            if job_id is not None:
                q = q.where(notices.c.job_id == job_id)
            if result is not None:
                q = q.where(notices.c.result == result)
            with self._tx(read=True) as conn:
                rows = conn.execute(q.order_by(notices.c.created_at, notices.c.id).limit(limit)).all()
            return [self._notice(r) for r in rows]
        return await self._call(list_)

    def _all_matched(self, conn: Connection, rows: list[dict[str, Any]], fixed: dict[str, Any],
                     guard: _Guard) -> bool:
        """MySQL: try a batch of compare-and-sets as CASE updates (one per chunk) whose WHERE holds the
        condition, in a savepoint. True when every row matched; else (a run in another state, the same
        run twice) everything is rolled back to the savepoint and the caller decides call by call."""
        conn.exec_driver_sql("SAVEPOINT chronos_cas")
        if self._bulk_update(conn, "id", rows, fixed, guard) == len(rows):
            conn.exec_driver_sql("RELEASE SAVEPOINT chronos_cas")
            return True
        conn.exec_driver_sql("ROLLBACK TO SAVEPOINT chronos_cas")
        conn.exec_driver_sql("RELEASE SAVEPOINT chronos_cas")
        return False

    @staticmethod
    def _sqlite_finish_states(conn: Connection, run_ids: Collection[str]
                              ) -> dict[str, tuple[str, str | None, str, datetime, datetime | None]]:
        """SQLite: (status, owner, job id, slot, start) of each of ``run_ids`` that exists, folded like
        :meth:`_sqlite_states` (a finish also folds the run into its job's summary)."""
        states: dict[str, tuple[str, str | None, str, datetime, datetime | None]] = {}
        for chunk in _chunks(sorted(run_ids)):
            for run_id, status, owner, job_id, slot, started in sqlite_batch.select_folded(
                    conn, "id || char(31) || status || char(31) || coalesce(owner, char(29)) || char(31) || "
                          "job_id || char(31) || scheduled_for || char(31) || coalesce(started_at, '')",
                    f"FROM runs WHERE id IN ({sqlite_batch.in_list(chunk)})", chunk):
                at = _from_utc_text(slot)
                assert at is not None
                states[run_id] = (status, None if owner == "\x1d" else owner, job_id, at,
                                  _from_utc_text(started or None))
        return states

    @staticmethod
    def _sqlite_states(conn: Connection, run_ids: Collection[str]) -> dict[str, tuple[str, str | None]]:
        """SQLite: (status, owner) of each of ``run_ids`` that exists, folded into one row per chunk (see
        sqlite_batch). The status is compared here, not in SQL: given a long IN list and a status,
        SQLite's planner (without ANALYZE) prefers the status index and would scan every such run."""
        states: dict[str, tuple[str, str | None]] = {}
        for chunk in _chunks(sorted(run_ids)):
            for run_id, status, owner in sqlite_batch.select_folded(
                    conn, "id || char(31) || status || char(31) || coalesce(owner, char(29))",
                    f"FROM runs WHERE id IN ({sqlite_batch.in_list(chunk)})", chunk):
                states[run_id] = (status, None if owner == "\x1d" else owner)
        return states

    async def renew_leases(self, run_ids: Collection[str], owner: str, until: datetime) -> set[str]:
        ids = sorted(set(run_ids))
        if not ids:
            return set()

        def renew() -> set[str]:
            held: set[str] = set()
            with self._tx() as conn:
                for chunk in _chunks(ids):
                    mine = [run_id for run_id, status, held_by in conn.execute(self._for_update(
                        select(runs.c.id, runs.c.status, runs.c.owner).where(runs.c.id.in_(chunk))))
                        if status == RunStatus.RUNNING.value and held_by == owner]
                    if mine:
                        conn.execute(update(runs).where(runs.c.id.in_(mine)).values(lease_expires_at=until))
                    held.update(mine)
            return held
        return await self._call(renew)

    async def cancel_queued_run(self, run_id: str, now: datetime, reason: str, *,
                                status: RunStatus = RunStatus.CANCELLED) -> bool:
        if status not in (RunStatus.CANCELLED, RunStatus.MISSED):
            raise ValueError(f"a queued run ends cancelled or missed, not {status}")

        def cancel() -> bool:
            with self._tx() as conn:
                done = conn.execute(
                    update(runs).where(runs.c.id == run_id, runs.c.status == RunStatus.QUEUED.value)
                    .values(status=status.value, finished_at=now, error=_cut(reason),
                            dispatch_due_at=None)).rowcount == 1
                if done:
                    job_id = conn.scalar(select(runs.c.job_id).where(runs.c.id == run_id))
                    self._count_outcomes(conn, [(now, job_id, status)])
                return done
        return await self._call(cancel)

    def _count_outcomes(self, conn: Connection, outcomes: Sequence[tuple[datetime, str, RunStatus]]) -> None:
        """Add run outcomes (end time, job id, status) to the counts, in the caller's transaction: the
        per-minute totals (this instance's rows) and the per-job hourly counts, one upsert each of the
        batch's distinct keys, in key order (concurrent batches lock the rows in the same order)."""
        totals: dict[tuple[str, str, str], int] = defaultdict(int)
        per_job: dict[tuple[str, str, str], int] = defaultdict(int)
        minute = _memo(lambda t: _utc_text(t.replace(second=0, microsecond=0)))
        hour = _memo(lambda t: _utc_text(t.replace(minute=0, second=0, microsecond=0)))
        for at, job_id, status in outcomes:
            totals[(minute(at), self._writer_id, status.value)] += 1
            per_job[(hour(at), job_id, status.value)] += 1
        for (head, tail), tally in zip(self._counts_sql, (totals, per_job), strict=True):
            rows = [(*key, n) for key, n in sorted(tally.items())]
            if self._sqlite:
                sqlite_batch.insert_rows(conn, head, rows, tail)
                continue
            for part in _chunks(rows):
                marks = ", ".join(["(%s, %s, %s, %s)"] * len(part))
                conn.exec_driver_sql(f"{head} VALUES {marks}{tail}", tuple(v for row in part for v in row))

    async def stats(self, since: Sequence[datetime], top: int = 5) -> StoreStats:
        def read() -> StoreStats:
            out = StoreStats()
            failures = [RunStatus.FAILED.value, RunStatus.TIMED_OUT.value]
            with self._tx(read=True) as conn:
                for status, n in conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)):
                    out.jobs[_JOB_STATUS[status]] = n
                for status in _ACTIVE:  # an index range count each
                    n = conn.scalar(select(func.count()).select_from(runs).where(runs.c.status == status))
                    if n:
                        out.active[_RUN_STATUS[status]] = n
                for start in since:
                    window = RunCounts(since=start)
                    total = func.sum(run_counts.c.n)
                    for status, n in conn.execute(
                            select(run_counts.c.status, total)
                            .where(run_counts.c.bucket >= start.replace(second=0, microsecond=0))
                            .group_by(run_counts.c.status)):
                        window.by_status[_RUN_STATUS[status]] = int(n)
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
        return await self._call(read)

    async def expired_leases(self, now: datetime, limit: int) -> list[Run]:
        def expired() -> list[Run]:
            q = (select(runs).where(runs.c.status == RunStatus.RUNNING.value, runs.c.lease_expires_at < now)
                 .order_by(runs.c.lease_expires_at, runs.c.id).limit(limit))
            with self._tx(read=True) as conn:
                return [_run(r) for r in conn.execute(q)]
        return await self._call(expired)

    async def delete_runs(self, job_id: str) -> int:
        def delete_() -> int:
            with self._tx() as conn:
                if conn.scalar(select(jobs.c.id).where(jobs.c.id == job_id)) is None:
                    raise JobNotFound(job_id)
                return conn.execute(delete(runs).where(runs.c.job_id == job_id,
                                                       runs.c.status.in_(_FINISHED))).rowcount
        return await self._call(delete_)

    async def prune_runs(self, now: datetime, max_age: timedelta | None, limit: int) -> int:
        return await self._call(self._prune, now, max_age, limit)

    def _prune(self, now: datetime, max_age: timedelta | None, limit: int) -> int:
        """At most ``limit`` deletions, in short transactions of a few hundred rows. Jobs with a
        ``history_limit`` are swept in id order, 200 per query (one window query ranks their finished
        runs); excess beyond ``limit`` waits in a backlog for the next call, so each job is ranked once per
        sweep. Then runs finished before ``now - max_age`` go, oldest first (indexed by ``finished_at``)."""
        deleted = 0
        if self._prune_backlog:
            take, self._prune_backlog = self._prune_backlog[:limit], self._prune_backlog[limit:]
            deleted += self._delete_ids(take)
        while deleted < limit and not self._prune_backlog:
            q = (select(jobs.c.id, jobs.c.history_limit).where(jobs.c.history_limit.is_not(None))
                 .order_by(jobs.c.id).limit(200))
            if self._prune_after is not None:
                q = q.where(jobs.c.id > self._prune_after)
            with self._tx(read=True) as conn:
                batch = conn.execute(q).all()
                if not batch:
                    self._prune_after = None  # the sweep is complete; the next one starts over
                    break
                excess = self._excess_runs(conn, {j: n for j, n in batch})
            self._prune_after = batch[-1][0]
            take, self._prune_backlog = excess[:limit - deleted], excess[limit - deleted:]
            deleted += self._delete_ids(take)
        with self._tx() as conn:  # outcome counts older than two days (GET /stats reads one day)
            for table in (run_counts, job_run_counts):
                conn.execute(delete(table).where(table.c.bucket < now - timedelta(days=2)))
        # settled notices past NOTICE_RETENTION (their last attempt's due_at: the (status, due_at) index)
        for status in (NoticeStatus.DELIVERED.value, NoticeStatus.FAILED.value):
            with self._tx() as conn:
                ids = list(conn.scalars(select(notices.c.id).where(
                    notices.c.status == status, notices.c.due_at < now - NOTICE_RETENTION).limit(_CHUNK)))
                if ids:
                    conn.execute(delete(notices).where(notices.c.id.in_(ids)))
        if max_age is not None:
            cutoff = now - max_age
            while deleted < limit:
                with self._tx(read=True) as conn:
                    old = list(conn.scalars(
                        select(runs.c.id).where(runs.c.finished_at < cutoff, runs.c.status.in_(_FINISHED))
                        .order_by(runs.c.finished_at).limit(min(_CHUNK, limit - deleted))))
                if not old:
                    break
                deleted += self._delete_ids(old)
        return deleted

    @staticmethod
    def _excess_runs(conn: Connection, limits: dict[str, int]) -> list[str]:
        """Ids of finished runs beyond their job's history_limit, oldest first."""
        ranked = (select(runs.c.id, runs.c.job_id,
                         func.row_number().over(partition_by=runs.c.job_id, order_by=runs.c.id.desc())
                         .label("rank"))
                  .where(runs.c.job_id.in_(list(limits)), runs.c.status.in_(_FINISHED)).subquery())
        return [run_id for run_id, job_id, rank in conn.execute(select(ranked).order_by(ranked.c.id))
                if rank > limits[job_id]]

    def _delete_ids(self, ids: Sequence[str]) -> int:
        n = 0
        for chunk in _chunks(ids):
            with self._tx() as conn:  # short transactions: retention never holds a lock for long
                # by id alone (a finished status is final): with a status condition too, SQLite's
                # planner would scan the status index
                n += conn.execute(delete(runs).where(runs.c.id.in_(chunk))).rowcount
        return n


# -------------------------------------------------------------------------------------- helpers


def _upgrade(engine: Engine) -> None:
    with engine.connect() as conn:
        upgrade_connection(conn)

