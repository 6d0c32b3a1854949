"""On SQLite one transaction writes at a time. Writers of one store wait for each other on the store's own
lock and go as soon as the writer before them commits, not when SQLite's busy handler next polls (it sleeps
up to 100 ms between tries), which left a scheduler's group commits waiting behind its claims."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from chronos_adapters.sql import SqlStore
from tests.contracts.test_store_contract import T0, S, make_job, make_run


async def test_a_waiting_writer_goes_as_soon_as_the_one_before_commits(tmp_path: Path) -> None:
    async with SqlStore(f"sqlite:///{tmp_path / 'w.db'}") as store:
        job = make_job("w")
        await store.add_jobs([job])
        run = make_run(job, T0)
        await store.add_run(run, dispatched=True)
        holding, waiting = threading.Event(), threading.Event()
        committed: list[float] = []

        def hold() -> None:
            with store._tx():
                holding.set()
                waiting.wait(5)
                # SQLite's busy handler would next try 178 ms after the waiter began (tries at 128 and
                # 178 ms): commit in between
                time.sleep(0.140)
            committed.append(time.perf_counter())

        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(5)
        cancel = asyncio.ensure_future(store.cancel_queued_run(run.id, T0 + S, "stop"))
        await asyncio.sleep(0)
        waiting.set()
        assert await cancel
        done = time.perf_counter()
        holder.join()
        assert done - committed[0] < 0.025
