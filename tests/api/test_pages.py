"""Kept pages of ``GET /jobs`` and ``GET /jobs/{id}/history`` (chronos_app/api/pages.py): the real app on a
SQLite file whose store has its inline reader (the only store with a data stamp), engines off so that
nothing commits but what a test writes.

What must hold: an unchanged page is served from memory; any commit - through the API, another store
(connection) of the process, another process, one landing while a page is being built - makes the next
request build it again; two requests differing in any query field, the route's path, the caller's role
or the registered job types never share a page; the bounds hold."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from chronos_adapters.sql import SqlStore
from chronos_app.api.pages import KeptPages
from chronos_app.api.routes import HistoryQuery, JobListQuery
from chronos_core import Payload
from chronos_core.secrets import REDACTED
from tests.api.conftest import build_app, job, running
from tests.contracts.test_store_contract import T0, S, make_job, make_run

ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
SECRET = "Bearer pages-secret-value-42"

async def _in_another_process(code: str, *args: str) -> None:
    """``python -c code args...`` in another process, waited for (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, *args)
    assert await asyncio.wait_for(proc.wait(), 60) == 0



def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/chronos.db"


def inline_app(url: str, **settings: Any) -> Starlette:
    """The app with the API's own store reading inline, as ``chronos serve`` runs it (front.py)."""
    return build_app(scheduler=False, worker=False, database_url=url,
                     store=SqlStore(url, inline_reads=True), **settings)


def pages_of(app: Starlette) -> KeptPages:
    pages: KeptPages = app.state.api.pages
    return pages


@contextlib.asynccontextmanager
async def other_store(url: str) -> AsyncIterator[SqlStore]:
    """Another store (its own connections) on the same file: another writer than the API's."""
    async with SqlStore(url, create_schema=False) as store:
        yield store


async def _created(c: httpx.AsyncClient, **changes: Any) -> dict[str, Any]:
    r = await c.post("/jobs", json=job(**changes))
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def _get(c: httpx.AsyncClient, path: str, **kw: Any) -> bytes:
    r = await c.get(path, **kw)
    assert r.status_code == 200, r.text
    return r.content


# ------------------------------------------------------------------------------ served, then dropped


async def test_an_unchanged_page_is_served_from_memory_until_a_write_through_the_api(tmp_path: Path) -> None:
    app = inline_app(_url(tmp_path))
    pages = pages_of(app)
    async with running(app) as c:
        a = await _created(c, name="a")
        await _created(c, name="b")
        for path in ("/jobs", f"/jobs/{a['id']}/history"):
            first = await _get(c, path)
            hits = pages.hits
            assert await _get(c, path) == first
            assert pages.hits == hits + 1  # the second answer came from memory

        r = await c.patch(f"/jobs/{a['id']}", json={"description": "changed"})
        assert r.status_code == 200, r.text
        listed = (await c.get("/jobs")).json()["items"]
        assert [j["description"] for j in listed if j["id"] == a["id"]] == ["changed"]

        assert (await c.get(f"/jobs/{a['id']}/history")).json()["items"] == []
        r = await c.post(f"/jobs/{a['id']}/run")
        assert r.status_code == 202, r.text
        history = (await c.get(f"/jobs/{a['id']}/history")).json()["items"]
        assert [run["id"] for run in history] == [r.json()["id"]]


