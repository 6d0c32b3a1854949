"""Issue #12 item 13: ``chronos worker`` / ``scheduler`` / ``api`` / ``serve`` started while the database
(or the broker) cannot be reached wait for it with a readable log line, instead of exiting with a
traceback, and start once it answers; SIGTERM while waiting stops them cleanly. Real processes; the
database appears later through a TCP forwarder to the real MariaDB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.fixtures.kafka import free_port
from tests.fixtures.tcpproxy import TcpForwarder

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CHRONOS = str(Path(sys.executable).with_name("chronos"))
SEED_VARS = ("DB_HOST", "DB_USER", "DB_PASSWORD", "DB_NAME", "KAFKA_BROKER", "SMTP_HOST", "SMTP_PORT",
             "SMTP_USER", "SMTP_PASS")


class Proc:
    def __init__(self, tmp: Path, args: list[str], **env: str) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_") and k not in SEED_VARS}
        self.log = tmp / f"{args[0]}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([CHRONOS, *args], cwd=tmp, env={**base, **env}, stdout=out,
                                         stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while what not in self.text():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {what!r} in:\n{self.text()}"
            time.sleep(0.1)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(*args: str, **env: str) -> Proc:
        procs.append(Proc(tmp_path, list(args), **env))
        return procs[-1]
    yield start
    for p in procs:
        p.kill()


@pytest.fixture
def late_database(fresh_mysql_url: str) -> Iterator[tuple[str, TcpForwarder]]:
    """A database URL whose server is not reachable until the forwarder is started."""
    url = make_url(fresh_mysql_url)
    forwarder = TcpForwarder((url.host or "127.0.0.1", url.port or 3306))
    yield url.set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False), forwarder
    forwarder.stop()


WAITING = "cannot start yet: the store is unreachable"


@pytest.mark.mysql
def test_a_worker_started_before_its_database_waits_and_starts_when_it_answers(
        spawn: Callable[..., Proc], late_database: tuple[str, TcpForwarder]) -> None:
    url, forwarder = late_database
    worker = spawn("worker", CHRONOS_DATABASE_URL=url)
    worker.wait_for(WAITING)
    assert "Traceback" not in worker.text()
    time.sleep(2)
    assert worker.proc.poll() is None  # still waiting, not exited
    forwarder.start()  # the database is up
    worker.wait_for("chronos running (scheduler: False, worker: True)")
    assert worker.terminate() == 0
    assert "Traceback" not in worker.text()


@pytest.mark.mysql
def test_serve_started_before_its_database_becomes_ready_when_it_answers(
        spawn: Callable[..., Proc], late_database: tuple[str, TcpForwarder]) -> None:
    url, forwarder = late_database
    port = free_port()
    served = spawn("serve", "--port", str(port), CHRONOS_DATABASE_URL=url)
    served.wait_for(WAITING)
    forwarder.start()
    deadline = time.monotonic() + 90
    while True:
        assert served.proc.poll() is None, served.text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, served.text()
        time.sleep(0.2)
    job = httpx.post(f"http://127.0.0.1:{port}/jobs", json={"name": "after-wait", "type": "http", "payload": {
        "url": "http://example.invalid/"}}, timeout=30)
    assert job.status_code == 201, job.text
    assert served.terminate() == 0


def test_sigterm_while_waiting_for_the_broker_stops_cleanly(
        spawn: Callable[..., Proc], tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there
    scheduler = spawn("scheduler", CHRONOS_DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}",
                      CHRONOS_KAFKA_BOOTSTRAP=f"127.0.0.1:{dead}")
    scheduler.wait_for("cannot start yet: the dispatch queue is unreachable")
    assert scheduler.proc.poll() is None
    assert scheduler.terminate() == 0
    assert "stopping before start-up completed" in scheduler.text()
    assert "Traceback" not in scheduler.text()
