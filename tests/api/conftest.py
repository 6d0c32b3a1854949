"""The real app on the in-memory adapters (container overrides), reached through httpx: in process with
ASGITransport, or over a socket from uvicorn running in the test's loop (SSE needs real streaming)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from dependency_injector import providers
from starlette.applications import Starlette

from chronos_app.api import create_app, fanout
from chronos_app.container import Container
from chronos_app.settings import Settings

AppFactory = Callable[..., Starlette]


def build_app(*, worker: bool = True, scheduler: bool = True, store: Any = None,
              **settings: Any) -> Starlette:
    settings.setdefault("database_url", "memory")
    settings.setdefault("allow_shell", True)
    container = Container()
    container.settings.override(providers.Object(Settings(**settings)))
    container.run_worker.override(providers.Object(worker))
    container.run_scheduler.override(providers.Object(scheduler))
    if store is not None:
        container.store.override(providers.Object(store))
    return create_app(container)


@pytest.fixture(params=["held send", "transport write"])
def fanout_send(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test through each of the fan-out's two ways to a socket: libc's send holding the GIL
    (Linux), and asyncio's ``transport.write`` alone (``_SEND is None``: macOS, Windows, no libc), so the
    fallback is exercised on Linux too."""
    if request.param == "transport write":
        monkeypatch.setattr(fanout, "_SEND", None)
    elif fanout._SEND is None:
        pytest.skip("no held send on this platform")
    return str(request.param)


@contextlib.asynccontextmanager
async def running(app: Starlette, **client: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://localhost", **client) as c:
        yield c


@contextlib.asynccontextmanager
async def live(app: Starlette) -> AsyncIterator[str]:
    """uvicorn serving ``app`` on a free port in this loop; yields the base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
def make_app() -> AppFactory:
    return build_app


@pytest.fixture(params=["memory", "sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the memory store, on the service's default (a SQLite file), and on MariaDB (the session's
    database at the newest schema, emptied: a new database per test cost a CREATE DATABASE and every
    migration; the migration at start is covered in tests/sql)."""
    if request.param == "mysql":
        url = request.getfixturevalue("clean_mysql_url")
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/chronos.db"
    else:
        url = "memory"
    async with running(build_app(database_url=url)) as c:
        yield c


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse a text/event-stream: one dict per event (``event``, ``id``, ``data`` decoded from JSON)."""
    fields: dict[str, Any] = {}
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data or fields:
                fields["data"] = json.loads("\n".join(data)) if data else None
                yield fields
            fields, data = {}, []
        elif line.startswith(":"):
            continue  # keep-alive comment
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


async def wait_for(check: Callable[[], Awaitable[Any]], limit: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy (generous limit for a busy machine)."""
    async with asyncio.timeout(limit):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.05)


SHELL = {"name": "hello", "type": "shell", "payload": {"command": "echo hi"}}


def job(**changes: Any) -> dict[str, Any]:
    return {**SHELL, **changes}
