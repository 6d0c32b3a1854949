"""The shell executor against real processes: streaming, exit codes, process-group cleanup, memory."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from pathlib import Path

import pytest

from chronos_adapters.executors import ShellExecutor
from chronos_core.errors import ExecutionFailed

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


async def test_a_cancel_while_the_process_starts_ends_it_at_once(tmp_path: Path) -> None:
    """A cancel that lands inside ``create_subprocess_exec`` (the process is running, asyncio is still
    connecting its pipes): asyncio on its own SIGKILLs the shell alone, then waits for the pipes to
    close, and the shell's child holds them open until it exits. The cancel hung for the whole command
    (the API's cancel of a just-started ``sleep 30`` run, under load) and the command ran on."""
    marker = tmp_path / "pids"
    job = make_job("shell", {"command": f"sleep 300 & echo $$ $! > {marker}; wait"})
    task = asyncio.create_task(ShellExecutor().execute(job, make_run(job), Lines()))
    deadline = time.monotonic() + 20
    while not children_running(str(marker)):  # the turn of the loop that forked it has just ended:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0)  # asyncio has yet to connect its pipes
    # Block the loop (on purpose) until the shell has forked its child: the pipes stay unconnected,
    # as on a loaded machine where the cancel request comes in while the loop is slow.
    while len(marker.read_text().split() if marker.exists() else ()) < 2 or \
            not marker.read_text().endswith("\n"):
        assert time.monotonic() < deadline, "the shell did not start"
        time.sleep(0.01)  # noqa: ASYNC251 - the point: the loop must not turn
    pids = [int(p) for p in marker.read_text().split()]
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(20):  # (a TimeoutError here: the cancel hung)
            await task
    assert time.monotonic() - started < 10  # the group got SIGTERM at once, not after 300 s
    assert [p for p in pids if alive(p)] == []
    assert live_group_members(pgid=pids[0]) == []


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
