"""The API on a thread and event loop of its own (``chronos serve``, ``CHRONOS_API_THREAD``): the real
container, its Chronos started on the test's loop (the engines' loop, as the main thread's in serve),
the API served by ``serving.api_on_thread`` over a ``ChronosFront`` as serve does. Both loops run in
asyncio's debug mode, which raises on a call made into a loop from another thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from chronos_app.api import create_app
from chronos_app.cli import listen_socket
from chronos_app.container import Container
from chronos_app.front import ChronosFront
from chronos_app.runtime import Chronos
from chronos_app.serving import ApiThread, api_on_thread, uvicorn_config
from chronos_app.settings import Settings
from tests.api.conftest import live, sse_events, wait_for

HTTP_JOB = {"type": "http", "payload": {"url": "http://127.0.0.1:9/"}}  # refused: each run fails at once


class Threaded:
    def __init__(self, chronos: Chronos, app: Starlette, api: ApiThread | None, base: str) -> None:
        self.chronos, self.app, self.base = chronos, app, base
        self._api = api

    @property
    def api(self) -> ApiThread:
        assert self._api is not None
        return self._api

    def add_route(self, path: str, endpoint: Any) -> None:
        """A route of the test's own (routing is looked up per request: it serves at once)."""
        self.app.router.routes.insert(0, Route(path, endpoint))


def _container(url: str, **settings: Any) -> Container:
    container = Container()
    container.settings.override(providers.Object(Settings(database_url=url, **settings)))
    return container


@contextlib.asynccontextmanager
async def threaded(url: str, *, thread: bool = True, **settings: Any) -> AsyncIterator[Threaded]:
    """The API on a thread of its own; ``thread=False``: on the engines' loop, as before (a control)."""
    asyncio.get_running_loop().set_debug(True)
    container = _container(url, **settings)
    chronos = container.chronos()
    if not thread:
        app = create_app(container)
        async with live(app) as base:
            yield Threaded(chronos, app, None, base)
        return
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    await chronos.start()
    try:
        async with api_on_thread(container, sock, lambda app: uvicorn_config(app, "127.0.0.1", port,
                                                                             container.settings()),
                                 debug=True) as api:
            await wait_for(_started(api), 30)
            yield Threaded(chronos, api.server.config.app, api, f"http://127.0.0.1:{port}")
    finally:
        await chronos.stop(1)


def _started(api: ApiThread) -> Any:
    async def check() -> bool:
        assert api.error is None and (api.started or not api.exiting), api.error
        return api.started
    return check


