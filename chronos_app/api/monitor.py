"""Server-sent event streams of live events: one job, one run, or all jobs.

Every event carries the bus's id. A client that reconnects with ``Last-Event-ID`` (browsers do it by
themselves; ``?last_event_id=`` works too) first gets what the bus still retains after that id. When the
bus no longer has it (the window moved on, or the process restarted), the stream starts with the runs'
current state from the store's history instead: one ``run.<status>`` event per recent run, marked
``"replayed": true`` and carrying the stored output tail, without an id (so the client's position is kept
until the next live event). Keep-alive comments go out every ``CHRONOS_SSE_PING`` seconds.

The streams of all jobs and of one job are written by their group once caught up (``fanout.py``: one
bus subscription per filter, one write per client per batch of events); a run stream writes its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chronos_core import Event, EventType, Run, RunNotFound, SubscriptionOverflow
from chronos_core.filters import enum_set
from chronos_core.logs import stored_line_range
from chronos_core.ports import Subscription
from chronos_core.subscriptions import BufferedSubscription

from .context import ApiContext, api
from .fanout import SseClient, listen_for_disconnect
from .frames import sse_event
from .inputs import parse_query
from .problems import InvalidParameters

__all__ = ["stream_all", "stream_job", "stream_run"]

_FINAL_RUN_EVENTS = frozenset({EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_TIMED_OUT,
                               EventType.RUN_CANCELLED, EventType.RUN_SKIPPED, EventType.RUN_MISSED})
_GAP_POLL = 0.25  # seconds between reads of the store while it catches up with a gap
_GAP_TIMEOUT = 10.0  # then the lines still missing are marked as not kept
_IDLE_POLL = 2.0  # seconds a quiet run stream waits before it reads the store (workers write it each 1 s)


class StreamQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    types: str | None = Field(default=None, max_length=1000,
                              description="comma-separated event types, e.g. run.log,run.failed")
    last_event_id: str | None = Field(default=None, max_length=200,
                                      description="resume after this event (as the Last-Event-ID header)")
    token: str | None = Field(default=None, description="API token, for clients that cannot send headers")


def _types(text: str | None) -> set[EventType] | None:
    return enum_set(EventType, text, "types", "event type", error=InvalidParameters)


def _replayed(event: Event) -> bytes:
    return sse_event(event, replayed=True).encode()


async def _gap(ctx: ApiContext, run_id: str, start: int, end: int) -> list[Event]:
    """Lines ``start..end`` of a run, which the stream saw no event of: printed before it subscribed but
    after the worker's last write of the output so far (the worker writes it about once a second), or
    refused by the bus. The store has them after the worker's next write or at the run's end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _GAP_TIMEOUT
    while True:
        try:
            run = await ctx.chronos.runs.get(run_id)
        except RunNotFound:
            return []
        if run.output_lines >= end or run.finished or loop.time() >= deadline:
            break
        await asyncio.sleep(_GAP_POLL)
    return _stored(run, start, end)


def _stored(run: Run, start: int, end: int) -> list[Event]:
    """``run.log`` events for lines ``start..end`` of the run's stored output (none if ``end < start``)."""
    events = []
    for seq, line in stored_line_range(run, start, end):
        data: dict[str, object] = {"line": line, "stream": "stdout", "attempt": run.attempt}
        if seq is not None:
            data["seq"] = seq
        events.append(Event(type=EventType.RUN_LOG, time=run.started_at or run.created_at,
                            job_id=run.job_id, run_id=run.id, data=data))
    return events


