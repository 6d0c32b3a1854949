"""The traps a newcomer met, each through the real app: 405s that name every method, a GET body written
back with PUT, PATCH as a JSON merge patch, jobs that could never work refused at once (naming the field
and the setting), failures that say they are not retried, problem types that mean one thing, status
aliases."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import build_app, running, wait_for
from tests.fixtures.httpserver import LocalHttpServer

PROBLEM = "application/problem+json"
MERGE = {"content-type": "application/merge-patch+json"}


def problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["type"] == f"https://chronos.dev/problems/{slug}", body
    return body


def pointers(body: dict[str, Any]) -> dict[str, str]:
    return {e["pointer"]: e["reason"] for e in body["errors"]}


HTTP_JOB = {"name": "report", "type": "http", "schedule": "0 2 * * *", "timezone": "Europe/Berlin",
            "payload": {"method": "POST", "url": "https://example.com/report",
                        "headers": {"Authorization": "Bearer s3cret", "X-Trace": "1"}},
            "retry": {"strategy": "exponential", "max_attempts": 3, "delay": 30}}


async def test_405_names_every_method_the_path_serves(client: httpx.AsyncClient) -> None:
    job = (await client.post("/jobs", json=HTTP_JOB)).json()
    for method, path, allow in [("POST", f"/jobs/{job['id']}", "DELETE, GET, HEAD, PATCH, PUT"),
                                ("DELETE", "/jobs", "GET, HEAD, POST"),
                                ("GET", f"/jobs/{job['id']}/run", "POST"),
                                ("PUT", "/runs", "GET, HEAD"),
                                ("POST", "/stats", "GET, HEAD")]:
        r = await client.request(method, path)
        problem(r, 405, "method-not-allowed")
        assert r.headers["allow"] == allow, (method, path)
    assert (await client.head(f"/jobs/{job['id']}")).status_code == 200


async def test_put_takes_a_job_as_get_returned_it(client: httpx.AsyncClient) -> None:
    created = (await client.post("/jobs", json=HTTP_JOB)).json()
    shown = (await client.get(f"/jobs/{created['id']}")).json()
    assert shown["payload"]["headers"]["Authorization"] == "***"
    edited = {**shown, "description": "nightly", "next_run_at": "2000-01-01T00:00:00Z",
              "consecutive_failures": 99, "created_at": "2000-01-01T00:00:00Z"}
    r = await client.put(f"/jobs/{created['id']}", json=edited)
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["description"] == "nightly"
    assert after["created_at"] == created["created_at"] and after["next_run_at"] == created["next_run_at"]
    assert after["consecutive_failures"] == 0
    stored = await client._transport.app.state.api.chronos.jobs.get(created["id"])  # type: ignore[attr-defined]
    assert stored.payload["headers"]["Authorization"] == "Bearer s3cret"  # the *** kept the secret
    # the id, if given, is the job's own; unknown fields are still refused
    body = problem(await client.put(f"/jobs/{created['id']}", json={**shown, "id": "x"}), 422, "invalid-job")
    assert set(pointers(body)) == {"/id"}
    body = problem(await client.put(f"/jobs/{created['id']}", json={**shown, "colour": "red"}), 422,
                   "invalid-job")
    assert set(pointers(body)) == {"/colour"}


async def test_patch_is_a_json_merge_patch(client: httpx.AsyncClient) -> None:
    created = (await client.post("/jobs", json={**HTTP_JOB, "description": "old"})).json()
    url = f"/jobs/{created['id']}"
    patch = {"description": None, "retry": {"max_attempts": 5},
             "payload": {"headers": {"X-Trace": None, "X-New": "2"}}, "schedule": "0 3 * * *"}
    r = await client.patch(url, json=patch, headers=MERGE)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["description"] is None and got["schedule"] == "0 3 * * *"
    assert got["retry"] == {**created["retry"], "max_attempts": 5}  # merged, not replaced
    assert got["payload"]["headers"] == {"Authorization": "***", "X-New": "2"}
    assert got["payload"]["url"] == HTTP_JOB["payload"]["url"] and got["timezone"] == "Europe/Berlin"
    assert got["next_run_at"] != created["next_run_at"]  # the schedule changed: a new next slot
    stored = await client._transport.app.state.api.chronos.jobs.get(created["id"])  # type: ignore[attr-defined]
    assert stored.payload["headers"]["Authorization"] == "Bearer s3cret"
    # plain application/json works too; a GET body as a patch changes nothing; null resets to the default
    same = (await client.patch(url, json=(await client.get(url)).json())).json()
    assert same["schedule"] == "0 3 * * *" and same["updated_at"] >= got["updated_at"]
    reset = (await client.patch(url, json={"schedule": None, "retry": None}, headers=MERGE)).json()
    assert reset["schedule"] is None and reset["next_run_at"] is None and reset["retry"]["max_attempts"] == 1
    body = problem(await client.patch(url, json={"timeout": -1}, headers=MERGE), 422, "invalid-job")
    assert set(pointers(body)) == {"/timeout"}
    problem(await client.patch(url, json=[1], headers=MERGE), 422, "invalid-job")
    problem(await client.patch(url, content=b"{", headers=MERGE), 400, "malformed-json")
    r = await client.patch("/jobs/01890000-0000-7000-8000-000000000000", json={}, headers=MERGE)
    problem(r, 404, "job-not-found")


async def test_jobs_that_could_never_run_are_refused(tmp_path: Path) -> None:
    app = build_app(sql_connections={"main": f"sqlite:///{tmp_path}/app.db"})
    async with running(app) as c:
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        body = problem(await c.post("/jobs", json={"name": "once", "type": "http", "schedule": f"@at {past}",
                                                   "payload": {"url": "https://example.com/"}}),
                       422, "invalid-job")
        assert "in the past" in pointers(body)["/schedule"]
        body = problem(await c.post("/jobs", json={"name": "q", "type": "sql", "payload": {
            "connection": "nope", "statement": "SELECT 1"}}), 422, "invalid-job")
        reason = pointers(body)["/payload/connection"]
        assert "'nope'" in reason and "main" in reason and "CHRONOS_SQL_CONNECTIONS" in reason
        assert (await c.post("/jobs", json={"name": "q", "type": "sql", "payload": {
            "connection": "main", "statement": "SELECT 1"}})).status_code == 201
        headers = {"X-Ok": "1", "X-Split": "a\r\nX-Injected: 1", "Bad Name": "x"}
        body = problem(await c.post("/jobs", json={"name": "h", "type": "http", "payload": {
            "url": "https://example.com/", "headers": headers}}), 422, "invalid-job")
        assert set(pointers(body)) == {"/payload/headers/X-Split", "/payload/headers/Bad Name"}
        # an @at job written back after its time passed is not refused: its schedule did not change
        soon = datetime.now(UTC) + timedelta(seconds=1)
        once = (await c.post("/jobs", json={"name": "once", "type": "http", "status": "paused",
                                            "schedule": f"@at {soon.isoformat()}",
                                            "payload": {"url": "https://example.com/"}})).json()
        await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
        shown = (await c.get(f"/jobs/{once['id']}")).json()
        assert (await c.put(f"/jobs/{once['id']}", json={**shown, "description": "ran"})).status_code == 200
        body = problem(await c.patch(f"/jobs/{once['id']}", json={"schedule": f"@at {past}"}), 422,
                       "invalid-job")
        assert set(pointers(body)) == {"/schedule"}


async def test_shell_jobs_stored_before_shell_was_turned_off(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path}/chronos.db"
    async with running(build_app(database_url=url, allow_shell=True, scheduler=False, worker=False)) as c:
        job = (await c.post("/jobs", json={"name": "tick", "type": "shell", "schedule": "* * * * * *",
                                           "payload": {"command": "true"}})).json()
        await c.post("/jobs", json={"name": "idle", "type": "shell", "status": "paused",
                                    "payload": {"command": "true"}})
    caplog.set_level(logging.WARNING, logger="chronos")
    async with running(build_app(database_url=url, allow_shell=False)) as c:
        warnings = [r.getMessage() for r in caplog.records if r.name == "chronos"]
        assert any("1 stored shell job(s) cannot run: tick;" in w and "CHRONOS_ALLOW_SHELL" in w
                   for w in warnings), warnings
        body = problem(await c.post(f"/jobs/{job['id']}/run"), 422, "invalid-job")
        assert "CHRONOS_ALLOW_SHELL" in pointers(body)["/type"]

        async def skipped() -> list[dict[str, Any]]:
            runs = (await c.get("/runs", params={"job_id": job["id"]})).json()["items"]
            return [r for r in runs if r["status"] == "skipped"]
        [first, *_] = await wait_for(skipped)
        assert "CHRONOS_ALLOW_SHELL" in first["error"]
        statuses = {r["status"] for r in (await c.get("/runs", params={"job_id": job["id"]})).json()["items"]}
        assert statuses == {"skipped"}  # none was dispatched to fail


async def test_failures_say_whether_they_are_retried(http_server: LocalHttpServer) -> None:
    http_server.respond("/gone", (404, "no such thing"))
    app = build_app(http_allow_hosts=["127.0.0.1"])
    async with running(app) as c:
        job = (await c.post("/jobs", json={"name": "gone", "type": "http", "retry": {"max_attempts": 3},
                                           "payload": {"url": f"{http_server.url}/gone"}})).json()
        run_id = (await c.post(f"/jobs/{job['id']}/run")).json()["id"]
        run = await wait_for(lambda: _finished(c, run_id))
        assert run["status"] == "failed" and run["exit_code"] == 404
        assert run["error"].endswith("not retried: HTTP 404 is permanent"), run["error"]
        await asyncio.sleep(0.2)
        assert len((await c.get(f"/jobs/{job['id']}/history")).json()["items"]) == 1
    async with running(build_app()) as c:  # no allowed hosts: the refusal names the setting
        job = (await c.post("/jobs", json={"name": "local", "type": "http", "retry": {"max_attempts": 2},
                                           "payload": {"url": f"{http_server.url}/"}})).json()
        run_id = (await c.post(f"/jobs/{job['id']}/run")).json()["id"]
        run = await wait_for(lambda: _finished(c, run_id))
        assert "CHRONOS_HTTP_ALLOW_HOSTS" in run["error"] and "not retried" in run["error"], run["error"]


async def _finished(c: httpx.AsyncClient, run_id: str) -> dict[str, Any] | None:
    run: dict[str, Any] = (await c.get(f"/runs/{run_id}")).json()
    return run if run["finished_at"] else None


async def test_status_aliases_and_problem_types(client: httpx.AsyncClient) -> None:
    job = (await client.post("/jobs", json={**HTTP_JOB, "status": "paused"})).json()
    url = f"/jobs/{job['id']}/status"
    for alias in ("restart", "resume"):
        got = (await client.patch(url, json={"status": alias})).json()
        assert got["status"] == "active" and got["next_run_at"] is not None
        await client.patch(url, json={"status": "paused"})
    body = problem(await client.patch(url, json={"status": "stopped"}), 422, "invalid-argument")
    assert set(pointers(body)) == {"/status"}
    problem(await client.get("/jobs", params={"status": "stopped"}), 422, "invalid-parameters")
    problem(await client.get(f"/jobs/{job['id']}/history", params={"status": "nope"}), 422,
            "invalid-parameters")
    problem(await client.get("/monitor/logs", params={"types": "run.nope"}), 422, "invalid-parameters")
    problem(await client.post("/jobs", json={"name": "x"}), 422, "invalid-job")
