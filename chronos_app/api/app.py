"""The Starlette application: routes from the table, one exception table, token auth, and a lifespan that
starts the container's ``Chronos`` (store, queue, bus, executors, and the engines this process runs)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..container import Container
from ..runtime import Served
from ..ui import PUBLIC_PATHS, PUBLIC_PREFIXES, ui_routes
from .auth import TokenAuth
from .context import ApiContext
from .idempotency import IdempotencyCache
from .metrics import ApiMetrics
from .openapi import build_openapi
from .pages import KeptPages
from .problems import EXCEPTION_HANDLERS
from .routes import OPS
from .shown import ShownJobs

__all__ = ["create_app"]

log = logging.getLogger("chronos.api")


def _version() -> str:
    try:
        return version("chronos-scheduler")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


Endpoint = Callable[[Request], Awaitable[Response]]


class _PathRoute(Route):
    """A path with every method it serves, so a 405's ``Allow`` names them all (sorted)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(self.methods))})
        await self.app(scope, receive, send)


def routes_by_path(handlers: list[tuple[str, str, Endpoint]]) -> list[Route]:
    """One route per path whatever its methods (one Starlette route per method would make a 405 name
    only its own). Routing is as before: a method a path does not serve may still match a later path
    (``PUT /jobs/health`` is ``PUT /jobs/{job_id}``); a 405 comes when none does."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for method, path, endpoint in handlers:
        by_path.setdefault(path, {})[method] = endpoint
    routes: list[Route] = []
    for path, endpoints in by_path.items():
        if "GET" in endpoints:
            endpoints.setdefault("HEAD", endpoints["GET"])

        async def dispatch(request: Request, endpoints: dict[str, Endpoint] = endpoints) -> Response:
            return await endpoints[request.method](request)

        routes.append(_PathRoute(path, dispatch, methods=list(endpoints)))
    return routes


class _App(Starlette):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["chronos.send"] = send  # the server's own: the SSE fan-out writes to its transport (fanout.py)
        await super().__call__(scope, receive, send)


def create_app(container: Container | None = None, *,
               on_started: Callable[[], None] | None = None, served: Served | None = None,
               exiting: Callable[[], bool] | None = None) -> Starlette:
    """The API over the container's ``Chronos``; the lifespan starts and stops it (and calls
    ``on_started`` once it has started). With ``served`` (a ``ChronosFront``: the engines started
    already, on another event loop), the API uses it instead and its lifespan starts and stops only that
    (``exiting``: whether the server is shutting down, for the SSE streams to end, as uvicorn's signal
    handler tells when it runs on the main thread)."""
    container = container or Container()
    settings = container.settings()
    engines = container.chronos()
    chronos: Served = served if served is not None else engines
    metrics = ApiMetrics()
    ctx = ApiContext(chronos=chronos, settings=settings,
                     idempotency=IdempotencyCache(settings.idempotency_ttl,
                                                  max_bytes=settings.idempotency_max_bytes), metrics=metrics,
                     shown=ShownJobs(chronos.job_types), pages=KeptPages(chronos.store, chronos.job_types))
    if exiting is not None:
        ctx.sse.exiting = exiting
    documents: dict[tuple[str, ...], dict[str, Any]] = {}

    async def openapi(request: Request) -> Response:
        # built on first use, again when a job type is registered later (its payload is in the document)
        key = tuple(chronos.job_types.names)
        if key not in documents:
            documents.clear()
            documents[key] = build_openapi(OPS, title="Chronos", version=_version(),
                                           auth=settings.auth_enabled, job_types=chronos.job_types)
        return JSONResponse(documents[key])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await chronos.start()
        if not chronos.started:  # the server was stopped while Chronos waited for its database
            yield
            return
        await metrics.start(chronos)
        if on_started is not None:
            on_started()
        log.info("chronos API ready (store: %s, scheduler: %s, worker: %s%s)", type(engines.store).__name__,
                 engines.scheduler is not None, engines.worker is not None,
                 ", on a thread of its own" if served is not None else "")
        try:
            yield
        finally:
            await metrics.stop()
            await chronos.stop(settings.shutdown_grace)

    routes = routes_by_path([(op.method, op.path, op.endpoint) for op in OPS]
                            + [("GET", "/openapi.json", openapi)])
    routes += ui_routes()
    public = {op.path for op in OPS if op.public} | {"/openapi.json"} | PUBLIC_PATHS
    middleware = [Middleware(TokenAuth, tokens=settings.api_tokens, readonly_tokens=settings.readonly_tokens,
                             public=public, query_token_prefixes=("/monitor/logs", "/monitor/runs/"),
                             allowed_hosts=settings.allowed_hosts, public_prefixes=PUBLIC_PREFIXES)]
    handlers: dict[Any, Any] = dict(EXCEPTION_HANDLERS)
    app = _App(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan)
    app.state.api = ctx
    app.state.container = container
    return app
