"""``chronos serve`` with the API on a thread of its own (the default) and without it: both loops stop
on SIGINT as on SIGTERM, with an SSE stream open; ``CHRONOS_API_THREAD=false`` serves on one loop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.cli.test_serve import CHRONOS, Served, _env, _free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def _job_runs(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as c:
        job = c.post("/jobs", json={"name": "t", "type": "http", "payload": {"url": "http://127.0.0.1:9/"}})
        assert job.status_code == 201, job.text
        run = c.post(f"/jobs/{job.json()['id']}/run").json()
        deadline = time.monotonic() + 30
        while c.get(f"/runs/{run['id']}").json()["finished_at"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_api_thread_and_the_engines(tmp_path: Path, sig: signal.Signals) -> None:
    served = Served(tmp_path)
    try:
        _job_runs(served.base)
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sse:
            sse.sendall(b"GET /monitor/logs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sse.recv(4096).startswith(b"HTTP/1.1 200")
            served.proc.send_signal(sig)
            rest = b""
            while chunk := sse.recv(4096):
                rest += chunk
            _, err = served.proc.communicate(timeout=60)
        console = err.decode()
        assert served.proc.returncode == 0, console
        assert rest.endswith(b"0\r\n\r\n")  # the SSE stream was ended, not cut
        assert "on a thread of its own" in console and "ERROR" not in console
        assert "Traceback" not in console
        assert console.index("Application shutdown complete") < console.index("stopping: no more claims")
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.communicate()


def test_with_the_api_thread_off_serve_runs_on_one_loop(tmp_path: Path) -> None:
    served = Served(tmp_path, CHRONOS_API_THREAD="false")
    try:
        _job_runs(served.base)
        code, console = served.terminate()
        assert code == 0, console
        assert "chronos API ready" in console and "on a thread of its own" not in console
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.communicate()


def test_an_api_that_fails_to_start_stops_the_engines_and_serve_exits_non_zero(tmp_path: Path) -> None:
    """The engines start, the API thread's start-up fails (its store cannot open): serve stops the engines
    and exits 3 with a message that says so; nothing hangs."""
    env = _env(CHRONOS_PLUGINS="tests.cli.plugin_api_store_fails",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([CHRONOS, "serve", "--port", str(_free_port())], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "the API stopped on its own (its start-up failed); stopping the engines" in done.stderr
    assert "the API's store cannot open (test plugin)" in done.stderr
    assert "stopping: no more claims" in done.stderr
