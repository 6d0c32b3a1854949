"""``SqlStore.data_stamp``: with the SQLite inline reader, the reader connection and its ``PRAGMA
data_version``; it must move on with every commit to the file, by this store's own writers, by another
store (connection) of this process and by another process, and stay put while nothing is written. The
API's kept pages (chronos_app/api/pages.py) are served only while it stays put."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import sys
from pathlib import Path

import pytest

from chronos_adapters.memory import MemoryStore
from chronos_adapters.sql import SqlStore
from tests.contracts.test_store_contract import T0, make_job, make_run


async def _in_another_process(code: str, *args: str) -> None:
    """``python -c code args...`` in another process, waited for (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, *args)
    assert await asyncio.wait_for(proc.wait(), 60) == 0



async def test_the_stamp_moves_with_every_commit_by_any_connection_or_process(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    url = f"sqlite:///{path}"
    async with SqlStore(url) as engines, engines.sibling(inline_reads=True) as api:
        job = make_job("a")
        await engines.add_jobs([job])
        first = api.data_stamp()
        assert first is not None
        await api.list_jobs()  # reads (inline, and in the pool) change nothing
        await api.list_runs(job.id, status={make_run(job, T0).status})
        assert api.data_stamp() == first

        await engines.add_run(make_run(job, T0), dispatched=True)  # another store of this process
        second = api.data_stamp()
        assert second != first

        await api.update_job(dataclasses.replace(job, description="own"))  # its own pool's writer
        third = api.data_stamp()
        assert third != second

        await _in_another_process("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "  # another process
                                  "c.execute(\"UPDATE jobs SET description = 'elsewhere'\"); c.commit()",
                                  str(path))
        fourth = api.data_stamp()
        assert fourth != third

        other = sqlite3.connect(path)  # a connection that begins and rolls back: no commit, no change
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE jobs SET description = 'never'")
        other.rollback()
        other.close()
        assert api.data_stamp() == fourth
        assert (await api.get_job(job.id)).description == "elsewhere"


async def test_no_stamp_without_the_inline_reader(tmp_path: Path) -> None:
    """The pool's connections are many (a stamp read on one says nothing of what the next read sees
    there): a SQLite store without its inline reader, a stopped one and the memory store give None."""
    store = SqlStore(f"sqlite:///{tmp_path / 'n.db'}")
    assert store.data_stamp() is None  # not started
    async with store:
        assert store.data_stamp() is None
        async with store.sibling(inline_reads=True) as api:
            assert api.data_stamp() is not None
        assert api.data_stamp() is None  # stopped
    assert MemoryStore().data_stamp() is None


@pytest.mark.mysql
async def test_mysql_gives_no_stamp(clean_mysql_url: str) -> None:
    async with SqlStore(clean_mysql_url, create_schema=False) as store:
        assert store.data_stamp() is None


async def test_no_stamp_from_inside_an_inline_read(tmp_path: Path) -> None:
    """Handing the reader connection back to its pool rolls it back: a stamp taken inside an inline read
    would end that read's transaction under it. None there instead, and the read goes on."""
    url = f"sqlite:///{tmp_path / 'i.db'}"
    async with SqlStore(url) as engines, engines.sibling(inline_reads=True) as api:
        await engines.add_jobs([make_job("a"), make_job("b")])
        db = api._database

        def read() -> tuple[object, int]:
            with db.transaction(read=True) as conn:
                first = conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one()
                stamp = api.data_stamp()
                assert conn.in_transaction()
                return stamp, first + conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one()

        assert await db.read(read) == (None, 4)
        assert api.data_stamp() is not None
