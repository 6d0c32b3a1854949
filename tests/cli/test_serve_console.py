"""What a real ``chronos serve`` says on its console and when it cannot start: a taken port stops it
before any engine starts; at INFO a line per finished run and, at shutdown, the runs it waits for; no
migration chatter."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.test_serve import CHRONOS, Served, _env

pytestmark = pytest.mark.e2e


def test_a_taken_port_stops_serve_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([CHRONOS, "serve", "--port", str(port)], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "already in use" in done.stderr
    assert "chronos API ready" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "chronos.db").exists()  # the store was never opened: no engine ran


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    served = Served(tmp_path, CHRONOS_ALLOW_SHELL="true", CHRONOS_SHUTDOWN_GRACE="1")
    yield served
    if served.proc.poll() is None:
        served.proc.kill()
        served.proc.communicate()


def test_the_console_tells_what_runs_did_and_what_shutdown_waits_for(server: Served) -> None:
    with httpx.Client(base_url=server.base, timeout=10) as c:
        quick = c.post("/jobs", json={"name": "quick", "type": "shell", "payload": {"command": "exit 2"}})
        slow = c.post("/jobs", json={"name": "slow", "type": "shell", "payload": {"command": "sleep 30"}})
        done = c.post(f"/jobs/{quick.json()['id']}/run").json()
        deadline = time.monotonic() + 30
        while c.get(f"/runs/{done['id']}").json()["finished_at"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        long = c.post(f"/jobs/{slow.json()['id']}/run").json()
        while c.get(f"/runs/{long['id']}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    server.proc.send_signal(signal.SIGTERM)
    _, err = server.proc.communicate(timeout=60)
    console = err.decode()
    assert server.proc.returncode == 0, console
    assert f"INFO chronos.worker: job quick: run {done['id']} failed in " in console
    assert ": exit code 2" in console
    assert f"shutting down: waiting up to 1s for 1 running run(s): slow (run {long['id']})" in console
    assert f"job slow: run {long['id']} cancelled in " in console
    assert "alembic" not in console.lower()
