"""The token check covers HTTP only; a WebSocket (when uvicorn has a WebSocket library) went past it to
the routes - the dashboard's static files raised on it, a traceback in the log per unauthenticated
request. No route serves one today, so every WebSocket is refused (1008) before any route sees it. The
app is driven as a server drives it: an ASGI websocket scope, its connect message, what it sends."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import build_app


async def _websocket(app: Any, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"127.0.0.1")], "scheme": "ws", "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8080), "root_path": "", "subprotocols": [], "asgi": {"version": "3.0"}}
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("path", ["/ui/static/app.js", "/jobs", "/monitor/logs", "/nowhere"])
async def test_a_websocket_is_refused_before_any_route(path: str) -> None:
    app = build_app(worker=False, scheduler=False, api_tokens=["ws-test-token-0123456789"])
    assert await _websocket(app, path) == [{"type": "websocket.close", "code": 1008}]
