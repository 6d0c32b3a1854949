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
