"""Issue #11 against a real ``chronos serve`` process, configured as the README says (SQLite file in the
working directory, ``CHRONOS_ALLOW_SHELL=true``, ``CHRONOS_HTTP_ALLOW_HOSTS=127.0.0.1``): slow and
numerous clients (finding 8), DNS rebinding and cross-origin writes with auth off (9), the access log
and the public paths (10), the shell environment and the SQLite store (1, 3). Ends with the README
walk-through, which must still work."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.test_serve import CHRONOS, _env, _free_port

pytestmark = pytest.mark.e2e

README = {"CHRONOS_ALLOW_SHELL": "true", "CHRONOS_HTTP_ALLOW_HOSTS": "127.0.0.1"}
TOKEN = "full-access-token-7f3a9c"


class Server:
    """``chronos serve`` on a free port, its stderr in a file (a flood must not block it on a pipe)."""

    def __init__(self, cwd: Path, nofile: int | None = None, **env: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}.log"
        self._out = self.log.open("wb")

        def limits() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([CHRONOS, "serve", "--port", str(self.port)], cwd=cwd,
                                     env=_env(**env), stdout=self._out, stderr=self._out,
                                     preexec_fn=limits)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/jobs/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "chronos serve did not become healthy"
            time.sleep(0.1)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.log.read_text(errors="replace")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[Server] = []

    def start(nofile: int | None = None, **env: str) -> Server:
        server = Server(tmp_path, nofile, **{**README, **env})
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


def _finished(c: httpx.Client, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        run: dict[str, Any] = c.get(f"/runs/{run_id}").json()
        if run["status"] not in ("queued", "running"):
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def _run_job(c: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    r = c.post("/jobs", json=spec)
    assert r.status_code == 201, r.text
    return _finished(c, c.post(f"/jobs/{r.json()['id']}/run").json()["id"])


# ------------------------------------------------------------------- finding 8: slow and many clients

def test_a_client_that_never_finishes_its_headers_is_disconnected(serve: Any) -> None:
    server = serve(CHRONOS_HEADER_TIMEOUT="1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /jobs/health HTTP/1.1\r\n")
        deadline = time.monotonic() + 20
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                s.sendall(b"X-Slow: 1\r\n")  # one header line at a time, never the blank line
                s.settimeout(0.5)
                closed = s.recv(1024) == b""
            except TimeoutError:
                continue
            except OSError:  # reset by the server
                closed = True
    assert closed, "the server kept a connection whose headers never ended"
    assert httpx.get(f"{server.base}/jobs/health", timeout=5).status_code == 200


def test_past_the_connection_limit_requests_get_503(serve: Any) -> None:
    server = serve(CHRONOS_MAX_CONNECTIONS="4", CHRONOS_HEADER_TIMEOUT="60")
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.5)  # the server has accepted them
        assert httpx.get(f"{server.base}/jobs/health", timeout=10).status_code == 503
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 20
    while httpx.get(f"{server.base}/jobs/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_running_out_of_file_descriptors_does_not_flood_the_log(serve: Any) -> None:
    server = serve(nofile=80)
    socks = []
    for _ in range(150):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", server.port))
            s.sendall(b"GET /jobs/health HTTP/1.1\r\n")
        except OSError:
            s.close()
            break
        socks.append(s)
    time.sleep(5)
    size = server.log.stat().st_size
    for s in socks:
        s.close()
    assert size < 200_000, f"{size} bytes of log in 5 s"  # unfiltered: megabytes per second
    deadline = time.monotonic() + 30
    while True:  # and it serves again once the clients are gone
        try:
            if httpx.get(f"{server.base}/jobs/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.2)


# ------------------------------------------------------------------- finding 9: auth off, Host/Origin

def test_with_auth_off_a_foreign_host_name_is_refused(serve: Any) -> None:
    server = serve()
    with httpx.Client(base_url=server.base, timeout=10) as c:
        attack = {"name": "rebound", "type": "shell", "payload": {"command": "id"}}
        r = c.post("/jobs", json=attack, headers={"Host": "attacker.example",
                                                   "Origin": "http://attacker.example"})
        assert r.status_code == 421, r.text
        assert c.get("/jobs", headers={"Host": "attacker.example:8080"}).status_code == 421
        assert c.get("/jobs").json()["items"] == []
        for host in ("localhost", f"localhost:{server.port}", "127.0.0.1", "[::1]:80", "app.localhost"):
            assert c.get("/jobs", headers={"Host": host}).status_code == 200, host


def test_with_auth_off_cross_origin_writes_are_refused(serve: Any) -> None:
    server = serve()
    with httpx.Client(base_url=server.base, timeout=10) as c:
        job = c.post("/jobs", json={"name": "j", "type": "shell", "payload": {"command": "true"}}).json()
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Origin": "http://localhost:1"}, {"Sec-Fetch-Site": "cross-site"}):
            r = c.post(f"/jobs/{job['id']}/run", headers=headers)
            assert r.status_code == 403, headers
        assert c.get(f"/jobs/{job['id']}/history").json()["items"] == []
        same = {"Origin": server.base}
        assert c.post(f"/jobs/{job['id']}/run", headers=same).status_code == 202  # the same origin may
        assert c.get("/jobs", headers={"Origin": "http://evil.example"}).status_code == 200  # reads: CORS


# -------------------------------------------------------------- finding 10: public paths, access log

def test_public_paths_are_public_for_reads_only(serve: Any) -> None:
    server = serve(CHRONOS_API_TOKENS=TOKEN)
    with httpx.Client(base_url=server.base, timeout=10) as c:
        for path in ("/jobs/health", "/monitor/health", "/openapi.json"):
            assert c.get(path).status_code == 200
        for method, path in (("PUT", "/jobs/health"), ("POST", "/openapi.json"), ("DELETE", "/ready")):
            assert c.request(method, path, content=b"x" * 1_000_000).status_code == 401, (method, path)
        # with a token the request reaches the router (PUT /jobs/{id} wants JSON)
        assert c.put("/jobs/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 415


def test_an_encoded_query_token_is_not_logged(serve: Any) -> None:
    server = serve(CHRONOS_API_TOKENS=TOKEN, CHRONOS_SHUTDOWN_GRACE="1")
    with httpx.Client(base_url=server.base, timeout=10) as c:
        for name in ("%74oken", "token", "to%6Ben"):
            r = c.get(f"/monitor/runs/0000?{name}={TOKEN}")
            assert r.status_code == 404, (name, r.status_code)  # authenticated; no such run
        assert c.get(f"/monitor/runs/0000?TOKEN={TOKEN}").status_code == 401
        assert c.get(f"/jobs?api_key={TOKEN}x&name=tokenizer").status_code == 401
    log = server.stop()
    assert "/monitor/runs/0000?%74oken=***" in log
    assert TOKEN not in log and "name=tokenizer" in log


# --------------------------------------------------------------- findings 1 and 3 as the README runs it

def test_shell_jobs_see_no_service_secret(serve: Any) -> None:
    server = serve(CHRONOS_API_TOKENS=TOKEN, SMTP_PASS="smtp-pass-4711",
                   CHRONOS_SQL_CONNECTIONS=json.dumps({"main": "mysql+pymysql://u:sql-pw-4711@db/x"}),
                   CHRONOS_SHELL_PASS_ENV="CHRONOS_API_TOKENS")  # an operator's mistake, still masked
    with httpx.Client(base_url=server.base, timeout=10,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        run = _run_job(c, {"name": "env", "type": "shell", "payload": {"command": "env; echo $SMTP_PASS"}})
    assert run["status"] == "succeeded"
    for secret in (TOKEN, "smtp-pass-4711", "sql-pw-4711"):
        assert secret not in json.dumps(run)
    assert "CHRONOS_API_TOKENS=***" in run["output"]


def test_a_sql_job_cannot_read_the_store_next_to_it(serve: Any, tmp_path: Path) -> None:
    server = serve(CHRONOS_SQL_CONNECTIONS=json.dumps({"work": "sqlite:///work.db"}))
    with httpx.Client(base_url=server.base, timeout=10) as c:
        c.post("/jobs", json={"name": "victim", "type": "http", "payload": {
            "url": "https://example.com/", "headers": {"Authorization": "Bearer victim-secret-4711"}}})
        attach = _run_job(c, {"name": "attach", "type": "sql", "payload": {
            "connection": "work", "statement": "ATTACH DATABASE 'chronos.db' AS c"}})
        read = _run_job(c, {"name": "read", "type": "sql", "payload": {
            "connection": "work", "statement": "SELECT name, payload FROM c.jobs"}})
    assert attach["status"] == "failed" and "not authorized" in attach["error"]
    assert read["status"] == "failed" and "victim-secret" not in json.dumps(read)
    assert (tmp_path / "chronos.db").exists()


def test_text_from_a_job_cannot_forge_a_line_of_the_server_log(serve: Any) -> None:
    # the run's error (here SQLite's, quoting the statement) goes into the worker's INFO line
    forged = "2026-12-02 00:59:59,000 INFO chronos.api: admin logged in from 10.0.0.1"
    server = serve(CHRONOS_SQL_CONNECTIONS=json.dumps({"work": "sqlite:///work.db"}))
    with httpx.Client(base_url=server.base, timeout=10) as c:
        run = _run_job(c, {"name": "forger", "type": "sql", "payload": {
            "connection": "work", "statement": f'SELECT * FROM "x\n{forged}\r\u2028"'}})
    assert run["status"] == "failed"
    log = server.stop()
    [line] = [line for line in log.splitlines() if "job forger:" in line]
    assert "\\n" + forged in line and "\\u2028" in line  # escaped, on the worker's own line
    assert not any(line.startswith(forged) for line in log.splitlines())


# ----------------------------------------------------------------------- the README walk-through

def test_the_readme_walk_through_still_works(serve: Any) -> None:
    server = serve()
    api = server.base
    with httpx.Client(base_url=api, timeout=10) as c:
        greet = c.post("/jobs", json={
            "name": "greet", "type": "shell", "schedule": "*/10 * * * * *", "timezone": "Europe/Berlin",
            "payload": {"command": "echo hello; sleep 1; echo bye"},
            "retry": {"strategy": "exponential", "max_attempts": 3, "delay": 2}})
        assert greet.status_code == 201, greet.text
        ping_spec = {"name": "ping", "type": "http", "payload": {
            "url": f"{api}/jobs/health", "headers": {"Authorization": "Bearer xyz"}}}
        ping = c.post("/jobs", json=ping_spec, headers={"Idempotency-Key": "create-ping-1"})
        assert ping.status_code == 201, ping.text
        assert ping.json()["payload"]["headers"] == {"Authorization": "***"}
        again = c.post("/jobs", json=ping_spec, headers={"Idempotency-Key": "create-ping-1"})
        assert again.status_code == 201 and again.json()["id"] == ping.json()["id"]
        job = c.get("/jobs", params={"name": "greet"}).json()["items"][0]["id"]
        assert c.patch(f"/jobs/{job}/status", json={"status": "paused"}).json()["status"] == "paused"
        run = c.post(f"/jobs/{job}/run")
        assert run.status_code == 202
        finished = _finished(c, run.json()["id"])
        assert finished["status"] == "succeeded" and finished["output"] == "hello\nbye"
        pinged = _finished(c, c.post(f"/jobs/{ping.json()['id']}/run").json()["id"])
        assert pinged["status"] == "succeeded" and pinged["exit_code"] == 200, pinged
        assert c.get(f"/jobs/{job}/history", params={"limit": 5}).json()["items"]
        assert c.delete(f"/jobs/{job}/history").status_code == 200
        preview = c.get("/schedules/preview", params={"schedule": "0 9 * * mon-fri",
                                                      "timezone": "America/New_York", "count": 3})
        assert preview.status_code == 200 and len(preview.json()["times"]) == 3
        bad = c.post("/jobs", json={"name": "x", "type": "shell", "schedule": "61 * * * *",
                                    "payload": {"command": "true"}})
        assert bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/schedule"
        with c.stream("GET", f"/monitor/logs/{job}") as stream:
            assert stream.status_code == 200
    assert os.path.exists(server.log)
