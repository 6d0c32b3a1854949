"""The dashboard in real headless Chromium (Debian's /usr/bin/chromium, driven by Python Playwright; no
browser is ever downloaded) against a real ``chronos serve`` process on a SQLite file.

One server and one browser per module (starting them is most of the cost); each test gets a fresh browser
context (its own sessionStorage). The server has tokens configured: ``ADMIN`` may write, ``VIEWER`` is
read-only. Screenshots go to ``$CHRONOS_SCREENSHOTS`` (default ``build/ui-screenshots``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import backend_missing

CHROMIUM = "/usr/bin/chromium"
ADMIN = "ui-admin-token-0123456789"
VIEWER = "ui-viewer-token-0123456789"
SCREENSHOTS = Path(os.environ.get("CHRONOS_SCREENSHOTS", "build/ui-screenshots"))
TIMEOUT_MS = 20_000  # generous: a busy 2-core machine
expect.set_options(timeout=TIMEOUT_MS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """A ``chronos serve`` process; ``restart()`` stops it and starts it again on the same port and file."""

    url: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chronos_app.cli", "serve", "--host", "127.0.0.1", "--port",
                 str(self.port)], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chronos serve exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"chronos serve did not become ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, token: str = ADMIN) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def start_server(tmp: Path, **env: str) -> Server:
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")}
    environ.update({"CHRONOS_DATABASE_URL": f"sqlite:///{tmp}/chronos.db", "CHRONOS_ALLOW_SHELL": "true",
                    "CHRONOS_API_TOKENS": ADMIN, "CHRONOS_READONLY_TOKENS": VIEWER,
                    "CHRONOS_SSE_PING": "1", "CHRONOS_SHUTDOWN_GRACE": "1", "CHRONOS_PROCESS_TUNING": "false",
                    "CHRONOS_LOG_LEVEL": "warning", **env})
    server = Server(url=f"http://127.0.0.1:{port}", port=port, env=environ, log=tmp / "serve.log")
    server.start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("ui-server"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        backend_missing(f"{CHROMIUM} (Debian's chromium; `make test` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def new_page(browser: Any, server: Server, token: str | None = ADMIN, *,
             width: int = 1280, height: int = 800) -> Any:
    """A page in a fresh context, signed in with ``token`` (None: not signed in)."""
    context = browser.new_context(viewport={"width": width, "height": height}, base_url=server.url)
    context.set_default_timeout(TIMEOUT_MS)
    if token is not None:
        context.add_init_script(f"if (location.origin === {server.url!r}) "
                                f"sessionStorage.setItem('chronos.token', {token!r})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    return page


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    p = new_page(browser, server)
    try:
        yield p
        assert p.js_errors == [], p.js_errors  # no uncaught error in the page's scripts
    finally:
        p.context.close()


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
