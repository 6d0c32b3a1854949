"""Shell jobs: a command through ``/bin/sh -c`` or a program with its arguments, in its own process
group, with stdout and stderr streamed line by line as they come.

On timeout or cancellation the whole group gets SIGTERM, then SIGKILL after ``kill_grace`` seconds, so
no grandchild outlives the run. Shell jobs execute code on the host: whether they are allowed at all is
decided when a job is created (``allow_shell``), not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import ClassVar

from chronos_core.errors import ExecutionFailed
from chronos_core.models import Job, Run
from chronos_core.payloads import ShellPayload
from chronos_core.ports import ExecutionResult, Executor, LogSink

__all__ = ["ShellExecutor"]

_CHUNK = 64 * 1024


class ShellExecutor(Executor):
    type_name: ClassVar[str] = "shell"

    def __init__(self, *, kill_grace: float = 5.0, max_line: int = 16 * 1024,
                 base_env: dict[str, str] | None = None) -> None:
        self.kill_grace = kill_grace
        self.max_line = max_line
        self.base_env = dict(os.environ) if base_env is None else dict(base_env)

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        p = ShellPayload.model_validate(job.payload)
        env = {**self.base_env, **p.env, "CHRONOS_JOB_ID": job.id, "CHRONOS_RUN_ID": run.id,
               "CHRONOS_ATTEMPT": str(run.attempt)}
        try:
            if p.command is not None:
                proc = await asyncio.create_subprocess_exec(
                    "/bin/sh", "-c", p.command, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=p.cwd,
                    start_new_session=True)
            else:
                assert p.argv is not None
                proc = await asyncio.create_subprocess_exec(
                    *p.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, env=env, cwd=p.cwd, start_new_session=True)
        except FileNotFoundError as exc:
            raise ExecutionFailed(f"cannot start: {exc.strerror}: {exc.filename}", retryable=False) from None
        except PermissionError as exc:
            raise ExecutionFailed(f"cannot start: {exc.strerror}: {exc.filename}", retryable=False) from None
        except NotADirectoryError as exc:
            raise ExecutionFailed(f"cannot start: {exc}", retryable=False) from None
        try:
            assert proc.stdout is not None and proc.stderr is not None
            await asyncio.gather(self._pump(proc.stdout, "stdout", log),
                                 self._pump(proc.stderr, "stderr", log))
            code = await proc.wait()
        except BaseException:
            await self._kill_group(proc)
            raise
        # The command is done; anything it left behind in its group goes too.
        await self._kill_group(proc, only_leftovers=True)
        if code == 0:
            return ExecutionResult(ok=True, exit_code=0)
        if code < 0:
            return ExecutionResult(ok=False, exit_code=code,
                                   error=f"killed by signal {signal.Signals(-code).name}")
        return ExecutionResult(ok=False, exit_code=code, error=f"exit code {code}")

    async def _pump(self, stream: asyncio.StreamReader, name: str, log: LogSink) -> None:
        """Send each line as it arrives; very long lines are cut into ``max_line`` pieces."""
        pending = b""
        while True:
            chunk = await stream.read(_CHUNK)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                await log(line.decode("utf-8", "replace"), name)
            while len(pending) > self.max_line:
                await log(pending[: self.max_line].decode("utf-8", "replace"), name)
                pending = pending[self.max_line:]
        if pending:
            await log(pending.decode("utf-8", "replace"), name)

    async def _kill_group(self, proc: asyncio.subprocess.Process, only_leftovers: bool = False) -> None:
        pgid = proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if only_leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            return
        try:
            async with asyncio.timeout(self.kill_grace):
                await proc.wait()
                while _group_alive(pgid):  # noqa: ASYNC110 - no event tells when a group empties
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await asyncio.shield(proc.wait())


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
