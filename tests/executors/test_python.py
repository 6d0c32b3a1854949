"""``python`` jobs through the real engines (``Chronos.embedded()``): a plain function, sync or async, in a
thread or a child process; its output, result, traceback, retries, timeouts and cancel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chronos_adapters.executors import ExecutorConfig, PythonExecutor
from chronos_app import Chronos
from chronos_core import InvalidJob, Run, RunStatus
from chronos_core.python import function_ref, module_allowed
from tests.executors import pyjobs
from tests.executors._support import Lines, children_running, live_group_members, make_job, make_run

MOD = "tests.executors.pyjobs"


async def finished(chronos: Chronos, job_id: str, count: int = 1, limit: float = 30) -> list[Run]:
    """The job's runs, oldest first, once ``count`` have finished."""
    async with asyncio.timeout(limit):
        while True:
            runs = await chronos.jobs.history(job_id)
            if sum(r.finished for r in runs) >= count:
                return sorted(runs, key=lambda r: r.id)
            await asyncio.sleep(0.02)


async def run_once(chronos: Chronos, function: str, **fields: Any) -> Run:
    payload = {"function": f"{MOD}:{function}", **fields.pop("payload", {})}
    job = await chronos.jobs.create({"name": f"{function}-{len(pyjobs.seen)}-{id(fields)}",
                                     "type": "python", "payload": payload, **fields})
    await chronos.jobs.trigger(job.id)
    return (await finished(chronos, job.id))[0]


async def until(condition: Any, limit: float = 10) -> None:
    """Wait (polling) until ``condition()`` (maybe async) is true."""
    async with asyncio.timeout(limit):
        while True:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.02)


def result(run: Run) -> Any:
    assert run.result is not None and "result: " not in run.output  # a field, not an output line
    return run.result


@pytest.mark.parametrize("isolation", ["thread", "process"])
async def test_a_function_logs_prints_and_returns(isolation: str) -> None:
    async with Chronos.embedded() as chronos:
        run = await run_once(chronos, "report", payload={"kwargs": {"day": "monday"},
                                                          "isolation": isolation})
    assert run.status is RunStatus.SUCCEEDED, run.error
    lines = run.output.splitlines()
    assert lines[0] == "building monday"  # ctx.log
    assert "printed monday" in lines  # print
    assert any(line.endswith("logged monday") for line in lines)  # logging
    value = result(run)
    assert value["rows"] == 42 and value["run"] == run.id and value["attempt"] == 1
    assert value["job"].startswith("report") and value["slot"] == run.scheduled_for.isoformat()


async def test_sync_functions_run_in_the_pool_and_async_ones_on_the_loop() -> None:
    async with Chronos.embedded() as chronos:
        sync_run = await run_once(chronos, "where")
        async_run = await run_once(chronos, "where_async")
    assert result(sync_run)["main"] is False
    assert result(sync_run)["thread"].startswith("chronos-python")
    assert result(async_run) == {"thread": threading.current_thread().name, "main": True, "loop": True}


async def test_concurrent_runs_output_does_not_mix() -> None:
    pyjobs.seen["turns"] = threading.Barrier(2)  # each line of one run is printed beside one of the other
    async with Chronos.embedded() as chronos:
        jobs = [await chronos.jobs.create({"name": f"chatter-{tag}", "type": "python", "payload": {
            "function": f"{MOD}:chatter", "kwargs": {"tag": tag, "count": 20, "barrier_key": "turns"}}})
            for tag in ("aaa", "bbb")]
        ajobs = [await chronos.jobs.create({"name": f"achatter-{tag}", "type": "python", "payload": {
            "function": f"{MOD}:chatter_async", "kwargs": {"tag": tag, "count": 20}}})
            for tag in ("ccc", "ddd")]
        for job in jobs + ajobs:
            await chronos.jobs.trigger(job.id)
        runs = {job.name: (await finished(chronos, job.id))[0] for job in jobs + ajobs}
    for name, run in runs.items():
        tag = name.split("-")[1]
        assert run.status is RunStatus.SUCCEEDED, run.error
        lines = run.output.splitlines()
        expected = 40 if name.startswith("chatter") else 20
        assert len(lines) == expected, lines
        assert all(line.startswith(tag) or line.endswith(tuple(f"{tag} log {i}" for i in range(20)))
                   for line in lines), lines
        assert f"{tag} 19" in lines


