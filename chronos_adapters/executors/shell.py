"""Shell jobs: a command through ``/bin/sh -c`` or a program with its arguments, in its own process
group (a new session), with stdout and stderr streamed line by line as they come.

* Output is never buffered whole: it is read in 64 KiB chunks and sent line by line (lines longer than
  ``max_line``, 1 MiB, in pieces); the worker masks secrets in each line, then cuts it into pieces of
  its own line limit (16 KiB), and keeps only a capped tail. (A secret is only split - and so not
  masked - where a single line passes 1 MiB.)
* Environment: a job starts from a minimal one - ``PATH``, ``HOME``, ``LANG``, ``TZ`` of the service,
  plus the variables named in ``pass_env`` - then its own ``env`` and ``CHRONOS_JOB_ID`` /
  ``CHRONOS_RUN_ID`` / ``CHRONOS_ATTEMPT``. The service's own variables (API tokens, SMTP password,
  database URLs) are not inherited.
* When the command itself exits, whatever it left running in its group gets SIGTERM (then SIGKILL), so a
  backgrounded grandchild neither outlives the run nor holds its output pipe open.
* On timeout or cancellation the whole group gets SIGTERM, then SIGKILL after ``kill_grace`` seconds.
  (A grandchild that leaves the group on purpose, with ``setsid``, escapes: that needs cgroups.)
* Shell jobs execute code on the host: when ``allowed`` is False, every shell run fails (not retried),
  on top of the create-time check in ``Jobs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from chronos_core.errors import ExecutionFailed
from chronos_core.models import Job, Run
from chronos_core.payloads import ShellPayload
from chronos_core.ports import ExecutionResult, Executor, LogSink

from ._common import parse_payload

__all__ = ["BASE_ENV", "ShellExecutor", "end_group", "group_members", "minimal_env", "start_in_group",
           "stop_group"]

_CHUNK = 64 * 1024
_POLL = 0.05
_LEFTOVER_GRACE = 1.0  # seconds leftovers of a finished command get between SIGTERM and SIGKILL
_DRAIN = 5.0  # seconds to read what is left in the pipes once the group is gone
BASE_ENV = ("PATH", "HOME", "LANG", "TZ")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def minimal_env(pass_env: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a shell job inherits: ``PATH`` (a default one if unset), ``HOME``, ``LANG``, ``TZ`` and the
    variables named in ``pass_env`` that are set."""
    source = os.environ if environ is None else environ
    env = {k: source[k] for k in (*BASE_ENV, *pass_env) if k in source}
    env.setdefault("PATH", _DEFAULT_PATH)
    return env


class ShellExecutor(Executor):
    type_name: ClassVar[str] = "shell"

    def __init__(self, *, kill_grace: float = 5.0, max_line: int = 1024 * 1024,
                 base_env: dict[str, str] | None = None, pass_env: Iterable[str] = (),
                 allowed: bool = True) -> None:
        self.kill_grace = kill_grace
        self.max_line = max_line
        self.base_env = minimal_env(pass_env) if base_env is None else dict(base_env)
        self.allowed = allowed

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        if not self.allowed:
            raise ExecutionFailed("shell jobs are disabled on this worker (CHRONOS_ALLOW_SHELL is off)",
                                  retryable=False)
        p = parse_payload(ShellPayload, job.payload)
        env = {**self.base_env, **p.env, "CHRONOS_JOB_ID": job.id, "CHRONOS_RUN_ID": run.id,
               "CHRONOS_ATTEMPT": str(run.attempt)}
        argv = ["/bin/sh", "-c", p.command] if p.command is not None else list(p.argv or ())
        try:
            proc = await start_in_group(
                self.kill_grace, *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, cwd=p.cwd)
        except OSError as exc:  # no such program / directory, not executable, ...
            where = f": {exc.filename}" if exc.filename else ""
            raise ExecutionFailed(f"cannot start: {exc.strerror or exc}{where}", retryable=False) from None
        pgid = proc.pid  # start_new_session: the child leads a new session and process group
        assert proc.stdout is not None and proc.stderr is not None
        pumps = asyncio.gather(self._pump(proc.stdout, "stdout", log),
                               self._pump(proc.stderr, "stderr", log))
        try:
            # proc.wait() also waits for the pipes to close, which a backgrounded grandchild can keep
            # open; the return code is known as soon as the command itself exits.
            while proc.returncode is None and not pumps.done():
                await asyncio.wait({pumps}, timeout=_POLL)
            if pumps.done():
                pumps.result()  # a failing log sink surfaces here
            code = await proc.wait() if proc.returncode is None else proc.returncode
            await end_group(pgid, _LEFTOVER_GRACE)
            try:
                async with asyncio.timeout(_DRAIN):
                    await pumps
            except TimeoutError:  # something outside the group still holds a pipe open
                await log(f"[chronos] output still open {_DRAIN:g}s after the command ended; "
                          "stopped reading", "stderr")
        except BaseException:
            pumps.cancel()
            await stop_group(proc, self.kill_grace)
            with contextlib.suppress(BaseException):
                await pumps
            raise
        if code == 0:
            return ExecutionResult(ok=True, exit_code=0)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return ExecutionResult(ok=False, exit_code=code, error=f"killed by signal {name}")
        return ExecutionResult(ok=False, exit_code=code, error=f"exit code {code}")

    async def _pump(self, stream: asyncio.StreamReader, name: str, log: LogSink) -> None:
        """Send each line as it arrives; very long lines are cut into ``max_line`` pieces. Memory use is
        bounded by ``max_line`` + one chunk, whatever the output size."""
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


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, read from /proc (Linux). Where there is no
    /proc: ``[pgid]`` while ``killpg(pgid, 0)`` finds the group, else ``[]``."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." - comm may contain spaces and parentheses
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members


async def start_in_group(grace: float, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """``create_subprocess_exec(*argv, **kwargs)`` in a new session: the child leads its own process
    group (its pid is the group's id). A cancel while it starts ends the whole group before it goes on.

    Cancelled inside ``create_subprocess_exec``, the process runs already (asyncio is still connecting its
    pipes, a few turns of the loop). Left to asyncio, the start would SIGKILL the child alone, then wait
    for the pipes to close, which the child's own children hold open: the cancel would last as long as
    they run, and they would run on. Instead the start completes (further cancels are ignored meanwhile)
    and the group is ended as by ``stop_group``, then the cancel goes on: when this raises, nothing of
    the start is left. An ``OSError`` (no such program, ...) comes as from ``create_subprocess_exec``."""
    spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(*argv, start_new_session=True, **kwargs))
    try:
        return await asyncio.shield(spawn)
    except asyncio.CancelledError:
        while not spawn.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({spawn})
        if not spawn.cancelled() and spawn.exception() is None:
            await stop_group(spawn.result(), grace)
        # (else it failed: asyncio killed and reaped the process itself)
        raise


async def stop_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """End the group ``proc`` leads (``end_group``), then wait, at most ``_DRAIN`` seconds, for
    ``proc`` to be reaped and its pipes to close (the group is gone: they close)."""
    await end_group(proc.pid, grace)
    with contextlib.suppress(BaseException):
        async with asyncio.timeout(_DRAIN):
            await asyncio.shield(proc.wait())


async def end_group(pgid: int, grace: float) -> None:
    """SIGTERM to the group, SIGKILL to whatever is left after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        async with asyncio.timeout(grace):
            while group_members(pgid):  # noqa: ASYNC110 - no event tells when a group empties
                await asyncio.sleep(_POLL)
            return
    except TimeoutError:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
