"""Bearer-token authentication, as ASGI middleware in front of every route but the public ones.

Tokens come from ``CHRONOS_API_TOKENS`` (full access) and ``CHRONOS_READONLY_TOKENS`` (GET only; other
methods answer 403). Each presented token is compared with every configured one in constant time. The SSE
streams also accept ``?token=`` because browsers' ``EventSource`` cannot send headers. With no token
configured, auth is off (the CLI refuses that unless bound to a loopback address).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Iterable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from .problems import Forbidden, Unauthorized, exception_problem

__all__ = ["TokenAuth"]

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenAuth:
    def __init__(self, app: ASGIApp, *, tokens: Iterable[str], readonly_tokens: Iterable[str],
                 public: Collection[str], query_token_prefixes: tuple[str, ...]) -> None:
        self.app = app
        # Compare fixed-length digests so neither the length nor the content leaks through timing.
        self._tokens = [(_digest(t), False) for t in tokens] + [(_digest(t), True) for t in readonly_tokens]
        self._public = frozenset(public)
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._tokens or scope["path"] in self._public:
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
        if error is not None:
            await exception_problem(error, scope["path"])(scope, receive, send)
            return
        await self.app(scope, receive, send)
