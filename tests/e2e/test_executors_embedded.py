"""The four job types through ``Chronos.embedded()``, against real peers (processes, a local HTTP server,
an in-process SMTP server, SQLite)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from chronos_adapters.executors import ExecutorConfig
from chronos_app import Chronos
from chronos_core import EventType, Payload, Run, RunStatus
from chronos_core.errors import ExecutionFailed
from chronos_core.models import Job
from chronos_core.ports import ExecutionResult, Executor, LogSink
from tests.fixtures.httpserver import LocalHttpServer
from tests.fixtures.smtp import LocalSmtpServer


async def finished_runs(chronos: Chronos, job_id: str, count: int, limit: float = 30) -> list[Run]:
    """The job's runs, oldest first, once ``count`` of them have finished."""
    async with asyncio.timeout(limit):
        while True:
            runs = await chronos.jobs.history(job_id)
            if sum(r.finished for r in runs) >= count:
                return sorted(runs, key=lambda r: r.id)
            await asyncio.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("State:"))
    except OSError:
        return False
    return "Z" not in state.split()[1]


async def test_shell_lines_arrive_as_run_log_before_the_job_ends() -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({"name": "lines", "type": "shell",
                                         "payload": {"command": "echo first; sleep 1; echo second >&2"}})
        logs: list[tuple[str, str, RunStatus]] = []
        async with chronos.events.subscribe(job_id=job.id) as sub:
            run = await chronos.jobs.trigger(job.id)
            async with asyncio.timeout(30):
                async for event in sub:
                    if event.type is EventType.RUN_LOG:
                        status = (await chronos.runs.get(run.id)).status
                        logs.append((event.data["stream"], event.data["line"], status))
                    if event.type is EventType.RUN_SUCCEEDED:
                        break
    assert logs[0] == ("stdout", "first", RunStatus.RUNNING)  # live, while the run still runs
    assert logs[1][:2] == ("stderr", "second")


async def test_shell_timeout_ends_timed_out_and_leaves_no_process() -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({"name": "sleeper", "type": "shell", "timeout": 1,
                                         "payload": {"command": "sleep 30 & echo $$ $!; sleep 30"}})
        await chronos.jobs.trigger(job.id)
        [run] = await finished_runs(chronos, job.id, 1, limit=15)  # "within a few seconds", generously
    assert run.status is RunStatus.TIMED_OUT
    assert run.error == "timed out after 1s"
    pids = [int(p) for p in run.output.splitlines()[0].split()]
    assert len(pids) == 2 and not any(alive(p) for p in pids)  # the shell and its background child
    assert run.finished_at is not None and run.started_at is not None
    assert (run.finished_at - run.started_at).total_seconds() < 29  # not after the sleep ran out


async def test_shell_refused_at_execution_when_not_allowed() -> None:
    config = ExecutorConfig(allow_shell=False)
    async with Chronos.embedded(allow_shell=True, executor_config=config) as chronos:
        job = await chronos.jobs.create({"name": "nope", "type": "shell", "payload": {"command": "true"},
                                         "retry": {"max_attempts": 3, "strategy": "immediate"}})
        await chronos.jobs.trigger(job.id)
        [run] = await finished_runs(chronos, job.id, 1)
        await asyncio.sleep(0.3)
        assert len(await chronos.jobs.history(job.id)) == 1  # not retried
    assert run.status is RunStatus.FAILED and "CHRONOS_ALLOW_SHELL" in (run.error or "")


