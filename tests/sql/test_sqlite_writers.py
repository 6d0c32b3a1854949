"""On SQLite one transaction writes at a time. Writers of one store wait for each other on the store's own
lock and go as soon as the writer before them commits, not when SQLite's busy handler next polls (it sleeps
up to 100 ms between tries), which left a scheduler's group commits waiting behind its claims."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import event

from chronos_adapters.sql import SqlStore
from tests.contracts.test_store_contract import T0, S, make_job, make_run


class _AskedLock:
    """The store's writer lock, setting the ``asked`` events when a thread other than the holder asks
    for it."""

    def __init__(self, inner: Any, *asked: threading.Event) -> None:
        self.inner, self.asked, self.holder = inner, asked, -1

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if threading.get_ident() != self.holder:
            for e in self.asked:
                e.set()
        got: bool = self.inner.acquire(blocking, timeout)
        return got

    def release(self) -> None:
        self.inner.release()


async def test_a_waiting_writer_goes_as_soon_as_the_one_before_commits(tmp_path: Path) -> None:
    """Timing-free: SQLite's busy handler is switched off (``busy_timeout=0``), so a writer that reached
    SQLite while another held the write lock would fail at once with "database is locked" instead of
    polling; it must wait on the store's lock instead, and go (succeed) when the one before commits."""
    async with SqlStore(f"sqlite:///{tmp_path / 'w.db'}") as store:
        job = make_job("w")
        await store.add_jobs([job])
        run = make_run(job, T0)
        await store.add_run(run, dispatched=True)

        @event.listens_for(store.engine, "checkout")
        def _no_busy_handler(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=0")

        db = store._database
        asked = threading.Event()
        go_on = threading.Event()  # the waiter asked for the lock (or failed without asking)
        lock = db._writer = _AskedLock(db._writer, asked, go_on)

        def hold() -> None:
            lock.holder = threading.get_ident()
            with store._tx():
                holding.set()
                go_on.wait(30)

        holding = threading.Event()
        holder = threading.Thread(target=hold)
        holder.start()
        assert await asyncio.to_thread(holding.wait, 30)
        cancel = asyncio.ensure_future(store.cancel_queued_run(run.id, T0 + S, "stop"))
        cancel.add_done_callback(lambda _: go_on.set())  # failed without asking: let the holder commit
        try:
            # no "database is locked": it asked while the holder wrote, waited on the store's lock, and
            # its BEGIN IMMEDIATE (which cannot wait) came after the holder's commit
            assert await cancel
        finally:
            await asyncio.to_thread(holder.join, 30)
        assert asked.is_set()
        assert (await store.get_run(run.id)).status.value == "cancelled"


async def test_a_sibling_store_waits_on_the_same_writer_lock(tmp_path: Path) -> None:
    """The API's own store in ``chronos serve`` (``SqlStore.sibling``: another engine and thread pool over
    the same file) shares the writer lock: with SQLite's busy handler off, a write of the sibling while
    the first store holds the write lock waits for the commit instead of failing with "database is
    locked" (as it does when the sibling has a lock of its own)."""
    asked = threading.Event()
    go_on = threading.Event()
    store = SqlStore(f"sqlite:///{tmp_path / 'w.db'}")
    lock = store._writer_lock = _AskedLock(store._writer_lock, asked, go_on)  # type: ignore[assignment]
    async with store:
        job = make_job("w")
        await store.add_jobs([job])
        run = make_run(job, T0)
        await store.add_run(run, dispatched=True)
        asked.clear()  # set by the writes above
        go_on.clear()
        async with store.sibling() as sibling:
            for engine in (store.engine, sibling.engine):
                @event.listens_for(engine, "checkout")
                def _no_busy_handler(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
                    dbapi_conn.execute("PRAGMA busy_timeout=0")

            holding = threading.Event()

            def hold() -> None:
                lock.holder = threading.get_ident()
                with store._tx():
                    holding.set()
                    go_on.wait(30)

            holder = threading.Thread(target=hold)
            holder.start()
            assert await asyncio.to_thread(holding.wait, 30)
            cancel = asyncio.ensure_future(sibling.cancel_queued_run(run.id, T0 + S, "stop"))
            cancel.add_done_callback(lambda _: go_on.set())  # failed without asking: let the holder go
            try:
                assert await cancel  # no "database is locked"
            finally:
                await asyncio.to_thread(holder.join, 30)
            assert asked.is_set()
            assert (await sibling.get_run(run.id)).status.value == "cancelled"


async def test_inline_reads_run_on_the_callers_thread_and_writes_in_the_pool(tmp_path: Path) -> None:
    """The API's own store in ``chronos serve`` on a SQLite file (``sibling(inline_reads=True)``): its hot
    reads run on the calling thread (no pool thread to hand the GIL to and back, row by row), its writes
    still in the pool, behind the shared writer lock."""
    async with SqlStore(f"sqlite:///{tmp_path / 'w.db'}") as store:
        job = make_job("w")
        await store.add_jobs([job])
        async with store.sibling(inline_reads=True) as sibling:
            threads: dict[str, int] = {}

            def _seen(conn: Any) -> None:
                threads["read" if conn.get_execution_options().get("chronos_read") else "write"] = \
                    threading.get_ident()
            # the pool's engine, and the inline reads' own connection (review-apigil F2)
            reader = sibling._database._reader
            assert reader is not None
            for engine in (sibling.engine, reader):
                event.listen(engine, "begin", _seen)

            assert [j.id for j, _ in await sibling.list_jobs_with_summaries()] == [job.id]
            assert (await sibling.get_job(job.id)).name == "w"
            assert threads == {"read": threading.get_ident()}
            run = make_run(job, T0)
            await sibling.add_run(run, dispatched=True)
            assert threads["write"] != threading.get_ident()
            assert (await sibling.get_run(run.id)).id == run.id
        # the engines' store itself keeps every call in its pool
        assert store._database.inline_reads is False


async def test_a_write_inside_an_inline_read_is_refused(tmp_path: Path) -> None:
    """An inline read runs on the caller's event loop: a writing transaction there could wait up to 60 s
    for the writer lock while holding the loop, so it raises instead (a read function that writes is a
    bug in the store)."""
    import pytest

    async with SqlStore(f"sqlite:///{tmp_path / 'w.db'}", inline_reads=True) as store:
        db = store._database

        def writes() -> None:
            with db.transaction():
                pass

        with pytest.raises(RuntimeError, match="inside an inline read"):
            await db.read(writes)
        await db.call(writes)  # through the pool, as before
        assert not db._writer.locked()


def test_inline_reads_only_for_a_sqlite_file() -> None:
    """A server's reads wait on the network (inline they would hold the loop meanwhile); an in-memory
    SQLite database is one connection, shared with the pool's thread."""
    import pytest
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    from chronos_adapters.sql.engine import Database

    with pytest.raises(ValueError, match="SQLite file"):
        Database(create_engine("sqlite://", poolclass=StaticPool), 1, inline_reads=True)
    with pytest.raises(ValueError, match="SQLite file"):
        Database(create_engine("mysql+pymysql://u@127.0.0.1/x"), 1, inline_reads=True)
