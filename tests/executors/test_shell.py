"""The shell executor against real processes: streaming, exit codes, process-group cleanup, memory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from chronos_adapters.executors import ShellExecutor
from chronos_core.errors import ExecutionFailed
from chronos_core.ports import LogSink

from ._support import Lines, children_running, live_group_members, make_job, make_run


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (read independently of the executor's own check)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state.split()[1]


async def run(ex: ShellExecutor, payload: dict, log: Lines | None = None, limit: float = 30):  # type: ignore[no-untyped-def]
    job = make_job("shell", payload)
    return await asyncio.wait_for(ex.execute(job, make_run(job), log or Lines()), limit)


async def test_command_output_lines_and_exit_code_zero() -> None:
    log = Lines()
    result = await run(ShellExecutor(), {"command": "echo one; echo two >&2; printf 'no newline'"}, log)
    assert result.ok and result.exit_code == 0
    assert log.of("stdout") == ["one", "no newline"]
    assert log.of("stderr") == ["two"]


async def test_argv_runs_without_a_shell_with_env_and_cwd(tmp_path: Path) -> None:
    log = Lines()
    result = await run(ShellExecutor(), {
        "argv": ["/bin/sh", "-c", 'pwd; echo "$FOO"; echo "$CHRONOS_ATTEMPT"; echo "$1"', "x", "$HOME"],
        "env": {"FOO": "bar"}, "cwd": str(tmp_path)}, log)
    assert result.ok
    assert log.of() == [str(tmp_path), "bar", "1", "$HOME"]  # "$HOME" reached the program unexpanded


async def test_nonzero_exit_fails_with_the_code() -> None:
    result = await run(ShellExecutor(), {"command": "echo bad; exit 3"})
    assert not result.ok and result.exit_code == 3 and result.error == "exit code 3"
    assert result.retryable


async def test_death_by_signal_is_reported() -> None:
    result = await run(ShellExecutor(), {"command": "kill -KILL $$"})
    assert not result.ok and result.exit_code == -9 and "SIGKILL" in (result.error or "")


@pytest.mark.parametrize("payload", [
    {"argv": ["/no/such/program"]},
    {"command": "true", "cwd": "/no/such/dir"},
])
async def test_what_cannot_start_is_not_retried(payload: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ExecutionFailed) as err:
        await run(ShellExecutor(), payload)
    assert not err.value.retryable and "cannot start" in str(err.value)


async def test_bad_payload_is_not_retried() -> None:
    with pytest.raises(ExecutionFailed) as err:
        await run(ShellExecutor(), {"command": "true", "argv": ["true"]})
    assert not err.value.retryable and "invalid payload" in str(err.value)


async def test_refused_when_shell_is_not_allowed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(ExecutionFailed) as err:
        await run(ShellExecutor(allowed=False), {"command": f"touch {marker}"})
    assert not err.value.retryable and "CHRONOS_ALLOW_SHELL" in str(err.value)
    assert not marker.exists()


async def test_lines_arrive_while_the_command_runs_and_cancel_ends_the_group() -> None:
    first = asyncio.Event()
    pids: list[int] = []

    async def sink(line: str, stream: str = "stdout") -> None:
        pids.extend(int(p) for p in line.split())
        first.set()

    job = make_job("shell", {"command": "sleep 300 & echo $$ $!; sleep 300"})
    task = asyncio.create_task(ShellExecutor().execute(job, make_run(job), sink))
    async with asyncio.timeout(20):
        await first.wait()  # the line is here while the command still runs
    assert not task.done()
    assert len(pids) == 2 and all(alive(p) for p in pids)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the shell and its backgrounded grandchild are both gone
    assert [p for p in pids if alive(p)] == []


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def fds_back_to(before: set[str]) -> None:
    """The run's descriptors are closed once its task has ended: the executor waits for its process, and
    asyncio has the process end only once each of its pipes is closed (a few turns more are given)."""
    for _ in range(10):
        await asyncio.sleep(0)
    assert open_fds() - before == set(), "a pipe of the run is left open"


@pytest.fixture(autouse=True)
def _no_gc() -> Iterator[None]:
    """A transport left open is closed when collected: no collection hides one in these tests."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def gone(pids: list[int]) -> list[int]:
    """Those of ``pids`` still alive after a (generous) while for a SIGKILL to take effect."""
    deadline = time.monotonic() + 10
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return left


def kill_all(pids: list[int]) -> None:
    """What a failing test would leave running (on a shared machine) is not left."""
    for p in pids[:1]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p, signal.SIGKILL)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def read_pids(marker: Path) -> list[int]:
    text = marker.read_text() if marker.exists() else ""
    return [int(p) for p in text.split()] if text.endswith("\n") and len(text.split()) == 2 else []