async def test_http_job_records_200_and_its_retry_keeps_the_idempotency_key(
        http_server: LocalHttpServer) -> None:
    http_server.respond("/hook", (503, "busy"), (200, "done"))
    config = ExecutorConfig(http_allow_hosts=("127.0.0.1",))
    async with Chronos.embedded(executor_config=config) as chronos:
        job = await chronos.jobs.create({"name": "hook", "type": "http",
                                         "payload": {"method": "POST", "url": f"{http_server.url}/hook",
                                                     "json": {"event": "tick"}},
                                         "retry": {"max_attempts": 3, "strategy": "immediate"}})
        await chronos.jobs.trigger(job.id)
        first, second = await finished_runs(chronos, job.id, 2)
    assert (first.status, first.exit_code, first.attempt) == (RunStatus.FAILED, 503, 1)
    assert (second.status, second.exit_code, second.attempt) == (RunStatus.SUCCEEDED, 200, 2)
    assert "HTTP 200 OK" in second.output and "done" in second.output
    a, b = http_server.requests_to("/hook")
    assert a.headers["idempotency-key"] == b.headers["idempotency-key"]
    assert a.headers["idempotency-key"].startswith(f"chronos:{job.id}:")
    assert (a.headers["x-chronos-run-id"], b.headers["x-chronos-run-id"]) == (first.id, second.id)


async def test_http_to_loopback_fails_without_the_allow_list(http_server: LocalHttpServer) -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({"name": "ssrf", "type": "http",
                                         "payload": {"url": f"http://localhost:{http_server.port}/admin"},
                                         "retry": {"max_attempts": 3, "strategy": "immediate"}})
        await chronos.jobs.trigger(job.id)
        [run] = await finished_runs(chronos, job.id, 1)
        await asyncio.sleep(0.3)
        assert len(await chronos.jobs.history(job.id)) == 1  # refused, not retried
    assert run.status is RunStatus.FAILED and "refusing to connect" in (run.error or "")
    assert http_server.requests == []


async def test_secrets_are_masked_in_output_and_events(http_server: LocalHttpServer) -> None:
    http_server.respond("/echo", (200, "you sent Bearer tok-abcdef and key k-99887"))
    config = ExecutorConfig(http_allow_hosts=("127.0.0.1",))
    async with Chronos.embedded(executor_config=config) as chronos:
        job = await chronos.jobs.create({"name": "secret", "type": "http",
                                         "payload": {"url": f"{http_server.url}/echo",
                                                     "headers": {"Authorization": "Bearer tok-abcdef"},
                                                     "query": {"api_key": "k-99887"}}})
        lines: list[str] = []
        async with chronos.events.subscribe(job_id=job.id, types={EventType.RUN_LOG,
                                                                  EventType.RUN_SUCCEEDED}) as sub:
            await chronos.jobs.trigger(job.id)
            async with asyncio.timeout(30):
                async for event in sub:
                    if event.type is EventType.RUN_SUCCEEDED:
                        break
                    lines.append(event.data["line"])
        [run] = await finished_runs(chronos, job.id, 1)
    assert http_server.requests[0].headers["authorization"] == "Bearer tok-abcdef"
    text = "\n".join(lines)
    assert "you sent *** and key ***" in text and "you sent *** and key ***" in run.output
    assert "tok-abcdef" not in text + run.output and "k-99887" not in text + run.output


async def test_email_job_delivers_to_local_smtp(smtp_server: LocalSmtpServer) -> None:
    config = ExecutorConfig(smtp_host=smtp_server.host, smtp_port=smtp_server.port,
                            smtp_sender="chronos@example.org")
    async with Chronos.embedded(executor_config=config) as chronos:
        job = await chronos.jobs.create({"name": "mail", "type": "email",
                                         "payload": {"to": ["ops@example.com"], "bcc": ["audit@example.com"],
                                                     "subject": "done", "text": "the batch finished"}})
        await chronos.jobs.trigger(job.id)
        [run] = await finished_runs(chronos, job.id, 1)
    assert run.status is RunStatus.SUCCEEDED, run.error
    [got] = smtp_server.received
    assert got.rcpt_tos == ["ops@example.com", "audit@example.com"]
    assert got.message["Subject"] == "done" and got.message["X-Chronos-Run-Id"] == run.id
    assert got.message.get_content().strip() == "the batch finished"


