"""Concurrent ``POST /jobs`` on the SQL stores, where creates that arrive together share one transaction
(``chronos_adapters/sql/create_batch.py``): each request is answered as it would be alone - a taken name
is its 409 problem, the same name twice gives one 201 and one 409, an idempotency key still replays -,
every job created is published as ``job.created`` and is scheduled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from chronos_core.models import EventType
from tests.api.conftest import build_app, job, running, wait_for
from tests.api.test_jobs import _problem


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Starlette]:
    url = (f"sqlite:///{tmp_path}/chronos.db" if request.param == "sqlite"
           else request.getfixturevalue("clean_mysql_url"))
    yield build_app(database_url=url)


async def _post_all(c: httpx.AsyncClient, bodies: list[dict[str, Any]],
                    headers: list[dict[str, str]] | None = None) -> list[httpx.Response]:
    return await asyncio.gather(*(c.post("/jobs", json=b, headers=(headers or [{}] * len(bodies))[i])
                                  for i, b in enumerate(bodies)))


async def test_concurrent_posts_with_one_taken_name(app: Starlette) -> None:
    bus = app.state.api.chronos.bus
    async with running(app) as c:
        taken = (await c.post("/jobs", json=job(name="taken"))).json()
        created_events = bus.subscribe(types=[EventType.JOB_CREATED])
        names = [f"job-{i}" for i in range(15)]
        names.insert(7, "taken")
        responses = await _post_all(c, [job(name=n) for n in names])
        conflict = _problem(responses[7], 409)
        alone = _problem(await c.post("/jobs", json=job(name="taken")), 409)
        assert conflict == alone and "taken" in conflict["detail"]
        created = [r.json() for i, r in enumerate(responses) if i != 7]
        assert all(r.status_code == 201 for i, r in enumerate(responses) if i != 7)
        assert sorted(j["name"] for j in created) == sorted(n for n in names if n != "taken")
        listed = (await c.get("/jobs", params={"limit": 100})).json()["items"]
        assert {j["id"] for j in listed} == {taken["id"], *(j["id"] for j in created)}
        for j in created:
            got = await c.get(f"/jobs/{j['id']}")
            assert got.status_code == 200 and got.json() == j
        seen: set[str] = set()
        async with asyncio.timeout(20):
            async for event in created_events:
                seen.add(str(event.job_id))
                if len(seen) == len(created):
                    break
        await created_events.aclose()
        assert seen == {j["id"] for j in created}


async def test_the_same_name_posted_twice_at_once_is_one_job(app: Starlette) -> None:
    async with running(app) as c:
        responses = await _post_all(c, [job(name="twin"), job(name="other"), job(name="twin")])
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201, 201, 409]
        twins = [r for r in responses if r.json().get("name") == "twin"]
        assert len(twins) == 1
        listed = (await c.get("/jobs", params={"name": "twin"})).json()["items"]
        assert [j["id"] for j in listed] == [twins[0].json()["id"]]


async def test_an_idempotency_key_posted_at_once_creates_one_job(app: Starlette) -> None:
    async with running(app) as c:
        body = job(name="once")
        key = {"Idempotency-Key": "k-1"}
        responses = await _post_all(c, [body, body, body, job(name="else")],
                                    [key, key, key, {"Idempotency-Key": "k-2"}])
        assert [r.status_code for r in responses] == [201] * 4
        assert len({r.json()["id"] for r in responses[:3]}) == 1
        assert len((await c.get("/jobs", params={"name": "once"})).json()["items"]) == 1


async def test_jobs_created_at_once_are_scheduled(app: Starlette) -> None:
    async with running(app) as c:
        responses = await _post_all(c, [job(name=f"tick-{i}", schedule="@every 1s") for i in range(6)])
        ids = [r.json()["id"] for r in responses]
        assert all(r.status_code == 201 for r in responses)

        async def all_ran() -> bool:
            for job_id in ids:
                page = (await c.get(f"/jobs/{job_id}/history")).json()
                if not any(r["status"] == "succeeded" for r in page["items"]):
                    return False
            return True
        await wait_for(all_ran, 30)