async def _stream(request: Request, *, job_id: str | None = None, run_id: str | None = None,
                  history: int = 20) -> Response:
    ctx = api(request)
    q = parse_query(request, StreamQuery)
    types = _types(q.types)
    after = request.headers.get("last-event-id") or q.last_event_id or None
    # resumed from the bus, or replayed from history (chronos_core.streams)
    resumed = await ctx.chronos.events.resume(job_id=job_id, run_id=run_id, types=types, after=after,
                                              history=history)
    sub, first, snapshot = resumed.subscription, resumed.replayed, resumed.snapshot
    closes_on_final = run_id is not None
    # A run stream starts with the output so far, numbered up to ``shown``: live lines already in it are
    # not sent again, and lines between it and the first live line are read from the store. (A client
    # that resumed from an id the bus retains gets no snapshot: it numbers from its first live line.)
    shown: int | None = snapshot[0].output_lines if run_id is not None and snapshot else None
    hub = ctx.sse
    # The streams of many clients (all jobs, one job) catch up on their own subscription, then hand over
    # to their group's (chronos_app.api.fanout); a run stream keeps its own (its lines are numbered).
    shared = run_id is None and isinstance(sub, BufferedSubscription)
    kinds = None if types is None else frozenset(types)

    async def catch_up(client: SseClient, own: BufferedSubscription) -> bool:
        await own.start()
        while True:
            events = own.take()
            if not events:
                return hub.join(client, own, job_id, kinds)
            frames: list[bytes] = []
            size = 0
            for event in events:
                frames.append(ctx.frames.frame(event))
                size += len(frames[-1])
                deleted = job_id is not None and event.type is EventType.JOB_DELETED
                if deleted or size > client.limit // 4:
                    if not client.write(b"".join(frames)) or deleted:
                        return False
                    frames, size = [], 0
                    await client.drain()
            if frames and not client.write(b"".join(frames)):
                return False

    async def events(client: SseClient) -> bool:
        """The stream's frames; True when it was handed over to its group."""
        nonlocal shown
        async with sub:
            try:
                for event in first:
                    if not client.write(_replayed(event)):
                        return False
                    if closes_on_final and event.type in _FINAL_RUN_EVENTS:
                        return False
                if shared:
                    assert isinstance(sub, BufferedSubscription)
                    return await catch_up(client, sub)
                # A run stream that is quiet re-reads the store now and then: a line published before
                # it subscribed and stored only afterwards would otherwise wait for a later line.
                polls = run_id is not None and shown is not None and (
                    types is None or EventType.RUN_LOG in types)
                stream = aiter(sub)
                nxt: asyncio.Future[Event] | None = None
                try:
                    while True:
                        await client.drain()
                        if nxt is None:
                            nxt = asyncio.ensure_future(anext(stream))
                        done, _ = await asyncio.wait({nxt}, timeout=_IDLE_POLL if polls else None)
                        if not done:
                            assert run_id is not None and shown is not None
                            try:
                                run = await ctx.chronos.runs.get(run_id)
                            except RunNotFound:
                                return False
                            for line in _stored(run, shown + 1, run.output_lines):
                                if not client.write(_replayed(line)):
                                    return False
                            shown = max(shown, run.output_lines)
                            continue
                        try:
                            event = nxt.result()
                        except StopAsyncIteration:
                            return False
                        nxt = None
                        if run_id is not None and event.type is EventType.RUN_LOG and isinstance(
                                seq := event.data.get("seq"), int):
                            if shown is not None and seq <= shown:
                                continue
                            if shown is not None and seq > shown + 1:
                                for line in await _gap(ctx, run_id, shown + 1, seq - 1):
                                    if not client.write(_replayed(line)):
                                        return False
                            shown = seq
                        if not client.write(ctx.frames.frame(event)):
                            return False
                        if closes_on_final and event.type in _FINAL_RUN_EVENTS:
                            return False
                        if job_id is not None and event.type is EventType.JOB_DELETED:
                            return False
                finally:
                    if nxt is not None:
                        nxt.cancel()
            except SubscriptionOverflow as exc:
                # Tell the client to reconnect: it resumes from its last id (replayed from history if need
                # be).
                client.overflow(str(exc))
                return False

    return SseResponse(ctx, events, sub)


class SseResponse(Response):
    """A ``text/event-stream`` whose body ``events`` writes to the stream's :class:`SseClient` (and
    returns True when it handed the stream over to its group, which writes from then on). The stream
    ends when the body returns False, when its group ends it, when the client disconnects, or when the
    server shuts down. HEAD gets the headers only."""

    media_type = "text/event-stream"

    def __init__(self, ctx: ApiContext, events: Callable[[SseClient], Awaitable[bool]],
                 sub: Subscription) -> None:
        self.status_code = 200
        self.background = None
        # no body: no Content-Length, so the server sends the body in chunks
        self.init_headers({"Cache-Control": "no-store", "Connection": "keep-alive",
                           "X-Accel-Buffering": "no"})
        self.ctx = ctx
        self.events = events
        self.sub = sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if scope["method"] == "HEAD":
            await self.sub.aclose()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        ctx = self.ctx
        client = ctx.sse.client(scope, send)
        ctx.metrics.sse_clients.inc()
        body = asyncio.create_task(self._body(client))
        listener = asyncio.create_task(listen_for_disconnect(receive, client))
        try:
            await client.run()
        finally:
            listener.cancel()
            body.cancel()
            try:
                await asyncio.wait({body})
            finally:
                ctx.sse.remove(client)
                ctx.metrics.sse_clients.dec()
        if not body.cancelled() and (failed := body.exception()) is not None:
            raise failed  # as the server reports a failing app (the stream has ended)

    async def _body(self, client: SseClient) -> None:
        try:
            handed_over = await self.events(client)
        except BaseException:
            client.end()
            raise
        if not handed_over:
            client.end()


async def stream_job(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    await api(request).chronos.jobs.get(job_id)  # 404 before the stream starts
    return await _stream(request, job_id=job_id)


async def stream_run(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    await api(request).chronos.runs.get(run_id)
    # It starts with the run's current state and ends with the run's final status.
    return await _stream(request, run_id=run_id)


async def stream_all(request: Request) -> Response:
    return await _stream(request, history=50)