@contextlib.asynccontextmanager
async def started(command: str, marker: Path, *, window: bool, kill_grace: float = 5.0,
                  log: LogSink | None = None) -> AsyncIterator[tuple[asyncio.Task[Any], list[int]]]:
    """Run ``command``, which writes "<pgid> <pid>" to ``marker``, and yield (its task, those pids).

    ``window``: the task is held inside ``create_subprocess_exec``, with the process running and its pipes
    not connected yet: the loop is turned only until the shell is a child of this process (the turn that
    forked it has just ended; asyncio connects the pipes in later turns), then blocked (on purpose) until
    the shell has written the marker, as on a loaded machine where the cancel comes while the loop is
    slow. Else the command has started and the pipes are connected. The group is SIGKILLed at the end,
    whatever the outcome."""
    job = make_job("shell", {"command": command})
    ex = ShellExecutor(kill_grace=kill_grace)
    task = asyncio.create_task(ex.execute(job, make_run(job), log or Lines()))
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 20
        if window:
            while not children_running(str(marker)):
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0)
            while not (pids := read_pids(marker)):
                assert time.monotonic() < deadline, "the shell did not start"
                time.sleep(0.01)  # noqa: ASYNC251 - the point: the loop must not turn
        else:
            while not (pids := read_pids(marker)):
                assert time.monotonic() < deadline and not task.done(), "the shell did not start"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # (the pipes are connected by now, many turns later)
        yield task, pids
    finally:
        kill_all(pids)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=10)


async def ends_cancelled(task: asyncio.Task[Any]) -> None:
    done, _ = await asyncio.wait({task}, timeout=20)  # (not done: the cancel hung)
    assert done, "the cancelled run did not end"
    assert task.cancelled()


async def test_a_cancel_while_the_process_starts_ends_it_at_once(tmp_path: Path) -> None:
    """A cancel that lands inside ``create_subprocess_exec`` (the process is running, asyncio is still
    connecting its pipes): asyncio on its own SIGKILLs the shell alone, then waits for the pipes to
    close, and the shell's child holds them open until it exits. The cancel hung for the whole command
    (the API's cancel of a just-started ``sleep 30`` run, under load) and the command ran on."""
    marker = tmp_path / "pids"
    fds = open_fds()
    async with started(f"sleep 300 & echo $$ $! > {marker}; wait", marker, window=True) as (task, pids):
        task.cancel()
        begun = time.monotonic()
        await ends_cancelled(task)
        assert time.monotonic() - begun < 10  # the group got SIGTERM at once, not after 300 s
        assert [p for p in pids if alive(p)] == []
        assert live_group_members(pgid=pids[0]) == []
        await fds_back_to(fds)


@pytest.mark.parametrize("window", [True, False], ids=["while-it-starts", "once-started"])
async def test_a_second_cancel_during_the_grace_kills_the_group_at_once(tmp_path: Path, window: bool) -> None:
    """A group that ignores SIGTERM, cancelled (a timeout, say), then cancelled again during the grace
    (the user clicks cancel as the run seems stuck): the second cancel cut the wait for the grace short,
    so no SIGKILL came, and the command ran on after the run was recorded as ended. Now it means "kill
    now"; the grace here is long enough that only that can end the group in the test's time."""
    marker = tmp_path / "pids"
    fds = open_fds()
    command = f"trap '' TERM; sleep 300 & echo $$ $! > {marker}; wait"
    async with started(command, marker, window=window, kill_grace=120) as (task, pids):
        task.cancel()
        await asyncio.sleep(0.5)  # (in the grace by now, as a rule; earlier, the test holds the same)
        assert not task.done()  # (SIGTERM is ignored)
        task.cancel()
        await ends_cancelled(task)
        assert await gone(pids) == [], "the group runs on after the run ended"
        assert live_group_members(pgid=pids[0]) == []
        await fds_back_to(fds)


async def test_a_timeout_then_a_cancel_during_the_grace(tmp_path: Path) -> None:
    """The run's timeout fires (the group ignores SIGTERM), then a cancel comes during the grace: the
    group is SIGKILLed, and the cancel is what comes out (not the timeout)."""
    marker = tmp_path / "pids"
    command = f"trap '' TERM; sleep 300 & echo $$ $! > {marker}; wait"
    job = make_job("shell", {"command": command})
    timeouts: list[asyncio.Timeout] = []

    async def timed() -> object:
        async with asyncio.timeout(None) as cm:
            timeouts.append(cm)
            return await ShellExecutor(kill_grace=120).execute(job, make_run(job), Lines())

    fds = open_fds()
    task = asyncio.create_task(timed())
    pids: list[int] = []
    try:
        async with asyncio.timeout(20):
            while not (pids := read_pids(marker)):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        timeouts[0].reschedule(asyncio.get_running_loop().time())  # it fires on the next turn
        async with asyncio.timeout(20):
            while not timeouts[0].expired():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert not task.done()  # (SIGTERM is ignored: in the grace)
        task.cancel()
        await ends_cancelled(task)
        assert await gone(pids) == [], "the group runs on after the run ended"
        await fds_back_to(fds)
    finally:
        kill_all(pids)


