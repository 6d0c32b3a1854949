"""The group commit of job creates: the ``add_jobs`` calls that arrive together (concurrent ``POST /jobs``)
written in one transaction, each call still all-or-none on its own and answered as it would be alone.

:class:`CreateBatcher` queues the calls and runs one batch at a time per commit slot (the shape of the
start/finish group commit in ``store.py``); :func:`insert_batch` is the body of one batch: one read of the
taken names for every member, then one insert of the accepted members' jobs and summaries. A member whose
name is taken - by a stored job or by an earlier member of the same batch - gets :class:`NameConflict`,
exactly as it would when run after those. If the insert still fails on a member's rows (a constraint:
another process took a name between the read and the insert on MySQL, an id collision, a trigger; or a
MySQL lock wait/deadlock on a name another writer holds), the transaction is rolled back and every member
runs alone (``job_ops.add_jobs``, one call each, concurrently), so each gets its own result and only the
blocked one waits; a failure of the database itself (an ``OperationalError``: unreachable, locked, no
such table) fails every member with the store's usual error, and nothing of the batch is written."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy import exc as sa_exc

from chronos_core.errors import NameConflict, StoreUnavailable
from chronos_core.models import Job

from .dialects.base import chunks
from .engine import Database, is_lock_conflict
from .job_ops import add_jobs
from .rows import job_row
from .tables import job_summaries, jobs

__all__ = ["CreateBatcher", "answer_batch", "fail_batch", "insert_batch", "run_batch"]

Member = list[Job]
"""One ``add_jobs`` call: its jobs, all or none."""

# errors of the database or the connection, not of a member's rows: the batch fails as a whole
_DATABASE_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                    sa_exc.DisconnectionError, StoreUnavailable)


def insert_batch(conn: Connection, members: Sequence[Member]) -> list[NameConflict | None]:
    """Insert the members whose names are free in ``conn``'s transaction; per member None (inserted) or
    the :class:`NameConflict` it gets alone (its first name taken, in its own order)."""
    names = sorted({j.name for m in members for j in m})
    taken: set[str] = set()
    for chunk in chunks(names):
        taken.update(conn.scalars(select(jobs.c.name).where(jobs.c.name.in_(chunk))))
    results: list[NameConflict | None] = []
    rows: list[dict[str, Any]] = []
    for member in members:
        clash = next((j.name for j in member if j.name in taken), None)
        if clash is not None:
            results.append(NameConflict(clash))
            continue
        taken.update(j.name for j in member)  # a later member of this batch with one of them loses
        rows.extend(job_row(j) for j in member)
        results.append(None)
    if rows:
        conn.execute(insert(jobs), rows)
        conn.execute(insert(job_summaries), [{"job_id": r["id"]} for r in rows])
    return results


def run_batch(db: Database, members: Sequence[Member]) -> list[BaseException | None] | None:
    """One batch (one transaction): per member None (created) or the exception it gets; None when the
    batch failed on a member's rows, and each member must run alone."""
    if len(members) == 1:
        add_jobs(db, members[0])
        return [None]
    try:
        with db.transaction() as conn:
            return list(insert_batch(conn, members))
    except Exception as exc:
        if isinstance(exc, _DATABASE_ERRORS) and not is_lock_conflict(exc):
            raise  # the database's: every member gets it (Database.guarded translates it)
        # a member's rows: a constraint, or (MySQL) a lock another writer holds on one member's name -
        # only that member must wait for it, and each member alone says which failed
        return None


class CreateBatcher:
    """Concurrent ``add_jobs`` calls gathered into batches of at most ``max_jobs`` jobs (a call is never
    split), at most ``parallel`` batches in flight. ``run`` writes one batch (:func:`run_batch` in the
    store's pool): each member's result, or None to split it; then ``alone`` writes each member as one call
    of its own, concurrently, each answered as soon as it is done (as without batching: a member waiting
    on a lock holds up neither the others nor the next batch)."""

    def __init__(self, run: Callable[[list[Member]], Awaitable[list[BaseException | None] | None]],
                 alone: Callable[[Member], Awaitable[None]], *, parallel: int, max_jobs: int = 500) -> None:
        self._run = run
        self._alone = alone
        self.parallel = parallel
        self.max_jobs = max_jobs
        self._pending: list[tuple[Member, asyncio.Future[None]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._singles: set[asyncio.Task[None]] = set()

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """The batches and single calls in flight (the store waits for them at stop)."""
        return self._flushers | self._singles

    async def add(self, member: Member) -> None:
        """Queue ``member`` for the next batch; return when it is committed, or raise its error."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((member, fut))
        if sum(not t.done() for t in self._flushers) < self.parallel:
            self._spawn(self._flushers, self._flush(), "chronos-sql-create-batch")
        await fut

    @staticmethod
    def _spawn(into: set[asyncio.Task[None]], work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        into.add(task)
        task.add_done_callback(into.discard)

    def _take(self) -> list[tuple[Member, asyncio.Future[None]]]:
        # a caller gone while its call waited (cancelled: a timeout, an interrupted SyncChronos, shutdown)
        # is not written, as a call whose thread never started was not: no job without its job.created
        self._pending = [(m, fut) for m, fut in self._pending if not fut.done()]
        size, n = 0, 0
        for member, _ in self._pending:
            if n and size + len(member) > self.max_jobs:
                break
            size, n = size + len(member), n + 1
        batch = self._pending[:n]
        del self._pending[:n]
        return batch

    async def _flush(self) -> None:
        while self._pending:
            batch = self._take()
            if not batch:
                continue
            try:
                results = await self._run([m for m, _ in batch])
            except BaseException as exc:
                fail_batch(batch, self._pending, exc)
                continue
            if results is None:
                for member, fut in batch:
                    self._spawn(self._singles, self._single(member, fut), "chronos-sql-create-alone")
                continue
            answer_batch(batch, results)

    async def _single(self, member: Member, fut: asyncio.Future[None]) -> None:
        try:
            await self._alone(member)
        except BaseException as exc:
            fail_batch([(member, fut)], [], exc)  # (a cancellation is raised again)
        else:
            answer_batch([(member, fut)], [None])


Waiting = list[tuple[Any, asyncio.Future[Any]]]
"""A group commit's calls, each with the future its caller waits on."""


def answer_batch(batch: Waiting, results: Sequence[Any]) -> None:
    """Each caller its own result: an exception is raised to it, anything else returned."""
    for (_, fut), result in zip(batch, results, strict=True):
        if fut.done():
            continue  # the caller gave up waiting
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


def fail_batch(batch: Waiting, pending: Waiting, exc: BaseException) -> None:
    """The batch failed as a whole: every caller of it gets ``exc``. A cancellation (the store stopping)
    fails the calls still queued as well and is raised again."""
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(exc if isinstance(exc, Exception) else StoreUnavailable(
                "the store stopped before the write was done"))
    if not isinstance(exc, Exception):
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(StoreUnavailable("the store stopped"))
        pending.clear()
        raise exc