async def test_an_exception_fails_with_its_traceback_and_is_retried() -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({
            "name": "failing", "type": "python", "retry": {"strategy": "immediate", "max_attempts": 2},
            "payload": {"function": f"{MOD}:failing", "args": ["no such key"]}})
        await chronos.jobs.trigger(job.id)
        runs = await finished(chronos, job.id, 2)
    assert [r.status for r in runs] == [RunStatus.FAILED, RunStatus.FAILED]
    error = runs[0].error or ""
    assert error.startswith("KeyError: 'no such key'")
    assert "Traceback (most recent call last):" in error
    assert 'pyjobs.py", line' in error and "in _inner" in error and "in failing" in error
    assert "executors/python.py" not in error  # the executor's own frames are left out
    assert runs[0].output == "about to fail"  # printed before the exception: kept


async def test_a_flaky_function_succeeds_on_retry() -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({
            "name": "flaky", "type": "python", "retry": {"strategy": "immediate", "max_attempts": 3},
            "payload": {"function": f"{MOD}:flaky", "kwargs": {"counter": "flaky-1", "fail_times": 1}}})
        await chronos.jobs.trigger(job.id)
        runs = await finished(chronos, job.id, 2)
    assert [r.status for r in runs] == [RunStatus.FAILED, RunStatus.SUCCEEDED]
    assert "ConnectionError: call 1 failed" in (runs[0].error or "")
    assert result(runs[1]) == "ok after 2"


async def test_execution_failed_not_retryable_is_not_retried() -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({
            "name": "permanent", "type": "python", "retry": {"strategy": "immediate", "max_attempts": 3},
            "payload": {"function": f"{MOD}:permanent"}})
        await chronos.jobs.trigger(job.id)
        [run] = await finished(chronos, job.id)
        await asyncio.sleep(0.2)
        assert len(await chronos.jobs.history(job.id)) == 1
    assert run.status is RunStatus.FAILED
    assert (run.error or "").startswith("ExecutionFailed: the input is gone")
    assert "not retried" in (run.error or "")


async def test_a_timed_out_thread_is_recorded_at_once_and_its_late_result_dropped() -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({
            "name": "stubborn", "type": "python", "timeout": 0.3,
            "payload": {"function": f"{MOD}:stubborn", "kwargs": {"key": "stubborn", "seconds": 1.5}}})
        await chronos.jobs.trigger(job.id)
        [run] = await finished(chronos, job.id)
        assert run.status is RunStatus.TIMED_OUT and "stubborn" not in pyjobs.seen  # still going
        await until(lambda: "stubborn" in pyjobs.seen)
        await asyncio.sleep(0.1)
        again = await chronos.runs.get(run.id)
    assert pyjobs.seen["stubborn"] is True  # ctx.cancelled told it
    assert again.status is RunStatus.TIMED_OUT and "result" not in again.output


async def test_a_cancelled_thread_sees_ctx_cancelled() -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({"name": "polite", "type": "python", "payload": {
            "function": f"{MOD}:polite", "kwargs": {"key": "polite"}}})
        run = await chronos.jobs.trigger(job.id)
        async def running() -> bool:
            return (await chronos.runs.get(run.id)).status is RunStatus.RUNNING

        await until(running)
        # the function itself must be running: a cancel that comes while the call still waits for a
        # thread (RUNNING in the store already) rightly never runs it, and it could not see the cancel
        await until(lambda: "polite:started" in pyjobs.seen)
        await chronos.runs.cancel(run.id)
        [done] = await finished(chronos, job.id)
        await until(lambda: "polite" in pyjobs.seen)
    assert done.status is RunStatus.CANCELLED and pyjobs.seen["polite"] == "stopped"


