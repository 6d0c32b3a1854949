"""Live events fanned out to many SSE streams at a cost per event that hardly depends on the clients.

With 1,000 clients on ``/monitor/logs`` every event went through 1,000 subscriptions, 1,000 async
generators and 1,000 sends down sse-starlette (a timeout scope each), the middleware chain and h11: the
clients got 8 of 500 events, p50 10.7 s late, and the engines on the same loop starved (bench/api.py,
SSE case). Here:

* A stream catches up on its own subscription (what the bus retains after its ``Last-Event-ID``, or the
  history replay), then joins its **group**: the streams of one filter (``job_id``, ``types``) share
  one bus subscription. The hand-over takes what the stream's own subscription holds and joins the group
  in one step of the event loop; the bus offers each event to every subscription in one step, so nothing
  is lost or sent twice in between (:meth:`SseHub.join`).
* A group's task takes every event that arrived, waits for the next batch three times as long as the
  last one's writing took but at most :attr:`SseHub.max_interval` (10 ms), and writes the batch's
  frames (encoded once, :class:`~chronos_app.api.frames.EventFrames`) as **one** write per client:
  straight to the socket's transport when the server is uvicorn (one chunk of the chunked body: the
  server's own send sees only the head and the end; on Linux through libc's ``send`` without releasing
  the GIL while the transport holds nothing unsent, :func:`_held_send`), else through the ASGI send.
* Each client's unsent output is bounded (:attr:`SseHub.limit` bytes: the transport's buffer, or the
  bytes the ASGI send has not taken). A client that cannot keep up is **told it lost events and
  disconnected**: it gets an ``overflow`` event (``retry: 0``) and the stream ends, as when its own
  subscription overflows; it reconnects with its ``Last-Event-ID`` and resumes from the bus's window or
  the history. Dropping events silently would break the stream's promise (every event, or a replay), and
  buffering without bound would let one stalled client hold the process's memory.
* Keep-alive comments for every stream come from one timer; the streams end cleanly when the server
  shuts down (uvicorn's ``should_exit``, as sse-starlette watches it), when the bus closes, or on
  :meth:`SseHub.close`.

The hub lives on the API's event loop and touches the bus only through subscriptions made on that loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sse_starlette import ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.types import Receive, Scope, Send

from chronos_core import Event, EventType, SubscriptionOverflow
from chronos_core.ports import EventBus
from chronos_core.subscriptions import BufferedSubscription

from .frames import RETRY_MS, EventFrames

__all__ = ["SseClient", "SseHub", "overflow_frame", "server_transport"]

log = logging.getLogger("chronos.api")

RETRY_LINE = b"retry: %d\r\n" % RETRY_MS  # a stream's first frame carries the reconnection delay
_OVERFLOW_GRACE = 10.0  # seconds an overflowed client gets to read its last frames before it is cut off
_SHUTDOWN_POLL = 0.5
_CHUNK_FRAMING = 12  # at most, around a chunk's data: its size in hex and two CRLFs


def overflow_frame(detail: str) -> bytes:
    """Tells the client it lost events: reconnect at once (it resumes from its last id)."""
    return ServerSentEvent(event="overflow", data=json.dumps({"detail": detail}), retry=0).encode()


def _ping_frame() -> bytes:
    return ServerSentEvent(comment=f"ping - {datetime.now(UTC)}").encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _held_send() -> Callable[[int, bytes, int, int], int] | None:
    """libc's ``send`` called **without releasing the GIL** (``ctypes.PyDLL``), on Linux; None elsewhere.

    A batch is one ``send`` per client. ``socket.send`` releases the GIL around each, and taking it back
    while the engines' thread runs Python costs up to a switch interval: writing 20 KB to each of 1,000
    loopback sockets took 5-6 ms alone and **220 ms** with one other thread running Python on an
    otherwise idle core (8-12 ms through this call). That cost needs the waiting thread to have a core
    to spin on: at load 6.5 the same write beside the thread took 10.5 ms through ``socket.send``
    (BENCHMARKS.md, "The GIL hand-backs"); whether this call improves the delivery p99 is not settled
    (the A/B runs overlap). Held, the other thread still gets the GIL at its switch interval (the
    interpreter drops it between two calls when asked)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        send = ctypes.PyDLL(None).send  # the process's own libc (glibc or musl): no ldconfig lookup
    except (OSError, AttributeError):  # pragma: no cover - no libc to call
        return None
    send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    send.restype = ctypes.c_ssize_t
    return send


_SEND = _held_send()
_SEND_FLAGS = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_NOSIGNAL", 0)  # both on Linux


