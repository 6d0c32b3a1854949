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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, cast

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

        def read(proc: asyncio.subprocess.Process) -> asyncio.Future[Any]:
            assert proc.stdout is not None and proc.stderr is not None
            return asyncio.gather(self._pump(proc.stdout, "stdout", log),
                                  self._pump(proc.stderr, "stderr", log))

        try:
            proc = await start_in_group(
                self.kill_grace, *argv, read=read, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=p.cwd)
        except OSError as exc:  # no such program / directory, not executable, ...
            where = f": {exc.filename}" if exc.filename else ""
            raise ExecutionFailed(f"cannot start: {exc.strerror or exc}{where}", retryable=False) from None
        pgid = proc.pid  # start_new_session: the child leads a new session and process group
        pumps = read(proc)
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
                _close_pipes(proc)  # (not left open until the transport is collected)
                await log(f"[chronos] output still open {_DRAIN:g}s after the command ended; "
                          "stopped reading", "stderr")
        except BaseException:
            # the pumps go on reading while the group ends, so the pipes are read to their end (the last
            # lines kept) and close; a further cancel does not cut this short (it hurries the SIGKILL)
            await stop_group(proc, self.kill_grace, pumps)
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


async def start_in_group(grace: float, *argv: str,
                         read: Callable[[asyncio.subprocess.Process], asyncio.Future[Any]] | None = None,
                         **kwargs: Any) -> asyncio.subprocess.Process:
    """``create_subprocess_exec(*argv, **kwargs)`` in a new session: the child leads its own process
    group (its pid is the group's id). A cancel while it starts ends the whole group before it goes on.

    Cancelled inside ``create_subprocess_exec``, the process runs already (asyncio is still connecting its
    pipes, a few turns of the loop). Left to asyncio, the start would SIGKILL the child alone, then wait
    for the pipes to close, which the child's own children hold open: the cancel would last as long as
    they run, and they would run on. Instead the start completes (further cancels are held back
    meanwhile, and then make the SIGKILL come at once) and the group is ended by ``stop_group``, with
    ``read(proc)`` (if given) reading the pipes to their end; then the cancel goes on: when this raises,
    nothing of the start is left. An ``OSError`` (no such program, ...) comes as from
    ``create_subprocess_exec``.

    The wait for the start is bounded (``_DRAIN``): when the loop shuts down, ``asyncio.run`` cancels
    asyncio's own pipe-connecting task too, and the start then never ends (CPython gh-125502): neither
    would this task, nor the loop's shutdown. After the bound the start is cancelled again, which ends
    it; should it complete after all, its group is SIGKILLed."""
    spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(*argv, start_new_session=True, **kwargs))
    try:
        return await asyncio.shield(spawn)
    except asyncio.CancelledError:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DRAIN
        hurry = False
        while not spawn.done() and loop.time() < deadline:
            try:
                await asyncio.wait({spawn}, timeout=deadline - loop.time())
            except asyncio.CancelledError:
                hurry = True  # a further cancel
        if not spawn.done():
            # (asyncio's own cleanup waits in it for pipes never connected: cancelled again, it ends)
            spawn.cancel()
            spawn.add_done_callback(_kill_late)
        elif not spawn.cancelled() and spawn.exception() is None:
            proc = spawn.result()
            await stop_group(proc, grace, read(proc) if read is not None else None, hurry=hurry)
        # (else it failed: asyncio killed and reaped the process itself)
        raise


def _kill_late(spawn: asyncio.Future[asyncio.subprocess.Process]) -> None:
    """A start given up on (``start_in_group``) that completes after all: end it at once."""
    _retrieve(spawn)
    if spawn.cancelled() or spawn.exception() is not None:
        return
    proc = spawn.result()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _close_pipes(proc)


async def stop_group(proc: asyncio.subprocess.Process, grace: float,
                     reading: asyncio.Future[Any] | None = None, *, hurry: bool = False) -> None:
    """End the group ``proc`` leads (``end_group``: SIGTERM, SIGKILL after ``grace`` seconds, at once if
    ``hurry``). ``reading`` (if given) reads ``proc``'s pipes: it goes on while the group ends, then
    gets ``_DRAIN`` seconds to reach their end (the group is gone: they close), and is cancelled after
    that. The pipes still open are closed, and ``proc`` is waited for (at most ``_DRAIN`` seconds).

    Further cancels do not cut this short: the group would be left running (after a SIGTERM it ignores,
    say) once the run is recorded as ended. A cancel while this runs makes the SIGKILL come at once, and
    is raised (``CancelledError``) once it is over."""
    hurried = asyncio.Event()
    if hurry:
        hurried.set()
    stopping = asyncio.ensure_future(_stop_group(proc, grace, reading, hurried))
    cancelled = False
    while not stopping.done():  # (bounded: grace + 2 * _DRAIN)
        try:
            await asyncio.wait({stopping})
        except asyncio.CancelledError:
            cancelled = True
            hurried.set()
    stopping.result()  # (cancelled itself: the loop shuts down; end_group has SIGKILLed the group)
    if cancelled:
        raise asyncio.CancelledError


async def _stop_group(proc: asyncio.subprocess.Process, grace: float, reading: asyncio.Future[Any] | None,
                      hurry: asyncio.Event) -> None:
    try:
        await end_group(proc.pid, grace, hurry)
        if reading is not None:
            await asyncio.wait({reading}, timeout=_DRAIN)
    finally:
        if reading is not None:
            reading.cancel()  # (done already, as a rule; else a sink is stuck, or a pipe is held outside)
            reading.add_done_callback(_retrieve)  # (not awaited below when this task is cancelled)
        # Unread, a pipe stays open: asyncio pauses its reading once 128 KiB wait, so it never sees the
        # end, and proc.wait() waits for it.
        _close_pipes(proc)
    if reading is not None:
        with contextlib.suppress(BaseException):  # (retrieved: its error, if any, is not logged again)
            await reading
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_DRAIN):
            await proc.wait()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    """Close ``proc``'s pipes that are still open (their ends here), not the process."""
    transport = cast(Any, proc)._transport  # (asyncio gives no public way to it)
    for fd in (0, 1, 2):
        pipe = transport.get_pipe_transport(fd)
        if pipe is not None:
            pipe.close()


async def end_group(pgid: int, grace: float, hurry: asyncio.Event | None = None) -> None:
    """SIGTERM to the group, SIGKILL to whatever is left after ``grace`` seconds, or once ``hurry`` is
    set. Cancelled while it waits, it sends the SIGKILL at once, then the cancel goes on."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    hurried = hurry if hurry is not None else asyncio.Event()
    try:
        while group_members(pgid) and loop.time() < deadline and not hurried.is_set():  # noqa: ASYNC110
            await asyncio.sleep(_POLL)  # (no event tells when a group empties)
    finally:
        if group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
