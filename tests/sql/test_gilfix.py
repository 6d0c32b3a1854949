"""review-apigil's findings, fixed: which reads run inline on the API's loop (F1), the inline reads'
own connection (F2), the decoded rows' weight (F4); and what the review found sound, kept so."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from chronos_adapters.sql import SqlStore
from chronos_adapters.sql.decoded import DecodedRows
from chronos_core.errors import StoreUnavailable
from chronos_core.models import JobStatus, RunStatus, Trigger
from tests.contracts.test_store_contract import T0, S, make_job, make_run


async def _loop_gap(call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(the largest gap between 10 ms ticks of the caller's loop during ``call()``, how long it took)."""
    gaps: list[float] = []
    stop = False

    async def ticker() -> None:
        last = time.monotonic()
        while not stop:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
    t = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await call()
    took = time.monotonic() - t0
    stop = True
    await t
    return max(gaps), took


# ---- F1: which reads run inline ---------------------------------------------------------------------

async def test_only_plainly_bounded_reads_run_inline(tmp_path: Path) -> None:
    """Key lookups and unfiltered pages run on the caller's thread; a listing with a filter that is not
    its page's index (a run's status, trigger, since/until; a job's last run status) goes to the pool."""
    async with SqlStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        job = make_job("r")
        await store.add_jobs([job])
        run = make_run(job, T0)
        await store.add_run(run, dispatched=True)
        async with store.sibling(inline_reads=True) as api:
            db = api._database
            pooled: list[str] = []
            call = db.call

            async def spy(fn: Callable[..., Any], *args: Any) -> Any:
                pooled.append(fn.__name__)
                return await call(fn, *args)
            db.call = spy  # type: ignore[method-assign]

            async def pool(read: Callable[[], Awaitable[Any]]) -> bool:
                pooled.clear()
                await read()
                return bool(pooled)
            inline = [lambda: api.get_job(job.id), lambda: api.get_job_by_name("r"),
                      lambda: api.get_run(run.id), lambda: api.list_jobs(limit=10),
                      lambda: api.list_jobs(status=JobStatus.ACTIVE, after="a"),
                      lambda: api.list_jobs_with_summaries(limit=10), lambda: api.job_summaries([job.id]),
                      lambda: api.list_runs(job.id, before="z"), lambda: api.list_runs(limit=5)]
            filtered = [lambda: api.list_runs(job.id, status={RunStatus.FAILED}),
                        lambda: api.list_runs(status={RunStatus.QUEUED}),
                        lambda: api.list_runs(trigger={Trigger.RETRY}),
                        lambda: api.list_runs(since=T0), lambda: api.list_runs(job.id, until=T0 + S),
                        lambda: api.list_jobs(last_status={RunStatus.FAILED}),
                        lambda: api.list_jobs_with_summaries(last_status={RunStatus.FAILED})]
            assert [await pool(r) for r in inline] == [False] * len(inline)
            assert [await pool(r) for r in filtered] == [True] * len(filtered)


async def test_a_long_history_scan_does_not_freeze_the_api_loop(tmp_path: Path) -> None:
    """``GET /runs?trigger=retry`` over a long history matching nothing walks every run: from an inline
    sibling it runs in the pool, so the loop keeps ticking (it stood still 0.38 s for 400 k runs
    inline; it fails so with the filtered reads sent through Database.read). 800 k runs: on a quiet
    machine 400 k took 0.096 s, too short for the gap to tell inline from pooled."""
    path = tmp_path / "f.db"
    async with SqlStore(f"sqlite:///{path}") as store:
        job = make_job("h")
        await store.add_jobs([job])
        await store.add_run(make_run(job, T0), dispatched=True)
        conn = sqlite3.connect(path, isolation_level=None)
        cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
        sel = ", ".join("printf('%026d', n)" if c == "id" else
                        ("datetime(scheduled_for, '+' || n || ' seconds')" if c == "scheduled_for" else c)
                        for c in cols)
        conn.execute(f"INSERT INTO runs ({', '.join(cols)}) WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL "
                     f"SELECT n + 1 FROM s WHERE n < 800000) SELECT {sel} FROM s, runs")
        conn.close()
        async with store.sibling(inline_reads=True) as api:
            await api.list_jobs()
            gap, took = await _loop_gap(lambda: api.list_runs(trigger={Trigger.RETRY}, limit=1))
        assert took > 0.1  # the scan is long
        assert gap < max(0.08, took / 3), (gap, took)


# ---- F2: the inline reads' own connection -----------------------------------------------------------

async def test_a_full_pool_does_not_make_an_inline_read_wait_on_the_loop(tmp_path: Path) -> None:
    """pool_size=1, its one connection held by a write in SQLite's busy handler (another process holds
    the write lock 1.5 s): the inline read uses its own connection and does not wait for the pool's (it
    froze the loop 1.49 s when it took one from the pool)."""
    path = tmp_path / "e.db"
    async with SqlStore(f"sqlite:///{path}", pool_size=1) as store:
        job = make_job("p")
        await store.add_jobs([job])
        async with store.sibling(inline_reads=True) as api:
            await api.list_jobs()
            other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            other.execute("BEGIN IMMEDIATE")  # another process's writer (WAL: readers are not blocked)
            write = asyncio.create_task(api.add_run(make_run(job, T0), dispatched=True))
            await asyncio.sleep(0.2)  # the write holds the pool's connection, in the busy handler
            timer = threading.Timer(1.5, lambda: other.execute("COMMIT"))
            timer.start()
            try:
                gap, took = await _loop_gap(api.list_jobs)
            finally:
                await write
                timer.join()
                other.close()
            assert took < 0.5 and gap < 0.5, (gap, took)


