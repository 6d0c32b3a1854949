"""What handlers reach through ``request.app.state.api``, and the route description shared by the router
and the OpenAPI document."""

from __future__ import annotations

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
from .shown import ShownJobs, ShownRuns

__all__ = ["ApiContext", "Op", "api"]


@dataclass
class ApiContext:
    chronos: Served
    """The Chronos (or, with the API on a loop of its own, its ``ChronosFront``)."""
    settings: Settings
    idempotency: IdempotencyCache
    metrics: ApiMetrics
    shown: ShownJobs
    shown_runs: ShownRuns = field(default_factory=ShownRuns)
    """Runs that ended, as pages of history show them (kept: they never change)."""
    frames: EventFrames = field(default_factory=EventFrames)
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
