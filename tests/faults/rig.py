"""The fault suite's rig (issue #12): real processes on a private MariaDB and a private Tansu broker, so
that a test may kill either without touching what other tests share.

* ``MariaDb``: a ``mariadbd`` of our own (``mariadb-install-db`` into a temporary data directory, its own
  port); ``kill9()`` / ``start()`` again on the same port and data.
* Tansu: a broker of our own, with a ``tansu proxy`` in front of it that every chronos process talks to
  (kill -9 of the proxy = a broker outage with its data kept; kill -9 of the broker and a new one on its
  port = a broker restarted without its data).
* ``Target``: a local HTTP server the jobs call; it logs every request's ``X-Chronos-Run-Id`` and
  ``X-Chronos-Attempt`` with the time it arrived, so executions are counted where they happen.
* ``Stack``: ``chronos api`` / ``scheduler`` / ``worker`` processes by name, killed, stopped, continued
  and started again.

Each test appends its measurements to ``RESULTS``; ``conftest.py`` prints them at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.conftest import backend_missing
from tests.fixtures.kafka import TansuProcess, free_port, wait_accepting

CHRONOS = str(Path(sys.executable).with_name("chronos"))
SEED_VARS = ("DB_HOST", "DB_USER", "DB_PASSWORD", "DB_NAME", "KAFKA_BROKER", "SMTP_HOST", "SMTP_PORT",
             "SMTP_USER", "SMTP_PASS")
RESULTS: list[dict[str, Any]] = []


# ------------------------------------------------------------------------------------------- MariaDB


class MariaDb:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if installer is None or shutil.which("mariadbd") is None:
            backend_missing("mariadbd and mariadb-install-db (a private MariaDB for the fault suite)")
        assert installer is not None
        subprocess.run([installer, "--no-defaults", f"--datadir={self.data}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=180)

    def start(self, timeout: float = 120) -> None:
        mariadbd = shutil.which("mariadbd")
        assert mariadbd is not None
        with (self.root / "mariadbd.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [mariadbd, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
                 "--bind-address=127.0.0.1", f"--socket={self.root / 'sock'}",
                 f"--pid-file={self.root / 'pid'}", "--user=root", "--skip-log-bin", "--skip-name-resolve",
                 "--innodb-buffer-pool-size=128M", "--innodb-flush-log-at-trx-commit=2",
                 "--max-connections=400", f"--log-error={self.root / 'error.log'}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.answers():
            assert self.proc.poll() is None, (self.root / "error.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the private mariadbd did not start"
            time.sleep(0.1)

    def answers(self) -> bool:
        import pymysql

        try:
            pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                            connect_timeout=2).close()
            return True
        except pymysql.Error:
            return False

    def sql(self, statement: str) -> None:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def kill9(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait(30)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)

    def url(self, database: str) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}"


# --------------------------------------------------------------------------------------------- Tansu


def kill9(tansu: TansuProcess) -> None:
    proc, tansu.proc = tansu.proc, None
    if proc is not None:
        proc.kill()
        proc.wait(30)


@dataclass
class Kafka:
    broker: TansuProcess
    proxy: TansuProcess

    def restart_broker_empty(self) -> None:
        """kill -9 of the broker, and a new one on its port: everything it held is gone. The proxy is
        started again too (this Tansu proxy does not connect again to an origin that went away)."""
        kill9(self.broker)
        kill9(self.proxy)
        self.broker.start()
        self.proxy.start()


# ---------------------------------------------------------------------------------------- the target


@dataclass
class Hit:
    at: datetime
    run_id: str
    attempt: int
    path: str


@dataclass
class Target:
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def snapshot(self) -> list[Hit]:
        with self.lock:
            return list(self.hits)


def start_target() -> tuple[Target, Callable[[], None]]:
    """The target, serving; and the function that stops it."""
    t = Target()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            hit = Hit(datetime.now(UTC), self.headers.get("X-Chronos-Run-Id", ""),
                      int(self.headers.get("X-Chronos-Attempt") or 0), parts.path)
            with t.lock:
                t.hits.append(hit)
            if parts.path == "/slow":
                time.sleep(float(parse_qs(parts.query)["s"][0]))
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    t.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
    return t, stop


# --------------------------------------------------------------------------------------- the processes


class Stack:
    """chronos processes by name, sharing the private database and the broker (through the proxy)."""

    def __init__(self, database_url: str, bootstrap: str, tmp: Path, **env: str) -> None:
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("CHRONOS_") and k not in SEED_VARS}
        self.env.update(CHRONOS_DATABASE_URL=database_url, CHRONOS_KAFKA_BOOTSTRAP=bootstrap,
                        CHRONOS_KAFKA_RUNS_PARTITIONS="4", CHRONOS_LOG_LEVEL="info", **env)
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started = 0
        subprocess.run([CHRONOS, "migrate"], env=self.env, check=True, capture_output=True, timeout=180)

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        if args[0] == "worker":
            env["CHRONOS_WORKER_NAME"] = name
        self.started += 1
        with (self.tmp / f"{name}-{self.started}.log").open("wb") as log:
            proc = subprocess.Popen([CHRONOS, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.tmp)
        self.procs[name] = proc
        return proc

    def api(self, name: str = "api") -> str:
        port = free_port()
        proc = self.spawn(name, "api", "--port", str(port))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"chronos api exited:\n{self.logs(name)}"
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    return base
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("chronos api did not become ready")

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(30)

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def logs(self, name: str) -> str:
        files = sorted(self.tmp.glob(f"{name}-*.log"), key=lambda p: p.stat().st_mtime)
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-4000:]}" for f in files)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def wait_accepting_or_fail(host: str, port: int) -> None:
    assert wait_accepting(host, port, 60), f"{host}:{port} does not accept connections"