async def test_the_inline_readers_connection_cannot_write(tmp_path: Path) -> None:
    """query_only: even a statement that writes inside a reading transaction is refused."""
    async with SqlStore(f"sqlite:///{tmp_path / 'q.db'}") as store:
        await store.add_jobs([make_job("q")])
        async with store.sibling(inline_reads=True) as api:
            db = api._database

            def write() -> None:
                with db.transaction(read=True) as conn:
                    conn.exec_driver_sql("UPDATE jobs SET description = 'x'")
            with pytest.raises(StoreUnavailable, match=r"readonly|read-only|query_only"):
                await db.read(write)
            assert (await api.list_jobs())[0].description != "x"


# ---- F4: what the decoded rows weigh ----------------------------------------------------------------

@pytest.mark.parametrize("item", [{}, {"a": 1}, 7, "s", [], None])
def test_the_counted_bytes_cover_what_structured_payloads_hold(item: Any) -> None:
    """Rows of many tiny JSON values, each under the per-row cap: what is counted is at least what
    tracemalloc sees held (twice the text counted 6.0 MB for 75.7 MB held, x12.6, with ``{}``)."""
    text = json.dumps({"items": [item] * 1000}, separators=(",", ":"))
    rows = DecodedRows(lambda r: json.loads(r[1]), 0, 2)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20):
        rows((f"id{i}", text + " " * i))  # distinct text objects
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(rows) == 20
    assert used <= rows.nbytes, (used, rows.nbytes)


def test_a_row_of_very_many_values_is_not_kept() -> None:
    """The reviewer's 150 KB rows of 50,000 ``{}`` weigh more than a hundredth of the cap: decoded each
    time, never kept."""
    text = json.dumps({"items": [{} for _ in range(50_000)]}, separators=(",", ":"))
    rows = DecodedRows(lambda r: json.loads(r[1]), 0, 2)
    for i in range(3):
        rows((f"id{i}", text))
    assert len(rows) == 0 and rows.nbytes == 0


# ---- found sound, kept so -------------------------------------------------------------------------

def _hold_writer(path: Path, seconds: float, ready: threading.Event) -> None:
    """Another process's writer holding SQLite's write lock (BEGIN EXCLUSIVE: under WAL as IMMEDIATE)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE jobs SET description = 'x'")
    ready.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


async def test_a_writer_holding_the_lock_does_not_stall_an_inline_read(tmp_path: Path) -> None:
    """WAL: a writer (the engines', another process's, BEGIN EXCLUSIVE included) never blocks a reader;
    locking_mode=EXCLUSIVE cannot even be taken while the store has the file open."""
    path = tmp_path / "d.db"
    async with SqlStore(f"sqlite:///{path}") as store:
        await store.add_jobs([make_job("locked")])
        async with store.sibling(inline_reads=True) as api:
            await api.list_jobs()
            ready = threading.Event()
            holder = threading.Thread(target=_hold_writer, args=(path, 1.5, ready))
            holder.start()
            ready.wait(5)
            gap, took = await _loop_gap(api.list_jobs)
            await asyncio.to_thread(holder.join)
            assert took < 0.3 and gap < 0.3
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("BEGIN EXCLUSIVE")
        conn.close()


async def test_update_and_back_and_recreate_same_id_are_listed_as_stored(tmp_path: Path) -> None:
    async with SqlStore(f"sqlite:///{tmp_path / 'c.db'}") as store:
        job = make_job("x")
        await store.add_jobs([job])
        a = (await store.list_jobs())[0]
        await store.update_job(dataclasses.replace(job, payload={"command": "echo 2"}))
        assert (await store.list_jobs())[0].payload == {"command": "echo 2"}
        await store.update_job(job)
        assert (await store.list_jobs())[0].payload == job.payload
        await store.delete_job(job.id)
        again = dataclasses.replace(job, payload={"command": "echo reborn"})
        await store.add_jobs([again])
        b = (await store.list_jobs())[0]
        assert b is not a and b.payload == {"command": "echo reborn"}


def test_decoded_rows_from_many_threads() -> None:
    rows = DecodedRows(lambda r: (r[0], r[1]), 0, 2, max_entries=50, max_bytes=64 * 1024)
    errors: list[BaseException] = []

    def hammer(n: int) -> None:
        try:
            for i in range(20_000):
                k = (i * 7 + n) % 300
                v = (k, f"v{i % 3}")
                assert rows(v) == v
                if i % 97 == 0:
                    rows.forget(k)
        except BaseException as e:
            errors.append(e)
    ts = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert len(rows) <= 50 and rows.nbytes == sum(e[2] for e in rows._entries.values())
