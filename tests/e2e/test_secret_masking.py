"""Issue #11 findings 3 and 4 through the real worker (``Chronos.embedded``): what a read-only token can
read - the run's output, its ``run.log`` events, its error and the job as shown - carries no secret, in
any form we can enumerate; shell jobs do not inherit the service's environment.

Real subprocesses and a real local HTTP server that echoes what it was sent."""

from __future__ import annotations

import base64
import sys
from typing import Any
from urllib.parse import quote

import pytest

from chronos_adapters.executors import ExecutorConfig
from chronos_app import Chronos
from chronos_core import EventType, InvalidJob
from chronos_core.models import Run
from tests.fixtures.httpserver import LocalHttpServer

PY = sys.executable


async def run_once(chronos: Chronos, spec: dict[str, Any]) -> tuple[Run, str]:
    """Create the job, run it once; the finished run and every ``run.log`` line it published."""
    job = await chronos.jobs.create(spec)
    lines: list[str] = []
    async with chronos.events.subscribe(job_id=job.id) as sub:
        run = await chronos.jobs.trigger(job.id)
        async for event in sub:
            if event.type is EventType.RUN_LOG:
                lines.append(event.data["line"])
            elif event.run_id == run.id and event.type.value in ("run.succeeded", "run.failed",
                                                                 "run.timed_out"):
                break
    return await chronos.runs.get(run.id), "\n".join(lines)


def everything(run: Run, log: str) -> str:
    return "\n".join([run.output or "", run.error or "", log])


@pytest.fixture
async def chronos() -> Any:
    async with Chronos.embedded(executor_config=ExecutorConfig(http_allow_hosts=("127.0.0.1",))) as c:
        yield c


# ---------------------------------------------------------------------- finding 4: encodings and names

SECRET = "SECRET4/with+special"


async def test_encoded_forms_of_a_secret_are_masked(chronos: Chronos) -> None:
    script = ("import os, base64, json, urllib.parse as u; t = os.environ['API_TOKEN']; "
              "print('url', u.quote(t, safe='')); print('plus', u.quote_plus(t)); "
              "print('b64', base64.b64encode(t.encode()).decode()); "
              "print('b64url', base64.urlsafe_b64encode(t.encode()).decode().rstrip('=')); "
              "print('hex', t.encode().hex()); print('HEX', t.encode().hex().upper()); "
              "print('json', json.dumps({'t': t}))")
    run, log = await run_once(chronos, {"name": "enc", "type": "shell", "payload": {
        "argv": [PY, "-c", script], "env": {"API_TOKEN": SECRET}}})
    assert run.status.value == "succeeded", run.error
    text = everything(run, log)
    for form in (SECRET, quote(SECRET, safe=""), base64.b64encode(SECRET.encode()).decode(),
                 SECRET.encode().hex(), "with+special", "with%2Bspecial", "with\\/special"):
        assert form not in text, form
    assert text.count("***") >= 7


@pytest.mark.parametrize(("name", "value"), [
    ("key", "plain-key-value-1"), ("SSH_KEY", "ssh-key-value-2"), ("GITLAB_PAT", "glpat-value-3"),
    ("PRIVATE_KEY", "private-key-value-4"), ("AWS_ACCESS_KEY_ID", "AKIAVALUE5"),
    ("clientSecret", "client-secret-6"),
])
async def test_secret_names_the_old_heuristic_missed(chronos: Chronos, name: str, value: str) -> None:
    run, log = await run_once(chronos, {"name": f"n-{name}", "type": "shell", "payload": {
        "argv": [PY, "-c", f"import os; print(os.environ[{name!r}])"], "env": {name: value}}})
    assert run.status.value == "succeeded"
    assert value not in everything(run, log)
    job = await chronos.jobs.get_by_name(f"n-{name}")
    assert chronos.job_types.redact("shell", job.payload)["env"][name] == "***"


@pytest.mark.parametrize(("name", "value", "hidden"), [
    ("DATABASE_URL", "postgresql://app:db-pass-7777@db.internal:5432/app", "db-pass-7777"),
    ("REPO", "https://ghp_0123456789abcdefghij@github.com/o/r.git", "ghp_0123456789abcdefghij"),
])
async def test_credentials_inside_url_values_are_masked(chronos: Chronos, name: str, value: str,
                                                        hidden: str) -> None:
    run, log = await run_once(chronos, {"name": f"u-{name}", "type": "shell", "payload": {
        "argv": [PY, "-c", f"import os; print(os.environ[{name!r}])"], "env": {name: value}}})
    assert hidden not in everything(run, log)
    job = await chronos.jobs.get_by_name(f"u-{name}")
    assert hidden not in str(chronos.job_types.redact("shell", job.payload))


async def test_a_secret_is_not_split_by_the_line_cut(chronos: Chronos) -> None:
    # a line longer than the worker's 16 KiB line limit, the secret right across the 16 KiB mark
    script = "import os, sys; sys.stdout.write('x' * 16380 + os.environ['TOKEN'] + 'y' * 100)"
    run, log = await run_once(chronos, {"name": "cut", "type": "shell", "payload": {
        "argv": [PY, "-c", script], "env": {"TOKEN": "tok-0123456789abcdef"}}})
    text = everything(run, log)
    assert "tok-0123" not in text and "456789abcdef" not in text and "***" in text
    assert log.replace("\n", "") == "x" * 16380 + "***" + "y" * 100  # pieces of it, nothing lost


