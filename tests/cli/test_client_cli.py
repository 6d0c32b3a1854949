"""The client commands for real: the ``chronos`` command of this venv as a subprocess against one real
``chronos serve`` (SQLite file, shell jobs on, API tokens set) for the whole module.

Each test uses its own job names, so the tests share the server without depending on each other.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from tests.fixtures.httpserver import LocalHttpServer

from .test_serve import CHRONOS, Served

pytestmark = pytest.mark.e2e

TOKEN = "cli-full-" + secrets.token_hex(8)
READONLY = "cli-read-" + secrets.token_hex(8)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("cli"), CHRONOS_ALLOW_SHELL="true", CHRONOS_API_TOKENS=TOKEN,
                    CHRONOS_READONLY_TOKENS=READONLY, CHRONOS_SHUTDOWN_GRACE="1",
                    CHRONOS_PYTHON_MODULES="tests.executors.pyjobs",
                    PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    yield served
    if served.proc.poll() is None:
        served.terminate()


class Cli:
    """Runs ``chronos ARGS`` with CHRONOS_URL/CHRONOS_TOKEN pointing at the server."""

    def __init__(self, base: str, cwd: Path) -> None:
        self.base = base
        self.cwd = cwd

    def __call__(self, *args: str, stdin: str | None = None, token: str | None = TOKEN,
                 url: str | None = None, code: int | None = 0) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")}
        env["CHRONOS_URL"] = url or self.base
        if token is not None:
            env["CHRONOS_TOKEN"] = token
        r = subprocess.run([CHRONOS, *args], input=stdin, capture_output=True, text=True, env=env,
                           cwd=self.cwd, timeout=120)
        assert "Traceback" not in r.stderr, r.stderr
        for secret in (TOKEN, READONLY):  # a token is never printed, whatever happened
            assert secret not in r.stdout + r.stderr
        if code is not None:
            assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
        return r

    def json(self, *args: str, **kwargs: object) -> object:
        return json.loads(self(*args, "-o", "json", **kwargs).stdout)  # type: ignore[arg-type]


@pytest.fixture
def cli(server: Served, tmp_path: Path) -> Cli:
    return Cli(server.base, tmp_path)


def _shell_job(cli: Cli, name: str, command: str, **fields: object) -> dict:
    """Set-up goes through the API directly (the CLI's create is tested on its own): fewer processes."""
    spec = {"name": name, "type": "shell", "payload": {"command": command}, **fields}
    r = httpx.post(f"{cli.base}/jobs", json=spec, headers=AUTH, timeout=30)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _ran(cli: Cli, job: dict) -> dict:
    """Trigger ``job`` through the API and wait for its run to end."""
    run = httpx.post(f"{cli.base}/jobs/{job['id']}/run", headers=AUTH, timeout=30).json()
    deadline = time.monotonic() + 60
    while run["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
        run = httpx.get(f"{cli.base}/runs/{run['id']}", headers=AUTH, timeout=30).json()
    return dict(run)


# ------------------------------------------------------------------------------------------- jobs


def test_version() -> None:
    r = subprocess.run([CHRONOS, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"chronos, version {version('chronos-scheduler')}"


def test_create_from_yaml_and_stdin_then_list_and_get_by_name_or_id(cli: Cli) -> None:
    (cli.cwd / "jobs.yaml").write_text(
        "name: cli-greet\ntype: shell\nschedule: \"*/10 * * * * *\"\ntimezone: Europe/Berlin\n"
        "payload:\n  command: echo hello\nretry: {strategy: exponential, max_attempts: 3, delay: 2}\n"
        "start_at: 2025-01-01T00:00:00Z\n")  # YAML's own timestamp type goes over as ISO 8601
    created = cli("jobs", "create", "-f", "jobs.yaml")
    assert created.stdout.startswith("created job cli-greet (")
    second = cli.json("jobs", "create", "-f", "-", stdin=json.dumps(
        {"name": "cli-greet-manual", "type": "shell", "payload": {"command": "true"}}))
    assert isinstance(second, dict) and second["schedule"] is None

    listed = cli.json("jobs", "list", "--name", "cli-greet")
    assert isinstance(listed, list)
    assert sorted(j["name"] for j in listed) == ["cli-greet", "cli-greet-manual"]
    table = cli("jobs", "list", "--name", "cli-greet").stdout
    header, _, *rows = table.splitlines()
    assert header.split()[:5] == ["NAME", "TYPE", "SCHEDULE", "TIMEZONE", "STATUS"]
    assert any(r.split()[0] == "cli-greet" and "Europe/Berlin" in r for r in rows)
    assert any(r.split()[0] == "cli-greet-manual" and "(manual)" in r for r in rows)

    job = cli.json("jobs", "get", "cli-greet")
    assert isinstance(job, dict)
    assert job["retry"]["max_attempts"] == 3 and job["start_at"] == "2025-01-01T00:00:00Z"
    by_id = cli.json("jobs", "get", job["id"])
    assert isinstance(by_id, dict) and (by_id["id"], by_id["name"]) == (job["id"], "cli-greet")
    detail = cli("jobs", "get", "cli-greet").stdout
    assert re.search(r"^payload\.command +echo hello$", detail, re.M), detail  # (columns as wide as needed)
    assert "exponential, at most 3 attempts" in detail
    assert cli("jobs", "get", "cli-greet", "-o", "id").stdout == job["id"] + "\n"
    assert yaml.safe_load(cli("jobs", "get", "cli-greet", "-o", "yaml").stdout)["id"] == job["id"]


def test_a_file_with_several_jobs_creates_each(cli: Cli) -> None:
    (cli.cwd / "many.yaml").write_text(
        "name: cli-many-1\ntype: shell\npayload: {command: 'true'}\n---\n"
        "name: cli-many-2\ntype: shell\npayload: {command: 'true'}\n")
    created = cli.json("jobs", "create", "-f", "many.yaml")
    assert isinstance(created, list) and [j["name"] for j in created] == ["cli-many-1", "cli-many-2"]
    # a job as another server (or this one) printed it: a copy under another name
    printed = yaml.safe_load(cli("jobs", "get", "cli-many-1", "-o", "yaml").stdout)
    copy = cli.json("jobs", "create", "-f", "-", stdin=yaml.safe_dump({**printed, "name": "cli-many-3"}))
    assert isinstance(copy, dict) and copy["id"] != printed["id"] and copy["payload"] == printed["payload"]


def test_update_takes_a_job_as_get_printed_it(cli: Cli) -> None:
    job = _shell_job(cli, "cli-update", "echo one", schedule="0 9 * * *")
    printed = yaml.safe_load(cli("jobs", "get", "cli-update", "-o", "yaml").stdout)
    printed["schedule"] = "30 18 * * mon-fri"
    printed["payload"]["command"] = "echo two"
    (cli.cwd / "job.yaml").write_text(yaml.safe_dump(printed))
    assert cli("jobs", "update", "cli-update", "-f", "job.yaml").stdout.startswith("updated job cli-update")
    after = cli.json("jobs", "get", job["id"])
    assert isinstance(after, dict)
    assert after["schedule"] == "30 18 * * mon-fri" and after["payload"]["command"] == "echo two"
    # the name may be left out: the job keeps its own; fields left out get their defaults (PUT)
    (cli.cwd / "short.yaml").write_text("type: shell\npayload: {command: echo three}\n")
    after = cli.json("jobs", "update", "cli-update", "-f", "short.yaml")
    assert isinstance(after, dict) and after["name"] == "cli-update" and after["schedule"] is None


def test_update_merge_changes_only_the_given_fields(cli: Cli) -> None:
    _shell_job(cli, "cli-merge", "echo one", schedule="0 9 * * *", description="before", timeout=60)
    after = cli.json("jobs", "update", "cli-merge", "--merge", "-f", "-",
                     stdin="description: after\npayload: {command: echo two}\ntimeout: null\n")
    assert isinstance(after, dict)
    assert (after["description"], after["payload"]["command"], after["schedule"], after["timeout"]) == (
        "after", "echo two", "0 9 * * *", None)  # null removes (RFC 7396); what is not named stays
    r = cli("jobs", "update", "cli-merge", "--merge", "-f", "-", stdin="schedule: '61 * * * *'\n", code=4)
    assert "  /schedule: minute field: value 61 is out of range 0-59" in r.stderr.splitlines()


def test_pause_resume_delete(cli: Cli) -> None:
    job = _shell_job(cli, "cli-pause", "true", schedule="@every 1h")
    assert cli("jobs", "pause", "cli-pause").stdout.startswith("paused job cli-pause")
    paused = cli.json("jobs", "get", "cli-pause")
    assert isinstance(paused, dict) and paused["status"] == "paused"
    resumed = cli.json("jobs", "resume", job["id"])
    assert isinstance(resumed, dict) and resumed["status"] == "active" and resumed["next_run_at"]
    assert cli("jobs", "delete", "cli-pause").stdout == f"deleted job cli-pause ({job['id']})\n"
    gone = cli("jobs", "get", "cli-pause", code=3)
    assert gone.stderr == "Error: 404 Job not found: no job has the name or id 'cli-pause'\n"


# ------------------------------------------------------------------------------- runs, exit codes


def test_trigger_wait_and_runs_get_exit_status(cli: Cli) -> None:
    _shell_job(cli, "cli-ok", "echo fine")
    _shell_job(cli, "cli-bad", "echo oops; exit 3")
    ok = cli.json("jobs", "trigger", "cli-ok", "--wait")
    assert isinstance(ok, dict) and ok["status"] == "succeeded" and ok["output"] == "fine"
    bad = cli("jobs", "trigger", "cli-bad", "--wait", "-o", "json", code=1)
    failed = json.loads(bad.stdout)
    assert failed["status"] == "failed" and failed["exit_code"] == 3

    cli("runs", "get", ok["id"], "--exit-status")
    shown = cli("runs", "get", failed["id"], "--exit-status", code=1).stdout
    assert re.search(r"^status +failed$", shown, re.M) and re.search(r"^exit code +3$", shown, re.M)
    assert shown.endswith("output:\noops\n")
    assert cli("runs", "get", failed["id"]).returncode == 0  # without --exit-status: shown is success


def test_runs_get_shows_the_result(cli: Cli) -> None:
    r = httpx.post(f"{cli.base}/jobs", headers=AUTH, timeout=30, json={
        "name": "cli-py", "type": "python",
        "payload": {"function": "tests.executors.pyjobs:report", "kwargs": {"day": "cli-day"}}})
    assert r.status_code == 201, r.text
    run = _ran(cli, r.json())
    assert run["status"] == "succeeded", run
    got = cli.json("runs", "get", run["id"])
    assert isinstance(got, dict) and got["result"]["rows"] == 42 and got["result"]["run"] == run["id"]
    shown = cli("runs", "get", run["id"]).stdout
    assert re.search(r'^result:\n\{\n  "rows": 42,\n  "run": "' + run["id"] + '",$', shown, re.M), shown
    assert "result" not in shown.partition("output:")[2]  # not an output line any more


def test_exit_status_of_a_run_that_has_not_finished(cli: Cli) -> None:
    _shell_job(cli, "cli-slow", "sleep 60")
    run_id = cli("jobs", "trigger", "cli-slow", "-o", "id").stdout.strip()
    r = cli("runs", "get", run_id, "--exit-status", "-o", "json", code=7)
    assert json.loads(r.stdout)["status"] in ("queued", "running")
    cancelled = cli("runs", "cancel", run_id)
    assert cancelled.stdout.startswith(f"run {run_id}: ")
    final = cli("runs", "get", run_id, "--wait", "--exit-status", "-o", "json", code=1)
    assert json.loads(final.stdout)["status"] == "cancelled"


def test_trigger_follow_prints_the_output_and_exits_by_the_outcome(cli: Cli) -> None:
    _shell_job(cli, "cli-follow", "echo first; echo second; exit 4")
    r = cli("jobs", "trigger", "cli-follow", "-f", code=1)
    assert r.stdout == "first\nsecond\n"
    assert "failed after" in r.stderr and "(exit code 4)" in r.stderr


def test_logs(cli: Cli) -> None:
    run = _ran(cli, _shell_job(cli, "cli-logs", "echo alpha; echo beta"))
    assert cli("logs", run["id"]).stdout == "alpha\nbeta\n"
    assert cli("logs", run["id"], "-f").stdout == "alpha\nbeta\n"  # a finished run: all, then the end
    missing = cli("logs", "no-such-run", code=3)
    assert missing.stderr.startswith("Error: 404 Run not found")


def test_runs_list_across_jobs_and_of_one_job_with_filters(cli: Cli) -> None:
    hist, hist_ok = _shell_job(cli, "cli-hist", "exit 1"), _shell_job(cli, "cli-hist-ok", "true")
    first, ok, second = _ran(cli, hist), _ran(cli, hist_ok), _ran(cli, hist)
    runs = cli.json("runs", "list", "--job", "cli-hist", "--status", "failed")
    assert isinstance(runs, list) and [r["id"] for r in runs] == [second["id"], first["id"]]  # newest first
    assert cli("runs", "list", "--job", "cli-hist", "-o", "id", "--limit", "1").stdout == second["id"] + "\n"

    recent = cli.json("runs", "list", "--since", "10m", "--trigger", "manual", "--limit", "500")
    assert isinstance(recent, list)
    ids = [r["id"] for r in recent]
    assert {first["id"], ok["id"], second["id"]} <= set(ids) and ids == sorted(ids, reverse=True)
    failed = cli.json("runs", "list", "--status", "failed,timed_out", "--limit", "500")
    assert isinstance(failed, list) and ok["id"] not in {r["id"] for r in failed}
    assert cli.json("runs", "list", "--until", "2000-01-01") == []
    table = cli("runs", "list", "--job", "cli-hist").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "JOB", "STATUS", "TRIGGER"]
    assert table[2].split()[:5] == [second["id"], "cli-hist", "failed", "manual", "1"]
    cross = cli("runs", "list", "--limit", "500").stdout  # job names for the runs of every job
    assert any(line.split()[:3] == [ok["id"], "cli-hist-ok", "succeeded"] for line in cross.splitlines())
    assert "--since" in cli("runs", "list", "--since", "yesterday", code=2).stderr

    # the jobs' summaries: the failing job is found by its last run's status
    failing = cli.json("jobs", "list", "--name", "cli-hist", "--last-status", "failed")
    assert isinstance(failing, list) and [j["name"] for j in failing] == ["cli-hist"]
    rows = cli("jobs", "list", "--name", "cli-hist").stdout.splitlines()[2:]
    assert {r.split()[0]: r.split()[5] for r in rows} == {"cli-hist": "failed", "cli-hist-ok": "succeeded"}
    shown = cli("jobs", "get", "cli-hist").stdout
    assert re.search(r"^consecutive failures +2$", shown, re.M)


def test_logs_follow_a_running_run_from_its_start(cli: Cli) -> None:
    _shell_job(cli, "cli-live", "echo early; sleep 2; echo late")
    run_id = cli("jobs", "trigger", "cli-live", "-o", "id").stdout.strip()
    while "early" not in cli("logs", run_id).stdout:  # printed before we attach
        pass
    assert cli("logs", run_id, "-f").stdout == "early\nlate\n"
    cli("runs", "get", run_id, "--exit-status")


def test_preview_in_a_time_zone(cli: Cli) -> None:
    preview = cli.json("preview", "0 9 * * mon-fri", "--tz", "Europe/Berlin", "-n", "7")
    assert isinstance(preview, dict) and len(preview["times"]) == 7
    for t in preview["times"]:
        local = datetime.fromisoformat(t).astimezone(ZoneInfo("Europe/Berlin"))
        assert (local.hour, local.minute) == (9, 0) and local.weekday() < 5
    table = cli("preview", "0 9 * * mon-fri", "--tz", "Europe/Berlin").stdout.splitlines()
    assert table[0].split() == ["#", "Europe/Berlin", "UTC", "FROM", "NOW"]
    assert len(table) == 2 + 5 and " 09:00:00 CE" in table[2]


# ------------------------------------------------------------------------------------------ errors


def test_invalid_input_names_each_field(cli: Cli) -> None:
    bad = {"name": "cli-invalid", "type": "shell", "schedule": "61 * * * *", "timezone": "Mars/Olympus",
           "payload": {"command": "true"}}
    r = cli("jobs", "create", "-f", "-", stdin=json.dumps(bad), code=4)
    lines = r.stderr.splitlines()
    assert lines[0].startswith("Error: 422 ")  # the title: "Invalid job"
    assert "  /schedule: minute field: value 61 is out of range 0-59" in lines
    assert any(line.startswith("  /timezone: ") for line in lines)
    r = cli("preview", "61 * * * *", code=4)
    assert "/schedule: minute field" in r.stderr
    r = cli("runs", "list", "--job", "cli-greet-manual", "--status", "bogus", code=4)
    assert r.stderr.startswith("Error: 422 ") and "  /status: unknown run status" in r.stderr


def test_a_name_conflict_is_refused(cli: Cli) -> None:
    _shell_job(cli, "cli-twice", "true")
    r = cli("jobs", "create", "-f", "-", stdin=json.dumps(
        {"name": "cli-twice", "type": "shell", "payload": {"command": "true"}}), code=4)
    assert r.stderr.startswith("Error: 409 A job with this name already exists")


def test_not_found(cli: Cli) -> None:
    assert cli("jobs", "trigger", "cli-nothing", code=3).stderr.startswith("Error: 404 Job not found")
    assert cli("runs", "get", "01a00000-0000-7000-8000-000000000000", code=3).stderr.startswith(
        "Error: 404 Run not found")


def test_unreadable_job_files_are_usage_errors(cli: Cli) -> None:
    (cli.cwd / "at.yaml").write_text("name: x\ntype: shell\nschedule: @every 30s\n")
    r = cli("jobs", "create", "-f", "at.yaml", code=2)
    assert "neither JSON nor YAML" in r.stderr and 'schedule: "@every 30s"' in r.stderr
    r = cli("jobs", "create", "-f", "-", stdin="- just\n- words\n", code=2)
    assert "job #1 is a str, not a mapping" in r.stderr
    assert "cannot read" in cli("jobs", "create", "-f", "missing.yaml", code=2).stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_is_one_line_naming_the_url(cli: Cli) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    r = cli("jobs", "list", url=url, code=6)
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"Error: cannot reach the Chronos API at {url}: connection refused")
    # an option beats the variable; after the command beats before it
    assert cli("--url", url, "jobs", "list", "--url", cli.base, "-o", "json").returncode == 0
    cli("--url", cli.base, "runs", "get", "x", "--url", url, code=6)
    assert "--url must start with http://" in cli("jobs", "list", url="127.0.0.1:8080", code=2).stderr


# -------------------------------------------------------------------------------------------- auth


def test_tokens(cli: Cli) -> None:
    r = cli("jobs", "list", token=None, code=5)
    assert r.stderr.startswith("Error: 401 Authentication required")
    assert cli("jobs", "list", token="wrong", code=5).stderr.startswith("Error: 401 ")
    assert cli("--token", TOKEN, "jobs", "list", token=None).returncode == 0
    assert cli("jobs", "list", "--token", TOKEN, token=None).returncode == 0
    _shell_job(cli, "cli-readonly", "true")
    assert cli("jobs", "get", "cli-readonly", token=READONLY).returncode == 0
    r = cli("jobs", "pause", "cli-readonly", token=READONLY, code=5)
    assert r.stderr == "Error: 403 Not allowed: this token is read-only\n"


def test_an_answer_that_is_not_problem_json_is_still_readable(cli: Cli, http_server: LocalHttpServer
                                                             ) -> None:
    """A proxy in front of the API answering 502 with HTML: the status and its first line, exit 6; the
    token went in the Authorization header and nowhere else."""
    http_server.respond("/jobs", (502, "upstream is down\n<p>more</p>"))
    r = cli("jobs", "list", url=http_server.url, code=6)
    assert r.stderr == "Error: 502 Bad Gateway: upstream is down\n"
    [request] = http_server.requests_to("/jobs")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(request.query) and TOKEN not in request.path


def test_server_text_is_shown_as_text(cli: Cli) -> None:
    """Neither rich markup in a name nor a terminal escape in a command reaches the terminal as such."""
    _shell_job(cli, "cli-[red]markup[/red]", "echo '\x1b[2J\x1b]0;title\x07'")
    listed = cli("jobs", "list", "--name", "cli-[red]").stdout
    shown = cli("jobs", "get", "cli-[red]markup[/red]").stdout
    assert "cli-[red]markup[/red]" in listed and "cli-[red]markup[/red]" in shown
    assert "\x1b" not in listed + shown and "\x07" not in shown
    assert "echo '?[2J?]0;title?'" in shown