def _socket_fd(transport: asyncio.WriteTransport) -> int:
    """The socket's descriptor, for :data:`_SEND`: only under asyncio's own selector transport (whose
    buffer :meth:`SseClient._out` checks is empty first, so bytes never pass the ones it holds); -1
    otherwise."""
    if _SEND is None or type(transport).__module__ != "asyncio.selector_events":
        return -1
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (OSError, ValueError):  # pragma: no cover - closed meanwhile
        return -1


def server_transport(scope: Scope) -> asyncio.WriteTransport | None:
    """The socket transport of this response, when the server is uvicorn and its body is chunked (so a
    chunk written there is a chunk of the body); None otherwise. ``scope["chronos.send"]`` is the
    server's own send (the app puts it there before the middleware wraps it)."""
    send = scope.get("chronos.send")
    owner = getattr(send, "__self__", None)
    transport = getattr(owner, "transport", None)
    if not isinstance(transport, asyncio.WriteTransport) or scope.get("method") != "GET":
        return None
    module = type(owner).__module__
    if module == "uvicorn.protocols.http.h11_impl" and scope.get("http_version") == "1.1":
        return transport  # h11 frames a 1.1 response without a length as chunks
    return None


class SseClient:
    """One open stream's output: complete SSE frames, in order, at most ``limit`` bytes unsent.

    With ``transport`` (see :func:`server_transport`) frames go straight to the socket; without, they
    wait in a buffer that :meth:`run` passes to the ASGI ``send``."""

    def __init__(self, send: Send, transport: asyncio.WriteTransport | None, limit: int) -> None:
        self._send = send
        self.transport = transport
        self._fd = -1 if transport is None else _socket_fd(transport)
        self.limit = limit
        self.sent = False  # a frame went out (the first carries the reconnection delay)
        self.ended = False
        self.gone = False  # the client disconnected
        self.overflowed = False
        self.writes = 0  # writes of frames (not pings) to the client's output: one per batch
        self._buffer = bytearray()
        self._sending = 0  # bytes of the ASGI send in progress
        self._wake = asyncio.Event()
        self.group: _Group | None = None
        self.skip = 0  # events at the start of the group's next batch this client already has

    @property
    def unsent(self) -> int:
        """Bytes written to this client that have not left the process."""
        if self.transport is not None:
            return self.transport.get_write_buffer_size()
        return len(self._buffer) + self._sending

    def write(self, frames: bytes, chunk: bytes | None = None) -> bool:
        """Send complete frames (``chunk``: the same framed as a body chunk, shared by a group). False
        when the stream has ended, or if they would take its unsent output over ``limit``: the client
        is then told it lost events and the stream ends."""
        if self.ended or not frames:
            return not self.ended
        if not self.sent:
            frames, chunk = RETRY_LINE + frames, None
        if self.unsent + len(frames) + _CHUNK_FRAMING > self.limit:
            self.overflow(f"this stream fell behind (over {self.limit} bytes not yet read); reconnect "
                          "with Last-Event-ID to resume")
            return False
        self.sent = True
        self.writes += 1
        self._out(frames, chunk)
        return True

    def ping(self, frame: bytes) -> None:
        if not self.ended and self.unsent <= self.limit:
            self._out(frame)

    def _out(self, data: bytes, chunk: bytes | None = None) -> None:
        t = self.transport
        if t is None:
            self._buffer += data
            self._wake.set()
        elif t.is_closing():  # (checked first: the descriptor may be closed, or another socket's, after)
            self.disconnected()
        else:
            out = chunk if chunk is not None else _chunk(data)
            if self._fd >= 0 and _SEND is not None and not t.get_write_buffer_size():
                n = _SEND(self._fd, out, len(out), _SEND_FLAGS)
                if n == len(out):
                    return
                if n > 0:
                    out = out[n:]
                # the rest (or all, on EAGAIN or an error) goes through the transport: it buffers what
                # the socket does not take, and reports an error as its own send would
            t.write(out)

    def overflow(self, detail: str) -> None:
        """The client lost events: its last frame says so, then the stream ends."""
        if self.ended:
            return
        self.overflowed = True
        self._out(overflow_frame(detail))
        self.end()

    def end(self) -> None:
        """End the stream (cleanly: the body's last chunk is sent)."""
        if not self.ended:
            self.ended = True
            if self.group is not None:
                self.group.leave(self)
            self._wake.set()

    def disconnected(self) -> None:
        self.gone = True
        self.end()

    async def drain(self) -> None:
        """Wait while a quarter of ``limit`` or more is unsent (a stream catching up writes much at once)."""
        while not self.ended and self.unsent > self.limit // 4:  # noqa: ASYNC110 - a transport's buffer
            await asyncio.sleep(0.01)  # signals nothing when it empties; catching up is rare

    async def run(self) -> None:
        """Until the stream ends: pass buffered frames to the ASGI send (without a transport); then the
        body's end (an overflowed client that does not read gets ``_OVERFLOW_GRACE`` seconds)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._buffer and not self.gone:
                data = bytes(self._buffer)
                self._buffer.clear()
                self._sending = len(data)
                try:
                    await self._send({"type": "http.response.body", "body": data, "more_body": True})
                finally:
                    self._sending = 0
            if self.ended and not self._buffer:
                break
        if self.gone:
            return
        try:
            async with asyncio.timeout(_OVERFLOW_GRACE if self.overflowed else None):
                await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()
                await asyncio.sleep(0)  # the server sees the connection lost
                await asyncio.sleep(0)


_Key = tuple[str | None, frozenset[EventType] | None]


class _Group:
    """The streams of one filter: one bus subscription, one task writing each batch to every member."""

    def __init__(self, hub: SseHub, key: _Key) -> None:
        self.hub = hub
        self.key = key
        sub = hub.bus.subscribe(job_id=key[0], types=key[1])
        assert isinstance(sub, BufferedSubscription)  # as the stream's own (SseHub.can_join)
        self.sub = sub
        self.members: dict[SseClient, None] = {}  # in joining order
        self.pending: list[Event] = []  # taken from the subscription, not yet written
        self.batches = 0
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"chronos-sse-fanout-{key[0]}")

    def join(self, client: SseClient) -> None:
        # what the group holds, unwritten, came through the client's own subscription too (taking it
        # here instead would leave the group's task waiting for an event it already has)
        client.skip = len(self.pending) + self.sub.ready
        client.group = self
        self.members[client] = None

    def leave(self, client: SseClient) -> None:
        self.members.pop(client, None)
        client.group = None
        if not self.members:
            self.close()

    def close(self) -> None:
        if self.hub.groups.get(self.key) is self:
            del self.hub.groups[self.key]
        if not self.task.done() and self.task is not _current_task():
            self.task.cancel()
        self.sub.close()

    def _take(self) -> None:
        if self.sub.closed:
            return
        try:
            self.pending += self.sub.take()
        except SubscriptionOverflow as exc:
            self._fail(exc)

    def _fail(self, exc: SubscriptionOverflow) -> None:
        self.write(self.pending)
        self.pending = []
        for c in list(self.members):
            c.overflow(str(exc))
        self.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        hub = self.hub
        next_at = 0.0
        try:
            while self.members:
                if not self.pending:
                    try:
                        self.pending.append(await anext(self.sub))
                    except StopAsyncIteration:  # the bus closed (the server stops)
                        self.write(self.pending)
                        for c in list(self.members):
                            c.end()
                        return
                    except SubscriptionOverflow as exc:
                        self._fail(exc)
                        return
                wait = next_at - loop.time()
                await asyncio.sleep(wait if wait > 0 else 0)  # what else arrives in this step joins in
                self._take()
                if not self.members:
                    return
                events, self.pending = self.pending, []
                started = time.perf_counter()
                self.write(events)
                took = time.perf_counter() - started
                next_at = loop.time() + min(hub.max_interval, took * (1 - hub.duty) / hub.duty)
        except Exception:  # pragma: no cover - a bug here must not leave the streams hanging
            log.exception("SSE fan-out failed")
            for c in list(self.members):
                c.end()
            self.close()

    def write(self, events: list[Event]) -> None:
        """One write per member: the batch's frames (those after its ``skip``)."""
        if not events:
            return
        self.batches += 1
        frame = self.hub.frames.frame
        frames = [frame(e) for e in events]
        ends = self.key[0] is not None and any(e.type is EventType.JOB_DELETED for e in events)
        if ends:  # a job's stream ends with the job's deletion
            last = next(i for i, e in enumerate(events) if e.type is EventType.JOB_DELETED)
            frames = frames[:last + 1]
        blob = b"".join(frames)
        chunk = _chunk(blob)
        for c in list(self.members):
            if c.skip:
                skip, c.skip = c.skip, 0
                if skip < len(frames):
                    c.write(b"".join(frames[skip:]))
            else:
                c.write(blob, chunk)
            if ends:
                c.end()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _server_exiting() -> bool:
    """Whether uvicorn is shutting down: sse-starlette's flag (it wraps uvicorn's exit handler), or the
    flag of the server whose handler SIGTERM is (sse-starlette looks there too)."""
    if AppStatus.should_exit:
        return True
    handler = signal.getsignal(signal.SIGTERM)
    return bool(getattr(getattr(handler, "__self__", None), "should_exit", False))


