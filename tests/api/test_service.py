"""Runs, schedule preview, health/readiness, auth, metrics, the OpenAPI document and routing errors."""

from __future__ import annotations

import logging
import re
from datetime import datetime

import httpx
import pytest

from chronos_adapters.memory import MemoryStore
from chronos_app.api.routes import OPS
from chronos_core import StoreUnavailable
from tests.api.conftest import build_app, job, running, wait_for
from tests.api.test_jobs import _problem


async def test_cancel_a_queued_run_then_409() -> None:
    async with running(build_app(worker=False)) as c:  # no worker: the run stays queued
        created = (await c.post("/jobs", json=job())).json()
        run = (await c.post(f"/jobs/{created['id']}/run")).json()
        r = await c.post(f"/runs/{run['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert (await c.get(f"/runs/{run['id']}")).json()["status"] == "cancelled"
        body = _problem(await c.post(f"/runs/{run['id']}/cancel"), 409)
        assert "already finished" in body["detail"]
        _problem(await c.post("/runs/nope/cancel"), 404)
        _problem(await c.get("/runs/nope"), 404)


async def test_cancel_a_running_run_is_202_and_ends_cancelled(client: httpx.AsyncClient) -> None:
    created = (await client.post("/jobs", json=job(payload={"command": "sleep 30"}))).json()
    run = (await client.post(f"/jobs/{created['id']}/run")).json()

    async def running_now() -> bool:
        return (await client.get(f"/runs/{run['id']}")).json()["status"] == "running"

    await wait_for(running_now)
    r = await client.post(f"/runs/{run['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "running"

    async def cancelled() -> bool:
        return (await client.get(f"/runs/{run['id']}")).json()["status"] == "cancelled"

    await wait_for(cancelled)


async def test_schedule_preview(client: httpx.AsyncClient) -> None:
    r = await client.get("/schedules/preview", params={"schedule": "0 9 * * mon-fri",
                                                        "timezone": "Europe/Berlin", "count": 7})
    assert r.status_code == 200
    times = [datetime.fromisoformat(t) for t in r.json()["times"]]
    assert len(times) == 7 and times == sorted(times) and len(set(times)) == 7
    assert all(t.weekday() < 5 and t.minute == 0 and t.hour in (7, 8) for t in times)  # 09:00 Berlin in UTC
    one = (await client.get("/schedules/preview", params={"schedule": "@at 2030-01-01T00:00:00Z"})).json()
    assert one["times"] == ["2030-01-01T00:00:00Z"]
    # the same 422 as POST /jobs
    preview = _problem(await client.get("/schedules/preview", params={"schedule": "61 * * * *"}), 422)
    create = _problem(await client.post("/jobs", json=job(schedule="61 * * * *")), 422)
    assert preview["errors"] == create["errors"]
    params = {"schedule": "@daily", "timezone": "X/Y"}
    tz = _problem(await client.get("/schedules/preview", params=params), 422)
    assert tz["errors"][0]["pointer"] == "/timezone"
    _problem(await client.get("/schedules/preview", params={"schedule": "@daily", "count": 1000}), 422)
    # extreme times are refused or simply end, never a 500
    for expr in ("@at 0001-01-01T00:00:00+14:00", "@every 99999999999d"):
        a = _problem(await client.get("/schedules/preview", params={"schedule": expr}), 422)
        b = _problem(await client.post("/jobs", json=job(name=expr, schedule=expr)), 422)
        assert a["errors"] == b["errors"] and a["errors"][0]["pointer"] == "/schedule"
    far = await client.get("/schedules/preview", params={"schedule": "@every 3000000d", "count": 3})
    assert far.status_code == 200 and len(far.json()["times"]) <= 1
    assert (await client.post("/jobs", json=job(name="far", schedule="@every 3000000d"))).status_code == 201
    for field, value in (("start_at", "0001-01-01T00:00:00+14:00"), ("end_at", "9999-12-31T23:59:59-14:00")):
        spec = job(name=field, schedule="@hourly", **{field: value})
        body = _problem(await client.post("/jobs", json=spec), 422)
        assert body["errors"][0]["pointer"] == f"/{field}"
    spec = job(name="late", schedule="0 0 1 1 *", start_at="9999-12-31T23:59:59Z")
    late = await client.post("/jobs", json=spec)
    assert late.status_code == 201 and late.json()["next_run_at"] is None  # no slot before the end of time
    missing = _problem(await client.get("/schedules/preview"), 422)
    assert missing["errors"][0]["pointer"] == "/schedule"


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    for path in ("/jobs/health", "/monitor/health"):
        assert (await client.get(path)).json() == {"status": "ok"}
    assert (await client.get("/ready")).json() == {"status": "ok", "store": "ok"}


class UnreachableStore(MemoryStore):
    """A store whose backend stopped answering (what an SQL store reports when its server is down)."""

    async def ping(self) -> None:
        raise StoreUnavailable("connection refused")


async def test_readiness_fails_when_the_store_does_not_answer(caplog: pytest.LogCaptureFixture) -> None:
    async with running(build_app(store=UnreachableStore())) as c:
        body = _problem(await c.get("/ready"), 503)
        # /ready is public: the driver's reason (account, host) is in the log only (review-secattack F4)
        assert "connection refused" not in body["detail"] and "log" in body["detail"]
        assert "not ready: store unavailable: connection refused" in caplog.text
        assert (await c.get("/jobs/health")).status_code == 200  # liveness is not readiness


async def test_readiness_logs_a_store_outage_once_not_per_request(caplog: pytest.LogCaptureFixture) -> None:
    """/ready is public: 200 requests while the store is down are one WARNING, not 200 (review-secfix
    I1); then one line a minute while it stays down, saying how many checks were not logged, and one
    when it answers again."""
    store = UnreachableStore()
    app = build_app(store=store)
    async with running(app) as c:
        caplog.set_level(logging.WARNING, logger="chronos.api")
        for _ in range(200):
            assert (await c.get("/ready")).status_code == 503

        def lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "chronos.api"]
        assert lines() == ["not ready: store unavailable: connection refused"]
        now = [1000.0]
        app.state.api.readiness_log._clock = lambda: now[0]
        app.state.api.readiness_log._logged_at = now[0]
        assert (await c.get("/ready")).status_code == 503
        now[0] += 61
        assert (await c.get("/ready")).status_code == 503
        assert lines()[1:] == ["not ready: store unavailable: connection refused (200 more failed checks "
                               "since the last such line)"]
        store.ping = MemoryStore.ping.__get__(store)  # type: ignore[method-assign]
        for _ in range(3):
            assert (await c.get("/ready")).status_code == 200
        assert lines()[2:] == ["ready again: the store answers"]


async def test_bearer_tokens() -> None:
    app = build_app(api_tokens="t0k-a,t0k-b", readonly_tokens="r3ad")
    async with running(app) as c:
        assert (await c.get("/jobs/health")).status_code == 200
        assert (await c.get("/openapi.json")).status_code == 200
        body = _problem(await c.get("/jobs"), 401)
        assert (await c.get("/jobs")).headers["www-authenticate"].startswith("Bearer")
        assert "t0k" not in body["detail"]
        _problem(await c.get("/jobs", headers={"Authorization": "Bearer wrong"}), 401)
        _problem(await c.get("/jobs", headers={"Authorization": "Basic dDBrLWE="}), 401)
        _problem(await c.get("/jobs?token=t0k-a"), 401)  # query tokens only on the streams
        ok = await c.post("/jobs", json=job(), headers={"Authorization": "Bearer t0k-b"})
        assert ok.status_code == 201
        assert (await c.get("/jobs", headers={"Authorization": "Bearer r3ad"})).status_code == 200
        _problem(await c.post("/jobs", json=job(name="x"), headers={"Authorization": "Bearer r3ad"}), 403)
        _problem(await c.delete(f"/jobs/{ok.json()['id']}", headers={"Authorization": "Bearer r3ad"}), 403)
        assert (await c.get("/metrics", headers={"Authorization": "Bearer t0k-a"})).status_code == 200
        _problem(await c.get("/metrics"), 401)


async def test_metrics_count_runs_by_status(client: httpx.AsyncClient) -> None:
    ok = (await client.post("/jobs", json=job(name="ok"))).json()
    bad = (await client.post("/jobs", json=job(name="bad", payload={"command": "exit 3"}))).json()
    r1 = (await client.post(f"/jobs/{ok['id']}/run")).json()
    r2 = (await client.post(f"/jobs/{bad['id']}/run")).json()

    async def done() -> bool:
        statuses = {(await client.get(f"/runs/{r['id']}")).json()["status"] for r in (r1, r2)}
        return statuses == {"succeeded", "failed"}

    await wait_for(done)

    async def counted() -> str | None:
        text = (await client.get("/metrics")).text
        ok = re.search(r'^chronos_runs_total\{status="succeeded"\} (\S+)$', text, re.M)
        bad = re.search(r'^chronos_runs_total\{status="failed"\} (\S+)$', text, re.M)
        return text if ok and bad and float(ok[1]) >= 1 and float(bad[1]) >= 1 else None

    text = await wait_for(counted)
    assert re.search(r"^chronos_queue_depth 0\.0$", text, re.M)
    assert re.search(r"^chronos_sse_clients 0\.0$", text, re.M)
    assert "chronos_scheduler_fire_lag_seconds" in text
    assert (await client.get("/metrics")).headers["content-type"].startswith("text/plain")


async def test_openapi_documents_every_route_and_error(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    routes = {(op.path, op.method.lower()) for op in OPS}
    documented = {(p, m) for p, ms in doc["paths"].items() for m in ms}
    assert routes == documented
    assert {"/jobs", "/jobs/{job_id}/history", "/monitor/logs/{job_id}", "/schedules/preview",
            "/runs/{run_id}/cancel", "/metrics", "/ready"} <= set(doc["paths"])
    create = doc["paths"]["/jobs"]["post"]
    assert {"201", "400", "409", "413", "415", "422"} <= set(create["responses"])
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("JobSpec")
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/problem+json"]["schema"]
                    assert schema["$ref"].endswith("/Problem"), (path, method, status)
    assert "JobOut" in doc["components"]["schemas"]
    example = create["requestBody"]["content"]["application/json"]["example"]
    assert (await client.post("/jobs", json=example)).status_code == 201  # the documented example works


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    _problem(await client.get("/nowhere"), 404)
    _problem(await client.patch("/jobs"), 405)