async def test_a_commit_by_another_store_or_process_drops_the_page(tmp_path: Path) -> None:
    url = _url(tmp_path)
    app = inline_app(url)
    async with running(app) as c:
        a = await _created(c, name="a")
        await _get(c, "/jobs")
        await _get(c, f"/jobs/{a['id']}/history")
        async with other_store(url) as other:
            stored = await other.get_job(a["id"])
            await other.add_jobs([make_job("from-another-store")])
            await other.add_run(make_run(stored, T0), dispatched=True)
        names = [j["name"] for j in (await c.get("/jobs")).json()["items"]]
        assert "from-another-store" in names
        assert len((await c.get(f"/jobs/{a['id']}/history")).json()["items"]) == 1

        path = str(tmp_path / "chronos.db")
        await _in_another_process("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                                  "c.execute(\"UPDATE jobs SET description = 'from another process', "
                                  "updated_at = '2031-01-01 00:00:00.000000'\"); c.commit()", path)
        described = {j["description"] for j in (await c.get("/jobs")).json()["items"]}
        assert described == {"from another process"}


# ------------------------------------------------------------------ a commit while a page is built (F1)


def _commit_after(store: SqlStore, method: str, write: Callable[[], Awaitable[Any]]) -> None:
    """Make ``store.<method>`` (the route's read) commit ``write`` through another store right after its
    read, once: the commit lands after the page's data was read and before the page is kept. Had the
    stamp been read after the reads, the old page would be kept under the new stamp and served."""
    read = getattr(store, method)
    done = False

    async def then_write(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        result = await read(*args, **kwargs)
        if not done:
            done = True
            await write()
        return result

    setattr(store, method, then_write)


@pytest.mark.parametrize("route", ["jobs", "history"])
async def test_a_commit_landing_while_a_page_is_built_is_never_hidden(tmp_path: Path, route: str) -> None:
    url = _url(tmp_path)
    app = inline_app(url)
    store: SqlStore = app.state.api.chronos.store
    async with running(app) as c, other_store(url) as other:
        a = await _created(c, name="a")
        target = await other.get_job(a["id"])
        if route == "jobs":
            path, method = "/jobs", "list_jobs_with_summaries"

            async def write() -> None:
                await other.update_job(dataclasses.replace(target, description="committed meanwhile",
                                                           updated_at=target.updated_at + S))
        else:
            path, method = f"/jobs/{a['id']}/history", "list_runs"

            async def write() -> None:
                await other.add_run(make_run(target, T0), dispatched=True)
        _commit_after(store, method, write)
        built = (await c.get(path)).json()["items"]  # read before the commit: the old page
        if route == "jobs":
            assert built[0]["description"] is None
        else:
            assert built == []
        again = (await c.get(path)).json()["items"]  # must not be the old page kept
        if route == "jobs":
            assert again[0]["description"] == "committed meanwhile"
        else:
            assert len(again) == 1
        assert await _get(c, path) == await _get(c, path)  # and then kept again


# ------------------------------------------------------------------- what is in the key (F2, role, types)


async def _seed(c: httpx.AsyncClient) -> dict[str, Any]:
    """Jobs and runs such that changing any one query field changes the page."""
    a1 = await _created(c, name="a-1")
    await _created(c, name="a-2", status="paused")
    await _created(c, name="b-3", type="http", payload={"url": "https://example.com/x"})
    runs = []
    for _ in range(3):
        r = await c.post(f"/jobs/{a1['id']}/run")
        assert r.status_code == 202, r.text
        runs.append(r.json()["id"])
    r = await c.post(f"/runs/{runs[0]}/cancel")
    assert r.status_code == 200, r.text
    return a1


JOB_VARIANTS = {"status": "paused", "type": "http", "name": "a-", "last_status": "cancelled",
                "after": None, "limit": "1"}  # after: the first job's id
HISTORY_VARIANTS = {"status": "cancelled", "before": None, "limit": "1"}  # before: the newest run's id


async def test_every_query_field_and_the_path_are_in_the_key(tmp_path: Path) -> None:
    """Each field changed alone, right after the base page was kept, must give the page a store without
    kept pages gives (a SQLite store without its inline reader: no stamp). A field left out of the key
    would serve the base page. The test covers every field of both queries, so a field added later
    fails here until it is covered."""
    assert set(JOB_VARIANTS) == set(JobListQuery.model_fields)
    assert set(HISTORY_VARIANTS) == set(HistoryQuery.model_fields)
    url = _url(tmp_path)
    app = inline_app(url)
    async with running(app) as c:
        a1 = await _seed(c)
        base_history = f"/jobs/{a1['id']}/history"
        listed = (await c.get("/jobs")).json()["items"]
        newest = (await c.get(base_history)).json()["items"][0]["id"]
    cases: list[tuple[str, str]] = []
    for name, value in JOB_VARIANTS.items():
        cases.append(("/jobs", f"/jobs?{name}={value or listed[0]['id']}"))
    for name, value in HISTORY_VARIANTS.items():
        cases.append((base_history, f"{base_history}?{name}={value or newest}"))
    other_job = next(j["id"] for j in listed if j["id"] != a1["id"])
    cases.append((base_history, f"/jobs/{other_job}/history"))

    fresh_app = build_app(scheduler=False, worker=False, database_url=url)
    async with running(fresh_app) as fresh:
        assert fresh_app.state.api.chronos.store.data_stamp() is None  # builds every page
        expected = {path: await _get(fresh, path) for pair in cases for path in pair}
    app = inline_app(url)
    pages = pages_of(app)
    async with running(app) as c:
        for base, variant in cases:
            assert expected[variant] != expected[base], variant  # the case can tell
            assert await _get(c, base) == expected[base]
            hits = pages.hits
            assert await _get(c, base) == expected[base]
            assert pages.hits == hits + 1  # the base page is kept: the variant's request comes next
            assert await _get(c, variant) == expected[variant], variant


async def test_a_read_token_and_a_full_token_never_share_a_page(tmp_path: Path) -> None:
    app = inline_app(_url(tmp_path), api_tokens=ADMIN, readonly_tokens=READER)
    pages = pages_of(app)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    reader = {"Authorization": f"Bearer {READER}"}
    async with running(app) as c:
        r = await c.post("/jobs", headers=admin, json={
            "name": "h", "type": "http", "payload": {"url": "https://example.com/", "headers": {
                "Authorization": SECRET}}})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        for path in ("/jobs", f"/jobs/{job_id}/history"):
            await _get(c, path, headers=admin)
            hits, kept = pages.hits, len(pages)
            shown = await _get(c, path, headers=reader)
            assert pages.hits == hits and len(pages) == kept + 1  # built for the reader, not the admin's
            assert SECRET.encode() not in shown
            assert await _get(c, path, headers=reader) == shown
            assert pages.hits == hits + 1
        assert REDACTED in (await c.get("/jobs", headers=reader)).json()["items"][0]["payload"]["headers"][
            "Authorization"]


class Plain(Payload):
    token: str


class Masking(Payload):
    token: str

    def redacted(self) -> dict[str, Any]:
        return {"token": REDACTED}


async def test_a_type_registered_again_is_not_shown_from_a_page_kept_before(tmp_path: Path) -> None:
    app = inline_app(_url(tmp_path))
    types = app.state.api.chronos.job_types
    types.register("acme", Plain)
    async with running(app) as c:
        r = await c.post("/jobs", json={"name": "x", "type": "acme", "payload": {"token": "tok-visible-1"}})
        assert r.status_code == 201, r.text
        assert b"tok-visible-1" in await _get(c, "/jobs")
        types.register("acme", Masking)
        assert b"tok-visible-1" not in await _get(c, "/jobs")


# ------------------------------------------------------------------------------------------- bounds


async def test_the_bounds_hold(tmp_path: Path) -> None:
    app = inline_app(_url(tmp_path))
    pages = pages_of(app)
    assert (pages.max_entries, pages.max_bytes) == (256, 32 * 1024 * 1024)
    async with running(app) as c:
        for i in range(3):
            await _created(c, name=f"j{i}")
        pages.max_entries = 2
        for limit in (1, 2, 3):
            await _get(c, f"/jobs?limit={limit}")
        assert len(pages) == 2
        misses = pages.misses
        await _get(c, "/jobs?limit=1")  # the oldest went first
        assert pages.misses == misses + 1

        pages.max_entries = 256
        whole = await _get(c, "/jobs?limit=3")
        pages.max_bytes = len(whole)  # a page counted for more than the budget alone is not kept
        misses = pages.misses
        assert await _get(c, "/jobs?limit=3&name=j") == await _get(c, "/jobs?limit=3&name=j") == whole
        assert pages.misses == misses + 2 and pages.nbytes <= pages.max_bytes


async def test_nothing_is_kept_when_the_store_cannot_tell(tmp_path: Path) -> None:
    for url in ("memory", _url(tmp_path)):  # the memory store; SQLite without the inline reader
        app = build_app(scheduler=False, worker=False, database_url=url)
        async with running(app) as c:
            await _created(c, name="a")
            await _get(c, "/jobs")
            await _get(c, "/jobs")
        assert len(pages_of(app)) == 0 and pages_of(app).hits == 0


async def test_a_reopened_reader_never_serves_a_page_kept_before(tmp_path: Path) -> None:
    """The reader connection is part of the stamp: a reopened reader's ``data_version`` starts again
    and can land on the number an old page was kept under (review-pagecache F1)."""
    url = _url(tmp_path)
    app = inline_app(url)
    pages = pages_of(app)
    async with running(app) as c:
        await _created(c, name="a")
        await _get(c, "/jobs")
        before = pages._store.data_stamp()
    other = sqlite3.connect(tmp_path / "chronos.db")
    other.execute("UPDATE jobs SET description = 'while stopped', "  # a new updated_at: the job's
                  "updated_at = '2031-01-01 00:00:00.000000'")  # own JSON is kept by it (ShownJobs)
    other.commit()
    other.close()
    async with running(app) as c:  # a new reader whose data_version starts again
        after = pages._store.data_stamp()
        assert before is not None and after is not None
        number = [s[-1] if isinstance(s, tuple) else s for s in (before, after)]
        assert number[0] == number[1]  # the same data_version: only the connection tells them apart
        assert b"while stopped" in await _get(c, "/jobs")


async def test_pages_kept_under_an_older_stamp_are_dropped_at_once(tmp_path: Path) -> None:
    """A page can never be sent once the stamp moved on, so it does not stay in memory either
    (review-pagecache F4)."""
    url = _url(tmp_path)
    app = inline_app(url)
    pages = pages_of(app)
    async with running(app) as c:
        await _created(c, name="a")
        for limit in (1, 2, 3):
            await _get(c, f"/jobs?limit={limit}")
        assert len(pages) == 3
        async with other_store(url) as store:
            await store.add_jobs([make_job("b")])
        await _get(c, "/jobs?limit=1")
        assert len(pages) == 1  # only the page built under the new stamp
async def test_a_page_built_under_an_older_stamp_is_not_kept_after_a_newer_request(tmp_path: Path) -> None:
    """Two requests of one page at once (a filtered listing reads in the pool, so the loop runs other
    requests meanwhile): A takes the stamp and reads the old rows; a commit lands; B takes the new
    stamp, builds and keeps the new page; then A keeps its old page. The next request must not get A's."""
    url = _url(tmp_path)
    app = inline_app(url)
    store: SqlStore = app.state.api.chronos.store
    async with running(app) as c, other_store(url) as other:
        a = await _created(c, name="a")
        target = await other.get_job(a["id"])
        read = store.list_jobs_with_summaries
        done = False
        seen: dict[str, Any] = {}

        async def interleaved(*args: Any, **kwargs: Any) -> Any:
            nonlocal done
            result = await read(*args, **kwargs)
            if not done:
                done = True
                await other.update_job(dataclasses.replace(target, description="committed meanwhile",
                                                           updated_at=target.updated_at + S))
                seen["b"] = (await c.get("/jobs")).json()["items"][0]["description"]  # request B
            return result

        store.list_jobs_with_summaries = interleaved  # type: ignore[method-assign]
        first = (await c.get("/jobs")).json()["items"][0]["description"]  # request A: old rows
        assert first is None and seen["b"] == "committed meanwhile"
        assert b"committed meanwhile" in await _get(c, "/jobs")  # C: not A's old page