async def test_a_flooding_command_cancelled_while_it_starts_is_read_to_the_end(tmp_path: Path) -> None:
    """A command that fills its pipes (``yes``), cancelled while it starts: nothing read the pipes, so
    asyncio paused them (128 KiB waiting) and never saw their end; the cancel waited 5 s for them, and
    a pipe's descriptor and transport were left open (ResourceWarning when collected). Now what the
    pipes hold is read into the log, they close, and nothing of the run is left open."""
    marker = tmp_path / "pids"
    fds = open_fds()
    log = Lines()
    async with started(f"echo $$ $$ > {marker}; exec yes {marker}", marker, window=True, log=log) \
            as (task, pids):
        task.cancel()
        await ends_cancelled(task)
        assert not alive(pids[0])
        await fds_back_to(fds)
    assert set(log.of("stdout")) <= {str(marker)}


async def test_a_flooding_command_cancelled_once_started_leaves_nothing_open(tmp_path: Path) -> None:
    """The same once started, with a log sink that yields for each line (as the worker's does): the
    pumps were cancelled first, and the paused pipe stayed open."""
    marker = tmp_path / "pids"

    async def sink(line: str, stream: str = "stdout") -> None:
        await asyncio.sleep(0)

    fds = open_fds()
    async with started(f"echo $$ $$ > {marker}; exec yes {marker}", marker, window=False, log=sink) \
            as (task, pids):
        task.cancel()
        await ends_cancelled(task)
        assert not alive(pids[0])
        await fds_back_to(fds)


async def test_a_start_that_never_ends_does_not_hold_the_cancel_for_ever(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When the loop shuts down during a start, ``asyncio.run`` cancels asyncio's own pipe-connecting
    task too, and the start never completes (CPython gh-125502): waiting for it whatever the cancels,
    the run's task could not be ended at all. The wait is bounded."""
    release = asyncio.Event()

    async def stuck(*args: Any, **kwargs: Any) -> Any:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()
        raise OSError("not started")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", stuck)
    job = make_job("shell", {"command": "true"})
    task = asyncio.create_task(ShellExecutor().execute(job, make_run(job), Lines()))
    try:
        await asyncio.sleep(0.1)
        task.cancel()
        await ends_cancelled(task)
    finally:
        release.set()
        await asyncio.wait({task}, timeout=10)
        await asyncio.sleep(0.05)  # (the start ends, its error is taken)


async def test_timeout_leaves_no_process_of_the_group() -> None:
    pids: list[int] = []

    async def sink(line: str, stream: str = "stdout") -> None:
        pids.extend(int(p) for p in line.split())

    job = make_job("shell", {"command": "sleep 300 & echo $$ $!; sleep 300"})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ShellExecutor().execute(job, make_run(job), sink), 1.5)
    assert [p for p in pids if alive(p)] == []
    assert live_group_members(pgid=pids[0]) == []


async def test_a_process_ignoring_sigterm_is_killed_after_the_grace() -> None:
    pids: list[int] = []

    async def sink(line: str, stream: str = "stdout") -> None:
        pids.append(int(line))

    job = make_job("shell", {"command": "trap '' TERM; echo $$; sleep 300; sleep 300"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ShellExecutor(kill_grace=0.5).execute(job, make_run(job), sink), 1.5)
    assert pids and not alive(pids[0])  # SIGTERM was ignored: SIGKILL ended it
    assert loop.time() - started < 15  # after the grace, not after 300 s


async def test_background_leftovers_neither_hold_the_run_nor_survive_it() -> None:
    log = Lines()
    # the background sleep inherits stdout: without the leftover cleanup the pipe would stay open 300 s
    result = await run(ShellExecutor(), {"command": "sleep 300 & echo $!"}, log, limit=20)
    assert result.ok
    assert not alive(int(log.of()[0]))


async def test_huge_output_is_streamed_in_bounded_memory() -> None:
    total = 30_000_000
    seen = {"chars": 0, "longest": 0, "calls": 0}

    async def count(line: str, stream: str = "stdout") -> None:
        seen["chars"] += len(line)
        seen["longest"] = max(seen["longest"], len(line))
        seen["calls"] += 1

    job = make_job("shell", {"command": f"head -c {total} /dev/zero | tr '\\0' x"})
    tracemalloc.start()
    try:
        result = await asyncio.wait_for(ShellExecutor(max_line=16384).execute(job, make_run(job), count), 120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok
    assert seen["chars"] == total  # every byte went through the sink...
    assert seen["longest"] <= 16384  # ...in pieces of at most max_line
    assert peak < 2_000_000, f"peak {peak} bytes for {total} bytes of output"