def _alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("State:"))
    except OSError:
        return False
    return "Z" not in state.split()[1]


async def test_process_isolation_timeout_kills_the_child() -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({"name": "sleeper", "type": "python", "timeout": 5,
                                         "payload": {"function": f"{MOD}:sleeper", "isolation": "process"}})
        await chronos.jobs.trigger(job.id)
        [run] = await finished(chronos, job.id)
    assert run.status is RunStatus.TIMED_OUT
    pid = int(run.output.splitlines()[0].split()[1])
    assert not _alive(pid)


async def test_process_isolation_cancel_kills_the_child() -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({"name": "sleeper", "type": "python",
                                         "payload": {"function": f"{MOD}:sleeper", "isolation": "process"}})
        async with chronos.events.subscribe(job_id=job.id) as sub:
            run = await chronos.jobs.trigger(job.id)
            async with asyncio.timeout(30):
                async for event in sub:
                    if event.data.get("line", "").startswith("pid "):
                        pid = int(event.data["line"].split()[1])
                        break
        assert _alive(pid)
        await chronos.runs.cancel(run.id)
        [done] = await finished(chronos, job.id)
    assert done.status is RunStatus.CANCELLED and not _alive(pid)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def _cancel_and_check(task: asyncio.Task[Any], pid: int, fds: set[str]) -> None:
    """Cancel ``task``: it must end at once, with the child's group gone and every descriptor of the run
    closed (the pipes' transports close a few loop turns after the group ends)."""
    try:
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(20):  # (a TimeoutError here: the cancel hung)
                await task
        assert time.monotonic() - started < 10
        assert not _alive(pid) and live_group_members(pid) == []
        async with asyncio.timeout(5):
            while _open_fds() - fds:  # noqa: ASYNC110 - (a TimeoutError: a descriptor stays open)
                await asyncio.sleep(0.01)
    finally:  # a child left behind (the bug) is not left to the rest of the session
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


async def test_process_isolation_a_cancel_while_the_child_starts_leaves_nothing() -> None:
    """A cancel that lands inside ``create_subprocess_exec`` (the child runs, asyncio still connects its
    pipes): asyncio kills the child itself, but the read end of the result pipe stayed open."""
    job = make_job("python", {"function": f"{MOD}:sleeper", "isolation": "process"})
    fds = _open_fds()
    task = asyncio.create_task(PythonExecutor().execute(job, make_run(job), Lines()))
    deadline = time.monotonic() + 20
    while not (pids := children_running("python_child")):  # forked in the turn that just ended:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0)  # asyncio has yet to connect its pipes
    await _cancel_and_check(task, pids[0], fds)