@pytest.fixture(params=["sqlite", "memory"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/chronos.db" if request.param == "sqlite" else "memory"


@pytest.mark.parametrize("thread", [True, False], ids=["api-thread", "one-loop"])
async def test_the_scheduler_keeps_firing_while_the_api_loop_is_blocked(url: str, thread: bool) -> None:
    """A handler that holds its loop (as a long listing's CPU does, here until told on a threading.Event)
    does not stop the engines: the scheduler fires two slots meanwhile, and the handler is let go. The
    control, on one shared loop (CHRONOS_API_THREAD off): nothing fires until the handler gives up
    waiting (3 s), and it answers 'not released'."""
    async with threaded(url, thread=thread) as t:
        blocked, release = threading.Event(), threading.Event()

        async def hold(request: Request) -> Response:
            blocked.set()
            return PlainTextResponse("released" if release.wait(20 if thread else 3) else "not released")

        t.add_route("/test/hold", hold)
        async with httpx.AsyncClient(base_url=t.base, timeout=30) as c:
            created = await c.post("/jobs", json={"name": "tick", "schedule": "* * * * * *", **HTTP_JOB})
            assert created.status_code == 201, created.text
            held = asyncio.ensure_future(c.get("/test/hold"))
            assert await asyncio.to_thread(blocked.wait, 20)
            scheduler = t.chronos.scheduler
            assert scheduler is not None
            fired = scheduler.stats.fired


            async def fired_twice() -> bool:  # a slot a second: two of them while the API is held
                return scheduler.stats.fired >= fired + 2

            try:
                await wait_for(fired_twice, 15)
            finally:
                release.set()
            answer = await held
        assert answer.text == ("released" if thread else "not released")


async def test_a_job_created_through_the_api_wakes_the_sleeping_scheduler(url: str) -> None:
    """The scheduler sleeps up to scheduler_max_sleep (an hour here) when nothing is due: a job created on
    the API's loop must wake it on its own loop (the bus feeds its subscription there)."""
    async with threaded(url, scheduler_max_sleep=3600) as t:
        async with httpx.AsyncClient(base_url=t.base, timeout=30) as c:
            await asyncio.sleep(0.2)  # the scheduler is asleep: nothing is due
            job = (await c.post("/jobs", json={"name": "now", "schedule": "@every 1s", **HTTP_JOB})).json()

            async def ran() -> bool:
                return bool((await c.get(f"/jobs/{job['id']}/history")).json()["items"])

            await wait_for(ran, 20)


async def test_runs_triggered_through_the_api_run_and_their_events_reach_sse(url: str) -> None:
    """POST /jobs/{id}/run puts the dispatch on the engines' queue (an asyncio.Queue, on their loop); the
    worker's events reach an SSE stream served on the API's loop; /metrics reads the engines' figures and
    counts the run."""
    async with threaded(url) as t:
        async with httpx.AsyncClient(base_url=t.base, timeout=30) as c:
            job = (await c.post("/jobs", json={"name": "manual", **HTTP_JOB})).json()
            seen: list[str] = []
            async with c.stream("GET", f"/monitor/logs/{job['id']}") as stream:
                assert stream.status_code == 200
                run = (await c.post(f"/jobs/{job['id']}/run")).json()
                async with asyncio.timeout(20):
                    async for event in sse_events(stream):
                        seen.append(event["event"])
                        if event["event"] == "run.failed":
                            assert event["data"]["run_id"] == run["id"]
                            break
            assert "run.started" in seen
            metrics = (await c.get("/metrics")).text
            assert "chronos_queue_depth 0.0" in metrics and "chronos_worker_active_runs" in metrics

            async def counted() -> bool:  # the run counter watches the bus on the engines' loop
                return 'chronos_runs_total{status="failed"} 1.0' in (await c.get("/metrics")).text

            await wait_for(counted)
            assert (await c.get(f"/runs/{run['id']}")).json()["status"] == "failed"


async def test_an_sse_stream_open_at_shutdown_is_ended_cleanly(url: str) -> None:
    """uvicorn's signal handler is not there to say the server is exiting (it runs off the main thread):
    the API thread tells the SSE streams itself, so a stream ends at stop instead of holding the
    shutdown for its whole graceful timeout and being cut."""
    ended = asyncio.Event()
    async with threaded(url) as t:
        async with httpx.AsyncClient(base_url=t.base, timeout=30) as c:
            async with c.stream("GET", "/monitor/logs") as stream:
                assert stream.status_code == 200

                async def read() -> None:
                    async for _ in stream.aiter_raw():
                        pass
                    ended.set()  # the chunked body was terminated

                reader = asyncio.ensure_future(read())
                await asyncio.sleep(0.1)
                t.api.stop()
                await asyncio.wait_for(reader, 20)
    assert ended.is_set()


async def test_on_a_sqlite_file_the_apis_reads_run_on_the_api_thread(tmp_path: Path) -> None:
    """The API's own store (the sibling) reads a SQLite file on the API's thread itself, not in a pool
    thread (no GIL handed to and fro per row: BENCHMARKS.md); its writes and the engines' calls still go
    through pool threads."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    seen: set[tuple[str, bool]] = set()  # (thread, a read?) of the API's own store's transactions
    engines: list[Any] = []

    def begun(conn: Any) -> None:
        if conn.engine not in engines:
            read = bool(conn.get_execution_options().get("chronos_read"))
            seen.add((threading.current_thread().name, read))

    async with threaded(f"sqlite:///{tmp_path}/chronos.db") as t:
        engines.append(t.chronos.store.engine)  # type: ignore[attr-defined]
        event.listen(Engine, "begin", begun)
        try:
            async with httpx.AsyncClient(base_url=t.base, timeout=30) as c:
                job = (await c.post("/jobs", json={"name": "listed", **HTTP_JOB})).json()
                seen.clear()
                assert [j["id"] for j in (await c.get("/jobs")).json()["items"]] == [job["id"]]
                assert (await c.get(f"/jobs/{job['id']}")).status_code == 200
                assert seen == {("chronos-api", True)}
                seen.clear()
                paused = await c.patch(f"/jobs/{job['id']}/status", json={"status": "paused"})
                assert paused.status_code == 200, paused.text
                assert ("chronos-api", False) not in seen and any(not read for _, read in seen)
        finally:
            event.remove(Engine, "begin", begun)


def test_a_front_needs_a_thread_safe_bus() -> None:
    chronos = _container("memory").chronos()
    chronos.bus.thread_safe = False  # type: ignore[misc]  # as the Kafka bus says
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="event bus"):
            ChronosFront(chronos, loop)
    finally:
        loop.close()
