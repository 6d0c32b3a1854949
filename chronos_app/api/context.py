"""What handlers reach through ``request.app.state.api``, and the route description shared by the router
and the OpenAPI document."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from ..runtime import Served
from ..settings import Settings
from .fanout import SseHub
from .frames import EventFrames
from .idempotency import IdempotencyCache
from .metrics import ApiMetrics
from .pages import KeptPages
from .shown import ShownJobs, ShownRuns

__all__ = ["ApiContext", "Op", "ReadinessLog", "api"]

log = logging.getLogger("chronos.api")


class ReadinessLog:
    """The log lines of ``/ready``. It is public, so anyone could ask it many times a second while the
    store is down; one WARNING per request would flood the log (review-secfix I1). A failure is logged
    when the service stops being ready, then at most once per ``every`` seconds while it stays so (with
    the reason of that moment and how many failed checks were not logged); being ready again is logged
    once."""

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._down = False
        self._logged_at = 0.0
        self._quiet = 0

    def failed(self, reason: str) -> None:
        now = self._clock()
        if self._down and now - self._logged_at < self.every:
            self._quiet += 1
            return
        more = f" ({self._quiet} more failed checks since the last such line)" if self._quiet else ""
        log.warning("not ready: %s%s", reason, more)
        self._down, self._logged_at, self._quiet = True, now, 0

    def ready(self) -> None:
        if self._down:
            log.warning("ready again: the store answers")
            self._down, self._quiet = False, 0


@dataclass
class ApiContext:
    chronos: Served
    """The Chronos (or, with the API on a loop of its own, its ``ChronosFront``)."""
    settings: Settings
    idempotency: IdempotencyCache
    metrics: ApiMetrics
    shown: ShownJobs
    pages: KeptPages
    """Pages of GET /jobs and GET /jobs/{id}/history as sent, while the store has not changed."""
    shown_runs: ShownRuns = field(default_factory=ShownRuns)
    """Runs that ended, as pages of history show them (kept: they never change)."""
    frames: EventFrames = field(default_factory=EventFrames)
    readiness_log: ReadinessLog = field(default_factory=ReadinessLog)
    sse: SseHub = field(init=False)
    """The open SSE streams: their fan-out, keep-alive and shutdown (``close`` ends them all)."""

    def __post_init__(self) -> None:
        self.sse = SseHub(self.chronos.bus, self.frames, ping=self.settings.sse_ping)


def api(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.api
    return ctx


@dataclass(frozen=True)
class Op:
    """One route: the handler plus what the OpenAPI document says about it."""

    method: str
    path: str
    endpoint: Callable[[Request], Awaitable[Response]]
    summary: str
    status: int
    response: type[BaseModel] | None
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    public: bool = False
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    request_headers: dict[str, str] = field(default_factory=dict)
    extra_responses: dict[int, tuple[type[BaseModel] | None, str]] = field(default_factory=dict)
    description: str = ""
    example: dict[str, Any] | None = None
    """An example request body for the document."""
    request_media_type: str = "application/json"
    """The body's media type in the document (any JSON media type is accepted)."""
    creates: str | None = None
    """The path parameter (``job_id``, ``run_id``) the response's ``id`` fills: OpenAPI links to every
    operation that takes it."""

    @property
    def operation_id(self) -> str:
        return self.endpoint.__name__
