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


Replay = Callable[[int, list[tuple[str, str]]], Awaitable[Response]]


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    expires: float
    status: int
    body: bytes | None  # None: the answer was too large to keep; ``replay`` rebuilds it
    headers: list[tuple[str, str]]
    size: int


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class IdempotencyCache:
    """Per key: a digest of the request body and the answer. Bounded by entries and by bytes (oldest
    out first); an answer over ``max_answer`` bytes (a job with a large payload) is not kept - a replay
    rebuilds it with the ``replay`` callable of the first request (re-reading the job), or, without
    one, the key is not remembered."""

    def __init__(self, ttl: float, max_entries: int = 10_000, max_bytes: int = 16 * 1024 * 1024,
                 max_answer: int = 64 * 1024) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_answer = max_answer
        self.size = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._replays: dict[str, Replay] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, users)

    def __len__(self) -> int:
        return len(self._entries)

    async def run(self, key: str, data: Any, produce: Callable[[], Awaitable[Response]],
                  instance: str, replay: Replay | None = None) -> Response:
        fp = fingerprint(data)
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            return await self._run(lock, key, fp, produce, instance, replay)
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _run(self, lock: asyncio.Lock, key: str, fp: str, produce: Callable[[], Awaitable[Response]],
                   instance: str, replay: Replay | None) -> Response:
        async with lock:  # a concurrent retry waits for the first attempt, then replays it
            now = time.monotonic()
            self._expire(now)
            entry = self._entries.get(key)
            if entry is not None:
                if entry.fingerprint != fp:
                    raise IdempotencyKeyReused(
                        "this Idempotency-Key was first used with a different body; use a new key")
                headers = dict(entry.headers)
                headers["idempotent-replayed"] = "true"
                if entry.body is None:
                    response = await (replay or _gone)(entry.status, entry.headers)
                    response.headers["idempotent-replayed"] = "true"
                    return response
                return Response(entry.body, status_code=entry.status, headers=headers)
            try:
                response = await produce()
            except Exception as exc:
                response = exception_problem(exc, instance)
            if response.status_code < 500:  # a server-side failure may be retried with the same key
                self._keep(key, fp, now, response, replay)
            return response

    def _keep(self, key: str, fp: str, now: float, response: Response, replay: Replay | None) -> None:
        body: bytes | None = bytes(response.body)
        if len(body or b"") > self.max_answer:
            if replay is None:
                return
            body = None
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        size = len(key) + len(fp) + len(body or b"") + sum(len(k) + len(v) for k, v in headers) + 200
        self._entries[key] = _Entry(fp, now + self.ttl, response.status_code, body, headers, size)
        self.size += size
        while self._entries and (len(self._entries) > self.max_entries or self.size > self.max_bytes):
            _, gone = self._entries.popitem(last=False)
            self.size -= gone.size

    def _expire(self, now: float) -> None:
        while self._entries:  # one TTL for all: insertion order is expiry order
            key, first = next(iter(self._entries.items()))
            if first.expires >= now:
                return
            del self._entries[key]
            self.size -= first.size


async def _gone(status: int, headers: list[tuple[str, str]]) -> Response:
    return Response(status_code=status)