async def test_sql_job_reports_its_row_count(tmp_path: Path) -> None:
    config = ExecutorConfig(sql_connections={"local": f"sqlite:///{tmp_path / 'app.db'}"})
    async with Chronos.embedded(executor_config=config) as chronos:
        setup = await chronos.jobs.create({"name": "setup", "type": "sql", "payload": {
            "connection": "local",
            "statement": "CREATE TABLE t AS SELECT 1 AS n UNION SELECT 2 UNION SELECT 3"}})
        await chronos.jobs.trigger(setup.id)
        [made] = await finished_runs(chronos, setup.id, 1)
        assert made.status is RunStatus.SUCCEEDED, made.error
        job = await chronos.jobs.create({"name": "count", "type": "sql", "payload": {
            "connection": "local", "statement": "SELECT n FROM t WHERE n >= :low ORDER BY n",
            "params": {"low": 2}}})
        await chronos.jobs.trigger(job.id)
        [run] = await finished_runs(chronos, job.id, 1)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.output.splitlines()[-3:] == ['{"n": 2}', '{"n": 3}', "2 rows"]


class EchoPayload(Payload):
    words: list[str]
    token: str

    def secrets(self) -> list[str]:
        return [self.token]


class EchoExecutor(Executor):
    type_name: ClassVar[str] = "echo"

    def __init__(self) -> None:
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        p = EchoPayload.model_validate(job.payload)
        for word in p.words:
            await log(f"{word} (auth {p.token})")
        if "fail" in p.words:
            raise ExecutionFailed("asked to fail", retryable=False)
        if "result" in p.words:
            return ExecutionResult(ok=True, result={"words": p.words, f"auth {p.token}": [p.token, 1]})
        if "huge" in p.words:
            return ExecutionResult(ok=True, output="done", result=["x" * 70_000])
        return ExecutionResult(ok=True)


async def test_a_user_defined_job_type_as_documented() -> None:
    chronos = Chronos.embedded()
    echo = EchoExecutor()
    chronos.register_job_type("echo", EchoPayload, echo)
    async with chronos:
        assert echo.started
        job = await chronos.jobs.create({"name": "e", "type": "echo",
                                         "payload": {"words": ["a", "b"], "token": "tkn-123"}})
        bad = await chronos.jobs.create({"name": "f", "type": "echo",
                                         "payload": {"words": ["fail"], "token": "tkn-123"},
                                         "retry": {"max_attempts": 3, "strategy": "immediate"}})
        await chronos.jobs.trigger(job.id)
        await chronos.jobs.trigger(bad.id)
        [ok] = await finished_runs(chronos, job.id, 1)
        [failed] = await finished_runs(chronos, bad.id, 1)
        await asyncio.sleep(0.3)
        assert len(await chronos.jobs.history(bad.id)) == 1
    assert ok.status is RunStatus.SUCCEEDED and ok.output == "a (auth ***)\nb (auth ***)"
    assert failed.status is RunStatus.FAILED
    assert failed.error == "asked to fail; not retried: the failure is permanent"
    assert ok.result is None  # returned none


async def test_the_worker_masks_and_caps_what_an_executor_returns() -> None:
    chronos = Chronos.embedded()
    chronos.register_job_type("echo", EchoPayload, EchoExecutor())
    async with chronos:
        runs = []
        for words in (["result"], ["huge"]):
            job = await chronos.jobs.create({"name": words[0], "type": "echo",
                                             "payload": {"words": words, "token": "tkn-123"}})
            await chronos.jobs.trigger(job.id)
            runs += await finished_runs(chronos, job.id, 1)
    kept, huge = runs
    assert kept.status is RunStatus.SUCCEEDED and kept.result == {"words": ["result"], "auth ***": ["***", 1]}
    assert huge.status is RunStatus.SUCCEEDED and huge.result is None
    assert huge.output.splitlines()[-2:] == [
        "done", "[chronos] the result (70004 characters of JSON) was not kept: over the limit of 65536"]
