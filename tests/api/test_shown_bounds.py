"""The jobs-as-shown cache (chronos_app.api.shown.ShownJobs) is bounded in memory: by the bytes it holds,
not only by its number of jobs, and a deleted job's entry goes with it (secreview2).

Each entry holds a job's masked payload and its JSON, so it weighs what the job weighs: with only a
count of 20,000 a write token could make the server hold 20,000 one-MiB jobs (~40 GB) - creating,
reading and deleting each in turn, the store ending empty - and a read-only token paging through a
store of large jobs made the server keep a copy of all of them. Measured with tracemalloc: what the
process still holds after the requests, on a SQLite store (whose pages tracemalloc does not see).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from tests.api.conftest import build_app, job, running

MIB = 1024 * 1024
BIG_BODY = "x" * (900 * 1024)  # under the default 1 MiB request body
SECRET = "Bearer big-job-secret-5e1f0c9a"


def big_job(i: int) -> dict[str, object]:
    return job(name=f"big-{i}", type="http", schedule="@every 1h",
               payload={"url": "https://example.com/hook", "method": "POST", "body": BIG_BODY,
                        "headers": {"Authorization": SECRET}})


async def retained(step: Callable[[], Awaitable[None]]) -> int:
    """Bytes still allocated after ``step`` that were not before it."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        await step()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(d.size_diff for d in after.compare_to(before, "filename"))


async def settle(c: httpx.AsyncClient) -> None:
    """A few small store calls: the rows of the last call (here a page of 5 large jobs, ~5 MiB parsed)
    stay referenced by the store's thread-pool machinery until later calls replace them. That is one
    call's worth, whatever the cache holds; without these, the measure counted it as the cache's."""
    for _ in range(6):
        assert (await c.get("/jobs/no-such-job")).status_code == 404


def sqlite_app(tmp_path: Path) -> object:
    return build_app(scheduler=False, worker=False, database_url=f"sqlite:///{tmp_path}/chronos.db")


async def test_the_cache_holds_at_most_its_byte_budget(tmp_path: Path) -> None:
    app = sqlite_app(tmp_path)
    app.state.api.shown.max_bytes = 4 * MIB
    async with running(app) as c:
        async def create_and_read() -> None:
            ids = []
            for i in range(20):  # ~18 MiB of jobs
                r = await c.post("/jobs", json=big_job(i))
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
            for job_id in ids:
                r = await c.get(f"/jobs/{job_id}")
                assert r.status_code == 200 and SECRET not in r.text
                assert r.json()["payload"]["body"] == BIG_BODY  # an answer not kept is still whole
            page = await c.get("/jobs?limit=5")
            assert page.status_code == 200 and len(page.json()["items"]) == 5
            await settle(c)

        grown = await retained(create_and_read)
    # the budget plus room for the allocator's and the app's own bookkeeping; ~36 MiB without the bound
    assert grown < 8 * MIB, f"{grown / MIB:.1f} MiB kept for 20 jobs shown"


async def test_a_deleted_job_is_not_kept(tmp_path: Path) -> None:
    async with running(sqlite_app(tmp_path)) as c:
        async def churn() -> None:
            for i in range(20):  # create, read, delete: the store ends as it began
                r = await c.post("/jobs", json=big_job(i))
                assert r.status_code == 201, r.text
                assert (await c.get(f"/jobs/{r.json()['id']}")).status_code == 200
                assert (await c.delete(f"/jobs/{r.json()['id']}")).status_code == 204
        grown = await retained(churn)
    assert grown < 4 * MIB, f"{grown / MIB:.1f} MiB kept after 20 jobs created and deleted"


async def test_small_jobs_are_still_kept() -> None:
    """The bound is by bytes: the jobs of a usual store (a few KiB each) all stay within it."""
    app = build_app(scheduler=False, worker=False)
    shown = app.state.api.shown
    async with running(app) as c:
        for i in range(200):
            r = await c.post("/jobs", json=job(name=f"small-{i}", type="http", schedule="@every 1h",
                                               payload={"url": "https://example.com/a",
                                                        "headers": {"Authorization": SECRET}}))
            assert r.status_code == 201
        assert len((await c.get("/jobs?limit=200")).json()["items"]) == 200
        assert len(shown) == 200


async def test_a_job_over_the_budget_does_not_push_the_others_out(tmp_path: Path) -> None:
    app = sqlite_app(tmp_path)
    shown = app.state.api.shown
    shown.max_bytes = 512 * 1024  # under one big job, over many small ones
    async with running(app) as c:
        for i in range(10):
            assert (await c.post("/jobs", json=job(name=f"small-{i}"))).status_code == 201
        assert len(shown) == 10
        big = await c.post("/jobs", json=big_job(0))
        assert big.status_code == 201 and SECRET not in big.text
        assert len(shown) == 10 and shown.nbytes <= shown.max_bytes
        assert (await c.get(f"/jobs/{big.json()['id']}")).json()["payload"]["body"] == BIG_BODY
        assert len(shown) == 10
