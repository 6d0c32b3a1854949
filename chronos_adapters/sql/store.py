"""``SqlStore``: the ``Store`` port on SQLAlchemy 2.x Core, for SQLite (file) and MySQL/MariaDB (PyMySQL;
or asyncmy, ``mysql+asyncmy://``).

Every call runs off the caller's event loop, one transaction per call (``engine.Database``): in the store's
own thread pool for the synchronous drivers, as a greenlet on an event loop of the store's own (in its own
thread) for asyncmy, the same synchronous code either way. ``start_run`` / ``cancel_queued_run`` /
``finish_run`` calls that arrive together are coalesced into one transaction (group commit,
``group_commit.py``) whose compare-and-set results stay exact per call; so are ``add_jobs`` calls
(``create_batch.py``), each still all or none and answered as alone. The due-job claim (``claim.py``) is
one transaction: ``FOR UPDATE SKIP LOCKED`` on MySQL (schedulers claim disjoint jobs), ``BEGIN IMMEDIATE``
on SQLite (writers are serialized). What the two databases are told differently is in ``dialects/``,
picked at :meth:`SqlStore.start`; the rest is in ``job_ops.py``, ``run_ops.py``, ``notice_ops.py`` and
``retention.py``. Driver errors become ``chronos_core`` exceptions at the boundary, in
``engine.Database``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, literal, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from chronos_core.errors import ChronosError, NameConflict, RunConflict, StoreUnavailable
from chronos_core.hooks import Notice, NoticeStatus, OutcomeHooks
from chronos_core.models import (
    FINISHED_RUN_STATUSES,
    Job,
    JobStatus,
    JobSummary,
    Run,
    RunStatus,
    Trigger,
    count_lines,
)
from chronos_core.ports import Claim, Dispatch, JobChange, Planner, Store, StoreStats

from . import claim, job_ops, notice_ops, run_ops
from .claim import JobCache, OnDispatch
from .create_batch import CreateBatcher, answer_batch, fail_batch, run_batch
from .decoded import DecodedRows
from .dialects import Dialect, dialect_for
from .dialects.base import Cancel, Finish, Start
from .engine import Database, is_sqlite, open_engine, too_large
from .group_commit import Op, apply_writes
from .migrate import upgrade_connection
from .retention import Pruner, stats
from .rows import RunRows, json_text
from .tables import jobs, runs

__all__ = ["SqlStore"]

log = logging.getLogger("chronos.store.sql")

T = TypeVar("T")


class SqlStore(Store):
    """Jobs and runs in SQLite or MySQL/MariaDB. ``url`` is a SQLAlchemy URL (``sqlite:///chronos.db``,
    ``mysql+pymysql://user:pw@host/db``, ``mysql+asyncmy://...``); ``pool_size`` bounds the connections and
    the threads that use them; stored output is cut to its last ``output_limit`` characters; with
    ``create_schema``, :meth:`start` brings the schema to the newest migration. ``engine_options`` go to
    ``create_engine``."""

    def __init__(self, url: str, *, pool_size: int = 10, output_limit: int = 64 * 1024,
                 create_schema: bool = True, on_dispatch: OnDispatch | None = None,
                 inline_reads: bool = False, **engine_options: Any) -> None:
        self.url = url
        # the hot reads (a job, a page of jobs or runs, summaries) on the caller's thread, not in the pool
        # (a SQLite file only; see Database.read): the API's own store in ``chronos serve`` (sibling)
        self.inline_reads = inline_reads
        # called with the transaction's connection whenever runs are handed out for dispatch (claims,
        # retries, manual triggers): the Kafka outbox writes its messages in the same transaction
        self.on_dispatch = on_dispatch
        self.pool_size = pool_size
        self.output_limit = output_limit
        self.create_schema = create_schema
        self.engine_options = engine_options
        self.max_write_batch = 500
        self._db: Database | None = None
        self._dialect: Dialect | None = None
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        # concurrent add_jobs calls (POST /jobs) written one transaction per batch (create_batch.py)
        self._creates = CreateBatcher(self._write_creates, self._create_alone,
                                     parallel=1 if is_sqlite(url) else 2)
        # group commits in flight at once: MySQL overlaps one batch's commit with the next batch; SQLite
        # serializes writers anyway
        self.parallel_commits = 1 if is_sqlite(url) else 2
        self._pruner = Pruner()
        # the claim's cache of job definitions (see claim.JobCache), at most job_cache_size jobs
        self.job_cache_size = 50_000
        self._job_cache: JobCache = {}
        # this instance's rows of the per-minute totals (see tables.run_counts)
        self._writer_id = uuid.uuid4().hex[:16]
        # SQLite's one writer at a time, for this instance and its siblings (see Database.transaction)
        self._writer_lock = threading.Lock()

    def sibling(self, *, inline_reads: bool = False) -> SqlStore:
        """Another store over the same database, for another event loop or thread of this process (the
        API on its own loop in ``chronos serve``): its own engine, connections and thread pool (its calls
        do not queue behind this one's), the same settings, no schema upgrade at start (this one does
        it), and the same SQLite writer lock, so that the two never wait on each other in SQLite's busy
        handler. Its group commit (``start_run``/``finish_run``) runs on the loop that calls it. With
        ``inline_reads`` (a SQLite file) its hot reads run on the calling thread (:meth:`Database.read`);
        its writes still go through its pool and the shared writer lock."""
        other = SqlStore(self.url, pool_size=self.pool_size, output_limit=self.output_limit,
                         create_schema=False, on_dispatch=self.on_dispatch, inline_reads=inline_reads,
                         **self.engine_options)
        other._writer_lock = self._writer_lock
        other.max_write_batch = self.max_write_batch
        other.job_cache_size = self.job_cache_size
        return other

    def __repr__(self) -> str:
        return f"SqlStore({make_url(self.url).render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (after :meth:`start`)."""
        return self._database.engine

    def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, code of its own on :attr:`engine`, from synchronous code (tests, tools): as it
        is for a synchronous driver, on the asyncio driver's loop (waiting for it) for ``mysql+asyncmy``.
        Not from within a call of the store."""
        return self._database.run_blocking(fn, *args)

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._db is not None:
            return
        engine, threads = open_engine(self.url, pool_size=self.pool_size, options=self.engine_options)
        self._db = Database(engine, threads, self._writer_lock, inline_reads=self.inline_reads)
        self._dialect = dialect_for(engine, RunRows(self.output_limit), self._writer_id)
        # the listings' decoded jobs and summaries, kept with the driver values they came from (decoded.py)
        self._listed_jobs = DecodedRows(self._dialect.read_job, 0, len(jobs.c))
        self._listed_summaries = DecodedRows(self._dialect.read_joined_summary, job_ops.JOINED_SUMMARY.start,
                                             job_ops.JOINED_SUMMARY.stop)
        self._listed_runs = DecodedRows(self._dialect.read_run, 0, len(runs.c))
        try:
            if self.create_schema:
                await self._call(_upgrade, engine)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        while self._flushers or self._creates.tasks:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*self._flushers, *self._creates.tasks)
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def ping(self) -> None:
        def ping() -> None:
            with self._tx(read=True) as conn:
                conn.execute(select(literal(1)))
        await self._call(ping)

    def data_stamp(self) -> object | None:
        """With ``inline_reads`` (a SQLite file): the inline reader's connection and its ``PRAGMA
        data_version``, which every commit by any other connection or process moves on
        (:meth:`Database.data_stamp`). Otherwise None: MySQL has no such cheap counter, and a SQLite
        store without its own reader connection has none to read it on. Call it where the inline reads
        run (the API's thread)."""
        return None if self._db is None else self._db.data_stamp()

    # plumbing ---------------------------------------------------------------------------------
    @property
    def _database(self) -> Database:
        if self._db is None:
            raise RuntimeError("the store is not started")
        return self._db

    @property
    def _d(self) -> Dialect:
        assert self._dialect is not None
        return self._dialect

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` (one transaction) in the store's thread pool, driver errors as Chronos errors."""
        if self._db is None:
            raise StoreUnavailable("the store is not started")
        return await self._db.call(fn, *args)

    async def _job_write(self, fn: Callable[..., T], *args: Any) -> T:
        """``_call`` for a write of job definitions: a value a column cannot hold is the job's, so
        :class:`InvalidJob` at that column (422, :func:`too_large`). Only here (review-secfix F2)."""
        try:
            return await self._call(fn, *args)
        except sa_exc.DataError as exc:
            raise too_large(exc) from None

    async def _read(self, fn: Callable[..., T], *args: Any, filters: Sequence[Any] = ()) -> T:
        """``fn`` (one reading transaction): as :meth:`_call`, or on this thread with ``inline_reads``.

        The one rule of which reads may run inline (review-apigil F1): a key lookup, or a page read in
        its index's own order with no ``filters`` beyond the page's key range (``after``/``before``) and
        a job's id. A read given any of its other ``filters`` (a run's status, trigger, since/until, a
        job's last run status) is not indexed as the page is: it may walk the whole run history to find
        ``limit`` rows, and inline that would stand the caller's loop still for the whole scan, so it
        goes to the pool, where sqlite3 lets the GIL go while it steps."""
        if self._db is None:
            raise StoreUnavailable("the store is not started")
        if any(f is not None for f in filters):
            return await self._db.call(fn, *args)
        return await self._db.read(fn, *args)

    def _tx(self, read: bool = False) -> contextlib.AbstractContextManager[Connection]:
        """One transaction (see :meth:`Database.transaction`)."""
        return self._database.transaction(read)

    def _existing_slots(self, conn: Connection, planned: Sequence[Run]) -> set[tuple[str, datetime, int]]:
        return self._d.existing_slots(conn, planned)

    # jobs -------------------------------------------------------------------------------------
    async def add_jobs(self, jobs_: Sequence[Job]) -> None:
        seen: set[str] = set()
        for job in jobs_:
            if job.name in seen:
                raise NameConflict(job.name)
            seen.add(job.name)
        if jobs_:
            await self._creates.add(list(jobs_))

    async def _write_creates(self, members: list[list[Job]]) -> list[BaseException | None] | None:
        """One batch of creates (see ``create_batch``): each member's result."""
        return await self._job_write(run_batch, self._db, members)

    async def _create_alone(self, jobs_: list[Job]) -> None:
        """One add_jobs call on its own (a batch that had to be split)."""
        await self._job_write(job_ops.add_jobs, self._db, jobs_)

    async def get_job(self, job_id: str) -> Job:
        return await self._read(job_ops.get_job, self._db, job_id)

    async def get_job_by_name(self, name: str) -> Job:
        return await self._read(job_ops.get_job_by_name, self._db, name)

    async def list_jobs(self, *, status: JobStatus | None = None, type: str | None = None,
                        name: str | None = None, after: str | None = None, limit: int = 100,
                        last_status: Collection[RunStatus] | None = None) -> list[Job]:
        return await self._read(job_ops.list_jobs, self._db, self._dialect, self._listed_jobs, status, type,
                                name, after, limit, last_status, filters=(last_status,))

    async def list_jobs_with_summaries(self, *, status: JobStatus | None = None, type: str | None = None,
                                       name: str | None = None, after: str | None = None, limit: int = 100,
                                       last_status: Collection[RunStatus] | None = None
                                       ) -> list[tuple[Job, JobSummary]]:
        if limit <= 0:
            return []
        return await self._read(job_ops.list_jobs_with_summaries, self._db, self._dialect, self._listed_jobs,
                                self._listed_summaries, status, type, name, after, limit, last_status,
                                filters=(last_status,))

    async def job_summaries(self, job_ids: Collection[str]) -> dict[str, JobSummary]:
        ids = sorted(set(job_ids))
        return await self._read(job_ops.read_summaries, self._db, ids) if ids else {}

    async def update_job(self, job: Job) -> None:
        await self._job_write(job_ops.update_job, self._db, job)

    async def change_job(self, read: Job, changes: Mapping[str, Any], *,
                         records: Sequence[Run] = ()) -> JobChange | None:
        if "id" in changes:
            raise ValueError("a job's id never changes")
        return await self._job_write(job_ops.change_job, self._db, self._dialect, read, dict(changes),
                                list(records))

    async def delete_job(self, job_id: str) -> list[Run]:
        removed = await self._call(job_ops.delete_job, self._db, self._dialect, job_id)
        self._listed_jobs.forget(job_id)
        self._listed_summaries.forget(job_id)
        return removed

    # scheduling -------------------------------------------------------------------------------
    async def claim_due(self, now: datetime, limit: int, planner: Planner) -> Claim:
        return await self._call(claim.claim_due, self._db, self._dialect, self._job_cache,
                                self.job_cache_size,
                                self.on_dispatch, now, limit, planner)

    async def claim_due_runs(self, now: datetime, limit: int) -> list[Dispatch]:
        try:
            return await self._call(claim.claim_due_runs, self._db, self._dialect, self.on_dispatch, now,
                                    limit,
                                    None)
        except RunConflict as exc:
            # One run's hand-off conflicted (the on_dispatch hook's write) and rolled the batch back: hand
            # out the others, each in its own transaction, so one bad run cannot hold up every due retry.
            log.error("handing out due runs failed as a batch (%s); handing them out one by one", exc)
        out: list[Dispatch] = []
        for run_id in await self._call(claim.due_run_ids, self._db, now, limit):
            try:
                out.extend(await self._call(claim.claim_due_runs, self._db, self._dialect, self.on_dispatch,
                                            now, 1, run_id))
            except RunConflict as exc:
                log.error("run %s could not be handed out: %s", run_id, exc)
        return out

    async def next_due_time(self) -> datetime | None:
        return await self._call(run_ops.next_due_time, self._db)

    async def release_undispatched(self, run_ids: Collection[str] | None = None) -> int:
        return await self._call(run_ops.release_undispatched, self._db, run_ids)

    # runs -------------------------------------------------------------------------------------
    async def add_run(self, run: Run, *, dispatched: bool) -> None:
        await self._call(run_ops.add_run, self._db, self._dialect, self.on_dispatch, run, dispatched)

    async def get_run(self, run_id: str) -> Run:
        return await self._read(run_ops.get_run, self._db, run_id)

    async def list_runs(self, job_id: str | None = None, *, status: Collection[RunStatus] | None = None,
                        before: str | None = None, limit: int = 50,
                        trigger: Collection[Trigger] | None = None, since: datetime | None = None,
                        until: datetime | None = None) -> list[Run]:
        if limit <= 0:
            return []
        return await self._read(run_ops.list_runs, self._db, self._dialect, self._listed_runs, job_id, status,
                                before, limit, trigger, since, until, filters=(status, trigger, since, until))

    async def record_output(self, outputs: Mapping[str, tuple[str, int]], owner: str) -> set[str]:
        items = sorted(outputs.items())
        return await self._call(run_ops.record_output, self._db, self._dialect, items,
                                owner) if items else set()

    async def renew_leases(self, run_ids: Collection[str], owner: str, until: datetime) -> set[str]:
        ids = sorted(set(run_ids))
        return await self._call(run_ops.renew_leases, self._db, self._dialect, ids, owner,
                                until) if ids else set()

    async def cancel_queued_run(self, run_id: str, now: datetime, reason: str, *,
                                status: RunStatus = RunStatus.CANCELLED) -> bool:
        if status not in (RunStatus.CANCELLED, RunStatus.MISSED):
            raise ValueError(f"a queued run ends cancelled or missed, not {status}")
        # in the group commit: a worker that falls behind records a late slot per run it takes
        return bool(await self._write(Cancel(run_id, now, reason, status)))

    async def expired_leases(self, now: datetime, limit: int) -> list[Run]:
        return await self._call(run_ops.expired_leases, self._db, now, limit)

    async def delete_runs(self, job_id: str) -> int:
        return await self._call(run_ops.delete_runs, self._db, job_id)

    async def prune_runs(self, now: datetime, max_age: timedelta | None, limit: int, *,
                         default_limit: int | None = None) -> int:
        return await self._call(self._pruner.prune, self._db, now, max_age, limit, default_limit)

    async def stats(self, since: Sequence[datetime], top: int = 5) -> StoreStats:
        return await self._call(stats, self._db, since, top)

    # starts, cancels of queued runs and finishes: the group commit ------------------------------------
    async def start_run(self, run_id: str, owner: str, now: datetime, lease_until: datetime) -> bool:
        return bool(await self._write(Start(run_id, owner, now, lease_until)))

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
        return bool(await self._write(Finish(run_id, owner, status, finished_at, exit_code, output, error,
                                             retry, lines, lease_expires_at, hooks, json_text(result))))

    async def _write(self, op: Op) -> Any:
        """Queue a start/cancel/finish for the next group commit and wait for its own result."""
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
                fail_batch(batch, self._pending, exc)
                continue
            answer_batch(batch, results)

    def _apply_writes(self, ops: list[Op]) -> list[Any]:
        """One group commit (one transaction); if it conflicts or a value cannot be held, each call
        alone, so one bad write does not fail the others of its batch (review-secfix F2: a DataError
        from one run's finish failed every finish of its batch)."""
        try:
            with self._tx() as conn:
                return apply_writes(conn, self._d, ops)
        except sa_exc.IntegrityError:
            if len(ops) == 1:
                raise RunConflict("the retry's (job, slot, attempt) already exists") from None
        except sa_exc.DataError:
            if len(ops) == 1:
                raise
        results: list[Any] = []
        for op in ops:
            try:
                results.extend(Database.guarded(self._apply_writes, [op]))
            except (ChronosError, sa_exc.DataError) as exc:  # that write's own answer
                results.append(exc)
        return results

    # notices ------------------------------------------------------------------------------------------
    async def add_notices(self, notices_: Sequence[Notice]) -> int:
        items = list(notices_)
        if not items:
            return 0
        try:
            return await self._call(notice_ops.add_notices, self._db, items)
        except RunConflict:  # a concurrent writer inserted one of the keys first: the rest, one by one
            added = 0
            for n in items:
                try:
                    added += await self._call(notice_ops.add_notices, self._db, [n])
                except RunConflict:
                    pass
            return added

    async def claim_notices(self, now: datetime, limit: int, owner: str, lease_until: datetime
                            ) -> list[Notice]:
        return await self._call(notice_ops.claim_notices, self._db, self._dialect, now, limit, owner,
                                lease_until)

    async def settle_notice(self, notice_id: str, owner: str, *, status: NoticeStatus, now: datetime,
                            due_at: datetime | None = None, error: str | None = None,
                            code: int | None = None, result: str | None = None) -> bool:
        return await self._call(notice_ops.settle_notice, self._db, self._dialect, notice_id, owner, status,
                                now, due_at, error, code, result)

    async def list_notices(self, *, run_id: str | None = None, job_id: str | None = None,
                           result: str | None = None, limit: int = 100) -> list[Notice]:
        return await self._call(notice_ops.list_notices, self._db, run_id, job_id, result, limit)


def _upgrade(engine: Engine) -> None:
    with engine.connect() as conn:
        upgrade_connection(conn)