class SseHub:
    """The open SSE streams of one API: their groups, keep-alive comments and shutdown."""

    def __init__(self, bus: EventBus, frames: EventFrames, *, ping: float, limit: int = 1 << 20,
                 duty: float = 0.25, max_interval: float = 0.01,
                 exiting: Callable[[], bool] = _server_exiting) -> None:
        self.bus = bus
        self.frames = frames
        self.ping = ping
        self.limit = limit
        """Bytes a client may have unsent before it is told it lost events and disconnected."""
        self.duty = duty
        """A group waits ``took * (1 - duty) / duty`` after a batch before writing the next, but at most
        ``max_interval``. So ``duty`` bounds a busy group's share of the loop only while its writes take
        under ``max_interval * duty / (1 - duty)`` (3.3 ms at the defaults). With 1,000 clients a write
        takes 10-35 ms, the cap decides, and one group's writing takes 50-78 % of the API's loop; each
        group paces itself alone, so several busy groups (streams of different filters) are not bounded
        together. What that costs HTTP requests on the same loop is not measured (BENCHMARKS.md)."""
        self.max_interval = max_interval
        """The longest wait between a group's batches. With 1,000 clients and ~1,500 events/s a batch's
        write takes 10-35 ms, so this cap is what decides the wait, and the wait is most of an event's
        delay: at 50 ms the oldest event of a batch was 80 ms old when its write started (delivery p50
        105 ms). A write's cost is mostly per byte (the same bytes however they are batched: the write
        takes ~7 ms plus ~0.2 ms per event), so writing 4-5 times as often cost ~2 % more server CPU
        (BENCHMARKS.md, "SSE: the fan-out's wait"). The writing then takes more than ``duty`` of the
        API's loop (a batch is one step of it: a request waits behind at most one)."""
        self.exiting = exiting
        self.clients: dict[SseClient, None] = {}
        self.groups: dict[_Key, _Group] = {}
        self._timer: asyncio.Task[None] | None = None

    def client(self, scope: Scope, send: Send) -> SseClient:
        c = SseClient(send, server_transport(scope), self.limit)
        self.clients[c] = None
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._tick(), name="chronos-sse-timer")
        return c

    def remove(self, client: SseClient) -> None:
        client.end()
        self.clients.pop(client, None)
        if not self.clients and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def can_join(self, sub: object) -> bool:
        return isinstance(sub, BufferedSubscription)

    def join(self, client: SseClient, sub: BufferedSubscription, job_id: str | None,
             types: frozenset[EventType] | None) -> bool:
        """Hand ``client`` over from its own subscription ``sub`` (started) to its group, in this step of
        the loop: the frames of what ``sub`` still holds are written first, then ``sub`` is closed. False
        when the stream ended meanwhile (a job's deletion, an overflow)."""
        # The group's subscription first: one registered after ``sub`` took everything could miss what was
        # published in between and not yet delivered on this loop (a bus publishing from another thread).
        key = (job_id, types)
        group = self.groups.get(key)
        if group is None or group.sub.closed:
            group = self.groups[key] = _Group(self, key)
        try:
            rest = sub.take()
        except SubscriptionOverflow as exc:
            client.overflow(str(exc))
        else:
            if not rest or self._write_own(client, rest, job_id):
                group.join(client)
        sub.close()
        if not group.members:
            group.close()
        return not client.ended

    def _write_own(self, client: SseClient, events: list[Event], job_id: str | None) -> bool:
        frames = []
        for e in events:
            frames.append(self.frames.frame(e))
            if job_id is not None and e.type is EventType.JOB_DELETED:
                client.write(b"".join(frames))
                client.end()
                return False
        return client.write(b"".join(frames))

    def close(self) -> None:
        """End every stream (cleanly)."""
        for c in list(self.clients):
            c.end()
        for g in list(self.groups.values()):
            g.close()

    async def _tick(self) -> None:
        last_ping = time.monotonic()
        while True:
            await asyncio.sleep(min(self.ping, _SHUTDOWN_POLL))
            if self.exiting():
                self.close()
                return
            now = time.monotonic()
            if now - last_ping >= self.ping:
                last_ping = now
                frame = _ping_frame()
                for c in list(self.clients):
                    c.ping(frame)


async def listen_for_disconnect(receive: Receive, client: SseClient) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            client.disconnected()
            return
