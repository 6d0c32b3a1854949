"""The SSE fan-out through the real server (uvicorn in the test's loop): many clients of one stream share
one bus subscription and get every event; disconnecting cleans up; a client that stops reading is told it
lost events and disconnected instead of holding the process's memory."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from typing import Any

import httpx

from chronos_core import Event, EventType
from tests.api.conftest import build_app, live, sse_events


def _log(n: int, line: str = "x") -> Event:
    return Event(type=EventType.RUN_LOG, time=datetime.now(UTC), job_id="j1", run_id="r1",
                 data={"line": line, "stream": "stdout", "seq": n})


async def _until(check: Any) -> None:
    async with asyncio.timeout(30):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


async def test_many_clients_share_one_subscription_and_each_gets_every_event(fanout_send: str) -> None:
    app = build_app(sse_ping=60, worker=False, scheduler=False)
    ctx = app.state.api
    async with live(app) as base, httpx.AsyncClient(base_url=base, timeout=30,
                                                   limits=httpx.Limits(max_connections=50)) as c:
        bus = ctx.chronos.bus
        before = bus.subscribers
        got: list[list[int]] = [[] for _ in range(20)]

        async def follow(i: int) -> None:
            async with c.stream("GET", "/monitor/logs", params={"types": "run.log"}) as r:
                async for event in sse_events(r):
                    got[i].append(int(event["id"]))
                    if len(got[i]) == 30:
                        return

        tasks = [asyncio.create_task(follow(i)) for i in range(20)]
        await _until(lambda: sum(len(g.members) for g in ctx.sse.groups.values()) == 20)
        assert bus.subscribers == before + 1  # one for the 20 streams
        assert all(client.transport is not None for client in ctx.sse.clients)  # straight to the sockets
        held = fanout_send == "held send"
        assert all((client._fd >= 0) is held for client in ctx.sse.clients)  # the way this run takes
        for n in range(3):
            await bus.publish([_log(10 * n + i) for i in range(10)])
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
        first = got[0][0]
        assert all(g == list(range(first, first + 30)) for g in got)
        # the clients went: their streams, the group and its subscription with them
        await _until(lambda: not ctx.sse.clients and not ctx.sse.groups)
        assert bus.subscribers == before
        assert "\nchronos_sse_clients 0.0\n" in (await c.get("/metrics")).text


async def test_a_client_that_stops_reading_is_told_it_lost_events_and_disconnected(fanout_send: str) -> None:
    app = build_app(sse_ping=60, worker=False, scheduler=False)
    ctx = app.state.api
    ctx.sse.limit = 64 * 1024
    async with live(app) as base:
        host, port = base.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(sock, f"GET /monitor/logs HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += await loop.sock_recv(sock, 4096)
        assert received.startswith(b"HTTP/1.1 200")
        await _until(lambda: ctx.sse.groups)
        [client] = ctx.sse.clients
        assert (client._fd >= 0) is (fanout_send == "held send")  # the way this run takes
        client.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # the client reads nothing more; the events go on
        published = 0
        while not client.ended and published < 5000:
            await ctx.chronos.bus.publish([_log(published, "y" * 2000)])
            published += 1
            await asyncio.sleep(0)
        assert client.ended and client.overflowed
        assert client.transport.get_write_buffer_size() <= 64 * 1024 + 1024  # its bound and the last frame
        # it reads again: a prefix of the events, then "overflow" (reconnect now), then the body's end
        while not received.endswith(b"0\r\n\r\n"):
            chunk = await loop.sock_recv(sock, 1 << 16)
            assert chunk, received[-300:]
            received += chunk
        sock.close()
        ids = [int(line[4:]) for line in received.split(b"\r\n") if line.startswith(b"id: ")]
        assert ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) < published
        assert b"event: overflow\r\n" in received[-600:] and b"retry: 0" in received[-600:]
        await _until(lambda: not ctx.sse.clients)


async def test_head_gets_the_stream_headers_only() -> None:
    app = build_app(worker=False, scheduler=False)
    async with live(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
        r = await c.head("/monitor/logs")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.content == b"" and not app.state.api.sse.clients


async def test_an_http_1_0_client_gets_the_stream_unchunked() -> None:
    """HTTP/1.0 has no chunked bodies: the server ends the body by closing, and the fan-out writes through
    the ASGI send instead of the socket (a chunk there would corrupt the stream)."""
    app = build_app(sse_ping=60, worker=False, scheduler=False)
    ctx = app.state.api
    async with live(app) as base:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /monitor/logs HTTP/1.0\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
        await _until(lambda: ctx.sse.groups)
        assert all(client.transport is None for client in ctx.sse.clients)
        await ctx.chronos.bus.publish([_log(1, "one"), _log(2, "two")])
        async with asyncio.timeout(30):
            body = await reader.readuntil(b'"two"')
        assert body.startswith(b"retry: 2000\r\nid: ") and body.count(b"event: run.log\r\n") == 2
        writer.close()
        await _until(lambda: not ctx.sse.clients)