async def test_process_isolation_a_cancel_while_the_result_pipe_connects_ends_the_child(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel that lands in the ``connect_read_pipe`` of the result pipe, once the child has started:
    the group was not ended, so the child waited for its request on stdin for as long as the service
    ran."""
    job = make_job("python", {"function": f"{MOD}:sleeper", "isolation": "process"})
    loop = asyncio.get_running_loop()
    connect = loop.connect_read_pipe
    connecting: list[asyncio.Task[Any] | None] = []

    async def noted(*args: Any, **kwargs: Any) -> Any:  # (asyncio's own pipes connect from their task)
        connecting.append(asyncio.current_task())
        return await connect(*args, **kwargs)

    monkeypatch.setattr(loop, "connect_read_pipe", noted)
    fds = _open_fds()
    task = asyncio.create_task(PythonExecutor().execute(job, make_run(job), Lines()))
    deadline = time.monotonic() + 20
    while task not in connecting:  # the run's task called it in the turn that just ended: it waits in
        assert time.monotonic() < deadline and not task.done()  # it for one more turn at least
        await asyncio.sleep(0)
    [pid] = children_running("python_child")
    await _cancel_and_check(task, pid, fds)


async def test_return_values_not_kept_say_why() -> None:
    async with Chronos.embedded() as chronos:
        odd = await run_once(chronos, "unserializable")
        big = await run_once(chronos, "huge")
        none = await run_once(chronos, "no_value")
    assert odd.status is RunStatus.SUCCEEDED and result(odd).startswith("<object object at")  # str()
    assert big.status is RunStatus.SUCCEEDED and big.result is None
    assert big.output == ("[chronos] the return value (100002 characters of JSON) was not kept: over the "
                          "limit of 65536")
    assert none.output == "nothing to return" and none.result is None


async def test_the_module_allow_list_refuses_other_modules_at_create_and_at_execution() -> None:
    config = ExecutorConfig(python_modules=(MOD,))
    async with Chronos.embedded(executor_config=config) as chronos:
        with pytest.raises(InvalidJob) as info:
            await chronos.jobs.create({"name": "evil", "type": "python",
                                       "payload": {"function": "os:system", "args": ["id"]}})
        assert info.value.errors[0].loc == ("payload", "function")
        assert "CHRONOS_PYTHON_MODULES" in info.value.errors[0].reason
        ok = await run_once(chronos, "where")
        assert ok.status is RunStatus.SUCCEEDED
        # a job stored by a process with another allow-list is refused where it would run
        chronos.executors["python"].allowed_modules = ("tests.other",)  # type: ignore[attr-defined]
        job = await chronos.jobs.get(ok.job_id)
        await chronos.jobs.trigger(job.id)
        runs = await finished(chronos, job.id, 2)
    assert runs[1].status is RunStatus.FAILED and "allow-list" in (runs[1].error or "")


def test_module_allowed_matches_dotted_prefixes() -> None:
    assert module_allowed("myapp", ["myapp"]) and module_allowed("myapp.jobs.x", ["myapp"])
    assert module_allowed("myapp.jobs", ["myapp."]) and module_allowed("os", ["*"])
    assert not module_allowed("myapplication", ["myapp"]) and not module_allowed("os", [])
    assert not module_allowed("my", ["myapp"])


def _nested() -> Any:
    def inner() -> None: ...

    return inner


def test_function_ref_refuses_what_another_process_could_not_import() -> None:
    assert function_ref(pyjobs.report) == f"{MOD}:report"
    with pytest.raises(ValueError, match="lambda"):
        function_ref(lambda: None)
    with pytest.raises(ValueError, match="inside a function"):
        function_ref(_nested())
    with pytest.raises(ValueError, match="bound to an instance"):
        function_ref(Path("x").exists)


async def test_a_payload_that_names_no_function_is_refused() -> None:
    async with Chronos.embedded() as chronos:
        with pytest.raises(InvalidJob) as info:
            await chronos.jobs.create({"name": "bad", "type": "python", "payload": {"function": "os.system"}})
    assert info.value.errors[0].loc == ("payload", "function")


async def test_a_child_process_starts_from_a_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHRONOS_API_TOKENS", "service-token-not-for-jobs")
    monkeypatch.setenv("PASSED_ON", "yes")
    config = ExecutorConfig(shell_pass_env=("PASSED_ON",))
    async with Chronos.embedded(executor_config=config) as chronos:
        run = await run_once(chronos, "environment", payload={"isolation": "process"})
    names = result(run)
    assert "CHRONOS_API_TOKENS" not in names and "PASSED_ON" in names and "PATH" in names


async def test_secret_named_arguments_are_masked_in_output_result_and_the_job() -> None:
    from chronos_core.payloads import JobTypes

    async with Chronos.embedded() as chronos:
        run = await run_once(chronos, "leak", payload={"kwargs": {"api_token": "tok-0123456789"}})
        job = await chronos.jobs.get(run.job_id)
    assert run.status is RunStatus.SUCCEEDED
    assert "tok-0123456789" not in run.output and run.output == "using token=***" and run.result == "***"
    assert job.payload["kwargs"]["api_token"] == "tok-0123456789"  # stored as given...
    assert JobTypes().redact("python", job.payload)["kwargs"]["api_token"] == "***"  # ...shown masked
