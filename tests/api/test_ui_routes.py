"""The dashboard's and the docs' pages are served from the package without a token (they hold no data),
with a strict Content-Security-Policy; /auth/me says what the caller's token may do."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from tests.api.conftest import build_app, live, running

ADMIN, VIEWER = "admin-token-for-ui-tests", "viewer-token-for-ui-tests"


async def test_root_and_ui_redirect_and_pages_are_public_but_data_is_not() -> None:
    app = build_app(api_tokens=[ADMIN], readonly_tokens=[VIEWER])
    async with running(app) as c:
        for path in ("/", "/ui"):
            r = await c.get(path)
            assert (r.status_code, r.headers["location"]) == (307, "/ui/")
        page = await c.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/ui/static/app.js" in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in \
            csp.split("script-src", 1)[1].split(";", 1)[0]
        docs = await c.get("/docs")
        assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
        script = await c.get("/ui/static/vendor/alpinejs/alpine.min.js")
        assert script.status_code == 200 and script.headers["x-content-type-options"] == "nosniff"
        assert (await c.get("/ui/static/nothing-here.js")).status_code == 404
        assert (await c.get("/jobs")).status_code == 401
        assert (await c.post("/ui/", json={})).status_code == 401  # public for GET/HEAD only
        assert (await c.get("/auth/me")).status_code == 401


async def test_auth_me_says_what_the_token_may_do() -> None:
    app = build_app(api_tokens=[ADMIN], readonly_tokens=[VIEWER])
    async with running(app) as c:
        me = await c.get("/auth/me", headers={"Authorization": f"Bearer {ADMIN}"})
        assert me.json() == {"auth_enabled": True, "can_write": True}
        me = await c.get("/auth/me", headers={"Authorization": f"Bearer {VIEWER}"})
        assert me.json() == {"auth_enabled": True, "can_write": False}
        assert (await c.get("/auth/me", headers={"Authorization": "Bearer wrong"})).status_code == 401
    async with running(build_app()) as c:  # auth off (loopback): anyone here may write
        assert (await c.get("/auth/me")).json() == {"auth_enabled": False, "can_write": True}


async def _raw_get(url: str, path: str) -> bytes:
    """A GET sent as written (an HTTP client would normalize the dots away)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer.split(b"\r\n", 1)[0]


async def test_a_path_climbing_out_of_the_public_prefix_does_not_reach_the_api() -> None:
    async with live(build_app(api_tokens=[ADMIN])) as url:
        for path in ("/ui/../jobs", "/ui/static/../../jobs", "/ui/static/%2e%2e/__init__.py",
                     "/ui/static/../__init__.py"):
            status = await _raw_get(url, path)
            assert status in (b"HTTP/1.1 404 Not Found", b"HTTP/1.1 401 Unauthorized"), (path, status)
        assert await _raw_get(url, "/ui/static/app.js") == b"HTTP/1.1 200 OK"