async def test_secrets_shorter_than_three_characters_are_refused(chronos: Chronos) -> None:
    for payload, pointer in (
            ({"url": "https://example.com/", "headers": {"Authorization": "ab"}},
             "/payload/headers/Authorization"),
            ({"url": "https://u:p@example.com/"}, "/payload/url"),
            ({"url": "https://example.com/", "query": {"token": "x"}}, "/payload/query/token")):
        with pytest.raises(InvalidJob) as err:
            await chronos.jobs.create({"name": "short", "type": "http", "payload": payload})
        assert pointer in [e.pointer for e in err.value.errors], err.value
    with pytest.raises(InvalidJob) as err:
        await chronos.jobs.create({"name": "short", "type": "shell",
                                   "payload": {"command": "true", "env": {"PASSWORD": "1"}}})
    assert err.value.errors[0].pointer == "/payload/env/PASSWORD"


# ---------------------------------------------------------- finding 4: what a far server echoes back

async def test_http_secrets_are_masked_in_what_the_server_echoes(chronos: Chronos,
                                                                  http_server: LocalHttpServer) -> None:
    basic = base64.b64encode(b"svc:url-pass-9999").decode()
    echo = "\n".join([f"authorization: Basic {basic}", "query: access_token=at-9999-query",
                      "body: client_secret=cs-9999-json password=pw-9999-json",
                      f"encoded: {quote('url-pass-9999')} at-9999-query"])
    http_server.respond("/echo", (200, echo))
    url = f"http://svc:url-pass-9999@127.0.0.1:{http_server.port}/echo?access_token=at-9999-query&page=2"
    run, log = await run_once(chronos, {"name": "echo", "type": "http", "payload": {
        "method": "POST", "url": url, "json": {"client_secret": "cs-9999-json", "nested": {
            "password": "pw-9999-json"}, "n": 1}}})
    assert run.status.value == "succeeded", run.error
    [req] = http_server.requests_to("/echo")
    assert req.query["access_token"] == ["at-9999-query"] and b"cs-9999-json" in req.body  # all sent
    text = everything(run, log)
    for secret in ("url-pass-9999", basic, "at-9999-query", "cs-9999-json", "pw-9999-json"):
        assert secret not in text, secret
    job = await chronos.jobs.get_by_name("echo")
    shown = chronos.job_types.redact("http", job.payload)
    assert shown["url"] == f"http://svc:***@127.0.0.1:{http_server.port}/echo?access_token=***&page=2"
    assert shown["json"] == {"client_secret": "***", "nested": {"password": "***"}, "n": 1}


# ------------------------------------------------------------------ finding 3: the shell environment

async def test_a_shell_job_does_not_inherit_the_services_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHRONOS_API_TOKENS", "admin-token-123456")
    monkeypatch.setenv("SMTP_PASS", "smtp-pass-123456")
    monkeypatch.setenv("CHRONOS_SQL_CONNECTIONS", '{"main": "mysql://u:sqlpw123456@db/x"}')
    monkeypatch.setenv("LANG", "C.UTF-8")
    async with Chronos.embedded() as chronos:
        run, log = await run_once(chronos, {"name": "env", "type": "shell", "payload": {
            "command": "env", "env": {"MINE": "mine-value"}}})
    names = {line.split("=", 1)[0] for line in (run.output or "").splitlines()}
    assert names <= {"PATH", "HOME", "LANG", "TZ", "PWD", "SHLVL", "_", "MINE", "CHRONOS_JOB_ID",
                     "CHRONOS_RUN_ID", "CHRONOS_ATTEMPT"}, names
    assert "MINE=mine-value" in run.output and "LANG=C.UTF-8" in run.output
    for secret in ("admin-token", "smtp-pass", "sqlpw"):
        assert secret not in everything(run, log)


async def test_passed_through_variables_and_service_secrets_are_masked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTRA_SETTING", "extra-value")
    monkeypatch.setenv("SMTP_PASSWORD_COPY", "smtp-pass-654321")
    config = ExecutorConfig(shell_pass_env=("EXTRA_SETTING", "SMTP_PASSWORD_COPY"),
                            smtp_password="smtp-pass-654321",
                            sql_connections={"main": "mysql+pymysql://u:sql-pass-654321@db/x"})
    async with Chronos.embedded(executor_config=config) as chronos:
        run, log = await run_once(chronos, {"name": "pass", "type": "shell", "payload": {
            "command": "echo $EXTRA_SETTING $SMTP_PASSWORD_COPY; echo sql-pass-654321"}})
    assert "extra-value" in run.output  # passed on as the operator asked...
    assert "smtp-pass-654321" not in everything(run, log)  # ...but a service secret is still masked
    assert "sql-pass-654321" not in everything(run, log)
