"""``Idempotency-Key`` for POST: the same key with the same body replays the first answer; the same key
with another body is refused (422). Keys are scoped to the caller's token and kept for a TTL, in this
process (an API behind a load balancer should route a client to one process, or retry by name)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from .problems import IdempotencyKeyReused, exception_problem

__all__ = ["IdempotencyCache"]


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    expires: float
    status: int
    body: bytes
    headers: list[tuple[str, str]]


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class IdempotencyCache:
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, users)

    async def run(self, key: str, data: Any, produce: Callable[[], Awaitable[Response]],
                  instance: str) -> Response:
        fp = fingerprint(data)
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            return await self._run(lock, key, fp, produce, instance)
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _run(self, lock: asyncio.Lock, key: str, fp: str,
                   produce: Callable[[], Awaitable[Response]], instance: str) -> Response:
        async with lock:  # a concurrent retry waits for the first attempt, then replays it
            now = time.monotonic()
            entry = self._entries.get(key)
            if entry is not None and entry.expires < now:
                del self._entries[key]
                entry = None
            if entry is not None:
                if entry.fingerprint != fp:
                    raise IdempotencyKeyReused(
                        "this Idempotency-Key was first used with a different body; use a new key")
                headers = dict(entry.headers)
                headers["idempotent-replayed"] = "true"
                return Response(entry.body, status_code=entry.status, headers=headers)
            try:
                response = await produce()
            except Exception as exc:
                response = exception_problem(exc, instance)
            if response.status_code < 500:  # a server-side failure may be retried with the same key
                self._entries[key] = _Entry(fp, now + self.ttl, response.status_code, bytes(response.body),
                                            [(k, v) for k, v in response.headers.items()
                                             if k.lower() != "content-length"])
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            return response
