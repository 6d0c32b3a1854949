"""``chronos serve`` for real: a subprocess on a free port with the default SQLite file, graceful SIGTERM
(running attempts cancelled and recorded), restart with the same file; the bind guard; ``migrate``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

CHRONOS = str(Path(sys.executable).with_name("chronos"))
SEED_VARS = ("DB_HOST", "DB_USER", "DB_PASSWORD", "DB_NAME", "KAFKA_BROKER", "SMTP_HOST", "SMTP_PORT",
             "SMTP_USER", "SMTP_PASS")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_") and k not in SEED_VARS}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(proc: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1].decode()
        try:
            if httpx.get(f"{base}/jobs/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("chronos serve did not become healthy")


class Served:
    def __init__(self, cwd: Path, **env: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([CHRONOS, "serve", "--port", str(self.port)], cwd=cwd,
                                     env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_healthy(self.proc, self.base)

    def terminate(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err.decode()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.communicate()


def test_serve_starts_stops_gracefully_and_keeps_its_sqlite_file(tmp_path: Path, served: list[Served]
                                                                 ) -> None:
    env = {"CHRONOS_ALLOW_SHELL": "true", "CHRONOS_SHUTDOWN_GRACE": "1"}
    first = Served(tmp_path, **env)
    served.append(first)
    with httpx.Client(base_url=first.base, timeout=10) as c:
        run = _start_long_run(c)
    # an SSE client stays connected through the shutdown: its stream is ended cleanly
    with socket.create_connection(("127.0.0.1", first.port), timeout=30) as sse:
        sse.sendall(b"GET /monitor/logs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sse.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        code, err = first.terminate()
        rest = b""
        while chunk := sse.recv(4096):
            rest += chunk
    assert code == 0, err
    assert "interpreter tuned" in err  # CHRONOS_PROCESS_TUNING is on by default
    assert time.monotonic() - started < 30  # the grace (1s) plus the process group kill, not the sleep
    assert "ERROR" not in err, err
    assert rest.endswith(b"0\r\n\r\n")  # the chunked stream was terminated properly
    assert (tmp_path / "chronos.db").exists()

    second = Served(tmp_path, **env)
    served.append(second)
    with httpx.Client(base_url=second.base, timeout=10) as c:
        assert [j["name"] for j in c.get("/jobs").json()["items"]] == ["long"]
        recorded = c.get(f"/runs/{run['id']}").json()
    assert recorded["status"] == "cancelled" and "shut down" in (recorded["error"] or "")
    code, err = second.terminate()
    assert code == 0, err


def _start_long_run(c: httpx.Client) -> dict:
    assert c.get("/ready").json() == {"status": "ok", "store": "ok"}
    job = c.post("/jobs", json={"name": "long", "type": "shell", "payload": {"command": "sleep 60"}}).json()
    run = c.post(f"/jobs/{job['id']}/run").json()
    deadline = time.monotonic() + 30
    while c.get(f"/runs/{run['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return run


def test_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    port = str(_free_port())
    r = subprocess.run([CHRONOS, "serve", "--host", "0.0.0.0", "--port", port], cwd=tmp_path, env=_env(),
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and b"CHRONOS_API_TOKENS" in r.stderr
    assert not (tmp_path / "chronos.db").exists()


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    r = subprocess.run([CHRONOS, "migrate"], cwd=tmp_path, env=_env(CHRONOS_DATABASE_URL=url),
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "m.db").stat().st_size > 0
    r = subprocess.run([CHRONOS, "migrate"], cwd=tmp_path, env=_env(CHRONOS_DATABASE_URL="memory"),
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and b"nothing to migrate" in r.stderr


def _run_role(tmp_path: Path, role: str, **env: str) -> tuple[bytes, bytes]:
    """Start ``chronos <role>`` on a SQLite file, wait until it runs, stop it with SIGTERM; its stderr up
    to "chronos running" and after it (the exit status must be 0)."""
    proc = subprocess.Popen([CHRONOS, role], cwd=tmp_path, stderr=subprocess.PIPE,
                            env=_env(CHRONOS_DATABASE_URL=f"sqlite:///{tmp_path}/c.db", **env))
    try:
        assert proc.stderr is not None
        seen = b""
        while b"chronos running" not in seen:
            line = proc.stderr.readline()
            assert line, seen.decode()
            seen += line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        return seen, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_process_tuning_can_be_switched_off(tmp_path: Path) -> None:
    seen, err = _run_role(tmp_path, "worker", CHRONOS_PROCESS_TUNING="false")
    assert b"chronos running" in seen and b"interpreter tuned" not in seen + err


@pytest.mark.parametrize("role", ["scheduler", "worker"])
def test_headless_roles_start_and_stop_on_sigterm(tmp_path: Path, role: str) -> None:
    seen, _ = _run_role(tmp_path, role)
    assert f"{role}: True".encode() in seen
    assert b"interpreter tuned" in seen and b"gc thresholds (7000," in seen
    assert b"switch interval 0.0005 s" in seen
