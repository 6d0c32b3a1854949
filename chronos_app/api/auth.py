"""Bearer-token authentication, as ASGI middleware in front of every route but the public ones.

Tokens come from ``CHRONOS_API_TOKENS`` (full access) and ``CHRONOS_READONLY_TOKENS`` (GET only; other
methods answer 403). Each presented token is compared with every configured one in constant time. The SSE
streams also accept ``?token=`` because browsers' ``EventSource`` cannot send headers. With no token
configured, auth is off (the CLI refuses that unless bound to a loopback address) and, against DNS
rebinding and cross-site requests from a browser on this machine, only loopback ``Host`` names
(``localhost``, ``*.localhost``, ``127.x.x.x``, ``[::1]``, plus ``allowed_hosts``) are served and writes
from another ``Origin`` are refused. Public paths (health, readiness, the OpenAPI document, the pages of
the dashboard and the docs) are public for GET/HEAD only; any other method needs a token like every other
path, before any body is read. ``scope["chronos.readonly"]`` says whether the token is read-only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Collection, Iterable
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from .problems import Forbidden, MisdirectedHost, Unauthorized, exception_problem

__all__ = ["TokenAuth", "is_loopback_host"]

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PUBLIC_METHODS = frozenset({"GET", "HEAD"})


def is_loopback_host(host: str) -> bool:
    """``localhost``, a ``.localhost`` name, a loopback IPv4/IPv6 address (brackets allowed)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The name in a ``Host`` header (without the port)."""
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenAuth:
    def __init__(self, app: ASGIApp, *, tokens: Iterable[str], readonly_tokens: Iterable[str],
                 public: Collection[str], query_token_prefixes: tuple[str, ...],
                 allowed_hosts: Iterable[str] = (), public_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self._allowed_hosts = frozenset(h.lower().rstrip(".") for h in allowed_hosts)
        # Compare fixed-length digests so neither the length nor the content leaks through timing.
        self._tokens = [(_digest(t), False) for t in tokens] + [(_digest(t), True) for t in readonly_tokens]
        self._public = frozenset(public)
        self._public_prefixes = public_prefixes
        self._query_prefixes = query_token_prefixes

    def _check(self, token: str) -> bool | None:
        """None: unknown token; else whether it is read-only."""
        presented = _digest(token)
        found: bool | None = None
        for digest, readonly in self._tokens:  # no early exit
            if hmac.compare_digest(presented, digest) and found is None:
                found = readonly
        return found

    def _token(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                text: str = value.decode("latin-1")
                scheme, _, credentials = text.partition(" ")
                if scheme.lower() == "bearer" and credentials.strip():
                    return credentials.strip()
                return None
        if scope["path"].startswith(self._query_prefixes):
            query: bytes = scope.get("query_string", b"")
            values = parse_qs(query.decode("latin-1")).get("token")
            if values:
                return values[-1]
        return None

    def _local_only(self, scope: Scope) -> Exception | None:
        """With auth off: the request must name a loopback host, and a write must not come from a page of
        another origin (a browser sends ``Origin`` with every cross-origin write)."""
        headers = {k: v for k, v in scope.get("headers", ()) if k in (b"host", b"origin", b"sec-fetch-site")}
        host = headers.get(b"host", b"").decode("latin-1")
        name = _host_name(host).lower().rstrip(".")
        if host and not (is_loopback_host(name) or name in self._allowed_hosts):
            return MisdirectedHost(f"with auth off only loopback host names are served, not {name[:100]!r}: "
                                   "set CHRONOS_API_TOKENS, or CHRONOS_ALLOWED_HOSTS for a trusted name")
        if scope["method"] in _READ_METHODS:
            return None
        origin = headers.get(b"origin")
        if origin is not None:
            parts = urlsplit(origin.decode("latin-1"))
            if parts.netloc.lower() != host.lower() or parts.scheme not in ("http", "https"):
                return Forbidden("cross-origin writes are refused while auth is off")
        if headers.get(b"sec-fetch-site", b"").lower() == b"cross-site":
            return Forbidden("cross-site writes are refused while auth is off")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no route serves one; it must not pass unauthenticated
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        if not self._tokens:
            refused = self._local_only(scope)
            if refused is not None:
                await exception_problem(refused, scope["path"])(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] in _PUBLIC_METHODS and (
                scope["path"] in self._public or scope["path"].startswith(self._public_prefixes)):
            await self.app(scope, receive, send)
            return
        token = self._token(scope)
        error: Exception | None = None
        if token is None:
            error = Unauthorized("send 'Authorization: Bearer <token>'")
        else:
            readonly = self._check(token)
            if readonly is None:
                error = Unauthorized("the token is not valid")
            elif readonly and scope["method"] not in _READ_METHODS:
                error = Forbidden("this token is read-only")
            else:
                scope["chronos.token_id"] = _digest(token).hex()[:16]
                scope["chronos.readonly"] = readonly
        if error is not None:
            await exception_problem(error, scope["path"])(scope, receive, send)
            return
        await self.app(scope, receive, send)
