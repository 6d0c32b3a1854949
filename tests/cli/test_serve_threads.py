"""``chronos serve`` with the API on a thread of its own (the default) and without it: both loops stop
on SIGINT as on SIGTERM, with an SSE stream open; ``CHRONOS_API_THREAD=false`` serves on one loop."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.cli.test_serve import Served

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
