"""Issue #11 finding 7 over the real app: the ``Idempotency-Key`` cache is bounded by bytes and keeps a
digest plus a small answer, and no problem echoes a huge input back."""

from __future__ import annotations

import json

from chronos_app.api.idempotency import IdempotencyCache

from .conftest import build_app, running

BIG = "x" * 900_000


def _cached_bytes(cache: IdempotencyCache) -> int:
    return sum(len(e.body or b"") for e in cache._entries.values())


async def test_large_answers_are_not_kept_and_replays_still_work() -> None:
    app = build_app(worker=False, scheduler=False)
    cache: IdempotencyCache = app.state.api.idempotency
    async with running(app) as c:
        first = None
        for i in range(40):  # 40 x 900 KB jobs, each answer echoing its payload
            r = await c.post("/jobs", json={"name": f"big-{i}", "type": "shell", "payload": {
                "command": "true", "env": {"BLOB": BIG}}}, headers={"Idempotency-Key": f"k-{i}"})
            assert r.status_code == 201
            first = first or r.json()
        assert _cached_bytes(cache) < 1_000_000, _cached_bytes(cache)  # kept whole: 36 MB
        again = await c.post("/jobs", json={"name": "big-0", "type": "shell", "payload": {
            "command": "true", "env": {"BLOB": BIG}}}, headers={"Idempotency-Key": "k-0"})
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first["id"] and again.headers["location"] == f"/jobs/{first['id']}"
        other = await c.post("/jobs", json={"name": "other", "type": "shell", "payload": {
            "command": "true"}}, headers={"Idempotency-Key": "k-0"})
        assert other.status_code == 422  # same key, another body


async def test_the_cache_is_bounded_by_bytes() -> None:
    app = build_app(worker=False, scheduler=False, idempotency_max_bytes=200_000)
    cache: IdempotencyCache = app.state.api.idempotency
    async with running(app) as c:
        for i in range(300):
            r = await c.post("/jobs", json={"name": f"n-{i}", "type": "shell", "payload": {
                "command": "x" * 2000}}, headers={"Idempotency-Key": f"k-{i}"})
            assert r.status_code == 201
    assert cache.size <= 200_000 and 0 < len(cache) < 300


async def test_problems_never_echo_a_huge_input() -> None:
    app = build_app(worker=False, scheduler=False)
    async with running(app) as c:
        for body in ({"name": "x", "type": "shell", "payload": {"argv": [1] * 200_000}},
                     {"name": "x", "type": "shell", "payload": {"command": "x", "env": {"k" * 900_000: "v"}}},
                     {"name": "x", "type": "t" * 900_000, "payload": {}}):
            r = await c.post("/jobs", content=json.dumps(body), headers={
                "Content-Type": "application/json", "Idempotency-Key": "same-size"})
            assert r.status_code == 422
            assert len(r.content) < 20_000, len(r.content)  # was 25 MB for the first one
            problem = r.json()
            assert problem["errors"] and len(problem["errors"]) <= 51
            await c.post("/jobs", json={"name": "clear"}, headers={"Idempotency-Key": "other"})
            cache: IdempotencyCache = app.state.api.idempotency
            cache._entries.clear()
            cache.size = 0
