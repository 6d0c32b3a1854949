"""Jobs as code for real: ``chronos serve --jobs FILE`` and ``chronos apply -f FILE`` (YAML and TOML,
``${VAR}`` from the environment) against a real server process; readable errors, non-zero exits."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .test_serve import CHRONOS, _env, _free_port, _wait_healthy

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "apply-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

JOBS_TOML = '''
[[jobs]]
name = "ping"
type = "http"
schedule = "@every 1h"
[jobs.payload]
url = "https://example.com/ping"
headers = { Authorization = "Bearer ${PING_TOKEN}" }

[[jobs]]
name = "greet"
type = "python"
[jobs.payload]
function = "tests.executors.pyjobs:greet"
kwargs = { name = "toml" }
'''


class Server:
    def __init__(self, cwd: Path, *args: str, **env: str) -> None:
        port = _free_port()
        self.cwd = cwd
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [CHRONOS, "serve", "--port", str(port), *args], cwd=cwd, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=_env(CHRONOS_API_TOKENS=TOKEN, PYTHONPATH=str(ROOT),
                                             CHRONOS_PYTHON_MODULES="tests.executors.pyjobs", **env))
        _wait_healthy(self.proc, self.base)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("apply")
    (cwd / "jobs.toml").write_text(JOBS_TOML)
    server = Server(cwd, "--jobs", "jobs.toml", PING_TOKEN="secret-from-env-42")
    yield server
    server.proc.terminate()
    server.proc.communicate(timeout=60)


def chronos(cwd: Path, *args: str, code: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([CHRONOS, *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                       env=_env(CHRONOS_TOKEN=TOKEN, **env))
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


def _jobs(server: Server) -> dict[str, dict[str, object]]:
    items = httpx.get(f"{server.base}/jobs", headers=AUTH, timeout=10).json()["items"]
    return {j["name"]: j for j in items}


def test_serve_applies_its_jobs_file_with_secrets_from_the_environment(server: Server) -> None:
    jobs = _jobs(server)
    assert {"ping", "greet"} <= set(jobs)
    assert jobs["ping"]["payload"]["headers"] == {"Authorization": "***"}  # shown masked...
    with sqlite3.connect(server.cwd / "chronos.db") as db:  # ...stored as the environment gave it
        [(payload,)] = db.execute("SELECT payload FROM jobs WHERE name = 'ping'").fetchall()
    assert json.loads(payload)["headers"] == {"Authorization": "Bearer secret-from-env-42"}
    run = httpx.post(f"{server.base}/jobs/{jobs['greet']['id']}/run", headers=AUTH, timeout=10).json()
    deadline = time.monotonic() + 60
    while (got := httpx.get(f"{server.base}/runs/{run['id']}", headers=AUTH, timeout=10).json())[
            "status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert got["status"] == "succeeded" and got["output"] == "hello toml" and got["result"] == "hello toml"


def test_apply_creates_then_changes_nothing_then_prunes(server: Server, tmp_path: Path) -> None:
    (tmp_path / "set.yaml").write_text(
        '- {name: set-a, type: http, schedule: "@daily", payload: {url: "https://example.com/a"}}\n'
        '- {name: set-b, type: http, payload: {url: "https://example.com/${B_PATH}"}}\n')
    url = {"CHRONOS_URL": server.base}
    first = chronos(tmp_path, "apply", "-f", "set.yaml", B_PATH="b", **url).stdout
    assert "created set-a" in first and "created set-b" in first and "2 created, 0 updated" in first
    again = chronos(tmp_path, "apply", "-f", "set.yaml", B_PATH="b", **url).stdout
    assert again.strip().splitlines()[-1] == "0 created, 0 updated, 2 unchanged, 0 deleted"
    changed = chronos(tmp_path, "apply", "-f", "set.yaml", "-o", "json", B_PATH="c", **url).stdout
    assert '"updated": [\n    "set-b"\n  ]' in changed or '"updated": ["set-b"]' in changed
    assert _jobs(server)["set-b"]["payload"]["url"] == "https://example.com/c"
    dry = chronos(tmp_path, "apply", "-f", "set.yaml", "--prune", "--dry-run", B_PATH="c", **url).stdout
    assert "would be deleted ping" in dry and "would be deleted greet" in dry
    assert {"ping", "greet"} <= set(_jobs(server))  # a dry run
    chronos(tmp_path, "apply", "-f", "set.yaml", "--prune", B_PATH="c", **url)
    assert set(_jobs(server)) == {"set-a", "set-b"}


def test_apply_errors_are_readable(server: Server, tmp_path: Path) -> None:
    url = {"CHRONOS_URL": server.base}
    (tmp_path / "env.yaml").write_text('- {name: e, type: http, payload: {url: "https://x.example/${NOPE}"}}\n')
    r = chronos(tmp_path, "apply", "-f", "env.yaml", code=2, **url)
    assert "NOPE is not set" in r.stderr
    (tmp_path / "bad.toml").write_text('[[jobs]]\nname = "ok"\ntype = "http"\npayload = {url = '
                                       '"https://x.example"}\n[[jobs]]\nname = "bad"\ntype = "http"\n'
                                       'schedule = "every day"\npayload = {url = "https://x.example"}\n')
    r = chronos(tmp_path, "apply", "-f", "bad.toml", code=4, **url)
    assert "/jobs/1/schedule" in r.stderr
    (tmp_path / "evil.yaml").write_text('- {name: evil, type: python, payload: {function: "os:system", '
                                        'args: ["id"]}}\n')
    r = chronos(tmp_path, "apply", "-f", "evil.yaml", code=4, **url)
    assert "CHRONOS_PYTHON_MODULES" in r.stderr and "ok" not in _jobs(server)


def test_serve_refuses_a_bad_jobs_file_before_it_listens(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text('- {name: x, type: http, schedule: "nope", payload: {url: '
                                        '"https://x.example"}}\n')
    r = subprocess.run([CHRONOS, "serve", "--port", str(_free_port()), "--jobs", "jobs.yaml"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60, env=_env())
    assert r.returncode == 2 and "job #1 ('x')" in r.stderr and "Traceback" not in r.stderr
    assert "Uvicorn running" not in r.stderr  # stopped before it listened


def test_serve_refuses_a_jobs_file_whose_notify_no_store_could_hold_and_prints_no_secret(
        tmp_path: Path) -> None:
    """review-secattack F2: the notification rules are bounded in the core (NOTIFY_MAX_BYTES), so
    ``serve --jobs`` refuses them before it listens, on every store - on MySQL they were an INSERT that
    failed at start-up with its parameters (the file's expanded ${VAR} secrets) in the log."""
    rule = {"on": ["failed"], "webhook": {"url": "https://example.com/hook",
                                          "headers": {"Authorization": "${HOOK_TOKEN}", "X-Pad": "p" * 4000}}}
    spec = {"name": "big", "type": "http", "payload": {"url": "https://x.example"}, "notify": [rule] * 20}
    (tmp_path / "jobs.json").write_text(json.dumps([spec]))
    env = {**_env(), "HOOK_TOKEN": "Bearer hook-secret-19d3e8b2"}
    r = subprocess.run([CHRONOS, "serve", "--port", str(_free_port()), "--jobs", "jobs.json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60, env=env)
    assert r.returncode == 2 and "job #1 ('big')" in r.stderr and "notify" in r.stderr, r.stderr
    assert "hook-secret-19d3e8b2" not in r.stderr + r.stdout and "Uvicorn running" not in r.stderr
