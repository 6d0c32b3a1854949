"""The dashboard (``/ui/``) and the interactive API docs (``/docs``): static files inside the package.

No build step and no CDN: the pages are plain HTML + JavaScript, with Alpine.js, uPlot and Swagger UI
vendored under ``static/vendor`` (pinned in ``packages.json``, refreshed by ``scripts/vendor-js``). The
pages hold no data (they are public, like ``/openapi.json``); they read the API with the token the user
gives them, so a token sees in the UI exactly what it may see through the API.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

__all__ = ["PUBLIC_PATHS", "PUBLIC_PREFIXES", "ui_routes"]

STATIC = Path(__file__).parent / "static"
PUBLIC_PATHS = frozenset({"/", "/ui", "/docs", "/favicon.ico"})
PUBLIC_PREFIXES = ("/ui/",)
"""Served without a token (GET/HEAD): the pages and their scripts; the data behind them needs one."""

# Alpine evaluates its attribute expressions with Function(): 'unsafe-eval', but no inline script at all.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'; object-src 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


def _page(name: str) -> Route:
    async def page(request: Request) -> Response:
        return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers=HEADERS)

    return page  # type: ignore[return-value]


class _Static(StaticFiles):
    """The pages' scripts and styles, with the same headers; revalidated (ETag) on every load."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      *((k.lower().encode(), v.encode()) for k, v in HEADERS.items())]
            await send(message)

        await super().__call__(scope, receive, send_with_headers)  # type: ignore[arg-type]


def ui_routes() -> list[BaseRoute]:
    async def to_ui(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    async def favicon(request: Request) -> Response:
        return RedirectResponse("/ui/static/favicon.svg", status_code=301)

    return [
        Route("/", to_ui, methods=["GET", "HEAD"]),
        Route("/ui", to_ui, methods=["GET", "HEAD"]),
        Route("/favicon.ico", favicon, methods=["GET", "HEAD"]),
        Route("/ui/", _page("index.html"), methods=["GET", "HEAD"]),  # type: ignore[arg-type]
        Route("/docs", _page("docs.html"), methods=["GET", "HEAD"]),  # type: ignore[arg-type]
        Mount("/ui/static", app=_Static(directory=STATIC), name="ui-static"),
    ]
