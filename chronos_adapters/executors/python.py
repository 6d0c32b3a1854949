"""Python jobs: import ``"package.module:function"`` and call it with the job's JSON arguments.

* **Allow-list.** The module must match ``allowed_modules`` (prefixes on dotted boundaries, see
  ``chronos_core.python.module_allowed``) *before* anything is imported: importing runs code. ``None``
  allows every module (the embedded library: the program names its own functions); the service passes
  ``CHRONOS_PYTHON_MODULES`` (empty: none). ``allow(ref)`` adds one function (what ``Chronos.schedule``
  does for a function the program hands over). Checked when a job is created (``check_payload``) and
  again before each execution (a job stored by another process).
* **Where it runs.** ``async def`` on the worker's event loop; a plain function in this executor's own
  thread pool (``threads``); with ``isolation: process`` in a child process (``python_child``) in its own
  session, started from a minimal environment (``PATH``, ``HOME``, ``LANG``, ``TZ``, ``PYTHONPATH`` and
  the ``pass_env`` names, as shell jobs: not the service's tokens and URLs), whose group gets SIGTERM,
  then SIGKILL after ``kill_grace``, on timeout or cancel. A thread cannot be killed: on timeout/cancel
  its ``RunContext.cancelled`` turns true, the run is recorded (``timed_out``/``cancelled``) at once,
  and whatever the thread returns later is discarded (it holds a pool thread until it returns).
* **Output.** ``print`` (``sys.stdout``/``sys.stderr``), ``logging`` records (at the loggers' own levels)
  and ``RunContext.log`` inside the function become ``run.log`` lines of that run: a context variable
  says which run a write belongs to, so concurrent runs' output never mixes. Outside a run, writes go to
  the streams as before.
* **Outcome.** The return value, as JSON (``default=str`` for what JSON lacks), is the run's ``result``
  (``Run.result``; at most ``max_result`` characters of JSON, by default ``RESULT_LIMIT``, 64 KiB: a
  longer one is not kept, the result stays None and an output line says so). An exception fails the
  attempt with its type, message and traceback in ``error``; retried by the job's policy unless it is
  ``ExecutionFailed(retryable=False)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import importlib
import inspect
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TextIO

from chronos_core.errors import ExecutionFailed, FieldError
from chronos_core.models import RESULT_LIMIT, Job, Run
from chronos_core.payloads import PythonPayload
from chronos_core.ports import ExecutionResult, Executor, LogSink
from chronos_core.python import RunContext, context_parameter, module_allowed, split_ref
from chronos_core.secrets import walk_named

from ._common import Threads, mask, parse_payload
from .shell import minimal_env, start_in_group, stop_group

__all__ = ["PythonExecutor", "load_function"]

_current: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("chronos_python_run",
                                                                          default=None)
_PENDING = 1000  # lines a thread may have waiting for the log sink before its writes wait
_MAX_LINE = 1024 * 1024


class _Capture:
    """One run's output: text written from any thread, cut into lines, handed to the log sink in order
    by one task on the event loop (started by the first line: most functions print nothing)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log: LogSink) -> None:
        self._loop = loop
        self._log = log
        self._loop_thread = threading.get_ident()  # made on the loop
        self._queue: asyncio.Queue[tuple[str, str, bool] | None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._partial: dict[str, str] = {}
        self._lock = threading.Lock()
        self._room = threading.Semaphore(_PENDING)
        self.closed = False

    def write(self, stream: str, text: str) -> None:
        if self.closed or not text:
            return
        with self._lock:
            text = self._partial.pop(stream, "") + text
            *lines, rest = text.split("\n")
            while len(rest) > _MAX_LINE:
                lines.append(rest[:_MAX_LINE])
                rest = rest[_MAX_LINE:]
            if rest:
                self._partial[stream] = rest
        for line in lines:
            self._put(line, stream)

    def line(self, text: str, stream: str) -> None:
        self.flush(stream)
        for line in text.split("\n"):
            self._put(line, stream)

    def flush(self, stream: str | None = None) -> None:
        with self._lock:
            items = ([(stream, self._partial.pop(stream))] if stream in self._partial else []) \
                if stream is not None else list(self._partial.items())
            if stream is None:
                self._partial.clear()
        for s, text in items:
            self._put(text, s)

    def _put(self, line: str, stream: str) -> None:
        if self.closed:
            return
        if threading.get_ident() == self._loop_thread:
            self._enqueue((line, stream, False))
            return
        # a thread waits while the sink is far behind (bounded memory), but never once the run is over
        while not self._room.acquire(timeout=0.5):
            if self.closed:
                return
        try:  # in order: the loop runs these callbacks first in, first out
            self._loop.call_soon_threadsafe(self._enqueue, (line, stream, True))
        except RuntimeError:  # the loop is closed
            self.closed = True

    def _enqueue(self, item: tuple[str, str, bool]) -> None:
        """On the loop: queue a line, starting the task that sends them on the first one."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            # its own empty context: what the sink logs is not this run's output
            self._pump = self._loop.create_task(self._send(self._queue), context=contextvars.Context())
        self._queue.put_nowait(item)

    async def _send(self, queue: asyncio.Queue[tuple[str, str, bool] | None]) -> None:
        while (item := await queue.get()) is not None:
            line, stream, from_thread = item
            if from_thread:
                self._room.release()
            await self._log(line, stream)

    async def finish(self) -> None:
        """Send what is left, then stop. (Lines a thread wrote before the call that returned were
        scheduled on the loop before this continuation.)"""
        self.flush()
        await asyncio.sleep(0)  # the lines flushed just now from this thread: already queued
        pump = self._pump
        try:
            if pump is not None and self._queue is not None:
                self._queue.put_nowait(None)
                await pump
        finally:
            self.closed = True

    async def abandon(self) -> None:
        """Stop at once (cancelled, timed out): later writes are dropped."""
        self.closed = True
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(BaseException):
                await self._pump


class _StreamRouter:
    """Stands in for ``sys.stdout``/``sys.stderr``: a write inside a run goes to that run, any other to
    the stream it replaced."""

    def __init__(self, target: TextIO, name: str) -> None:
        self._target = target
        self._name = name

    def write(self, text: str) -> int:
        cap = _current.get()
        if cap is None:
            return self._target.write(text)
        cap.write(self._name, text)
        return len(text)

    def flush(self) -> None:
        if _current.get() is None:
            self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _LogRouter(logging.Handler):
    """On the root logger: a record emitted inside a run becomes a line of that run."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        cap = _current.get()
        if cap is not None:
            try:
                cap.line(self.format(record), "stderr")
            except Exception:  # pragma: no cover - logging must not fail the caller
                self.handleError(record)


_router_lock = threading.Lock()
_log_router = _LogRouter()


def _install_routers() -> None:
    """Route ``sys.stdout``/``sys.stderr`` and the root logger through the run capture (again if someone
    replaced the streams since)."""
    with _router_lock:
        if not isinstance(sys.stdout, _StreamRouter):
            sys.stdout = _StreamRouter(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _StreamRouter):
            sys.stderr = _StreamRouter(sys.stderr, "stderr")
        root = logging.getLogger()
        if _log_router not in root.handlers:
            root.addHandler(_log_router)


def load_function(ref: str, allowed: Iterable[str] | None = None) -> Callable[..., Any]:
    """Import ``"module:qualname"`` and return the callable; ``ExecutionFailed`` (not retryable) if it
    cannot be found. With ``allowed`` (module prefixes), the function must be *defined* in an allowed
    module, and reached only through classes defined there: otherwise ``json:codecs.builtins.exec``
    (``json`` imports ``codecs``, which imports ``builtins``) ran any code with only ``json`` allowed."""
    module_name, qualname = split_ref(ref)
    if allowed is not None:
        allowed = tuple(allowed)
        problem = ref_problem(ref)
        if problem:
            raise ExecutionFailed(problem, retryable=False)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExecutionFailed(f"cannot import {module_name!r}: {exc}", retryable=False) from None
    parts = qualname.split(".")
    for i, part in enumerate(parts):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ExecutionFailed(f"{ref}: {module_name} has no {qualname!r}", retryable=False) from None
        if allowed is None:
            continue
        if i < len(parts) - 1 and not inspect.isclass(target):
            raise ExecutionFailed(f"{ref}: {'.'.join(parts[:i + 1])} is not a class of {module_name} (a "
                                  "module or object it imported leads out of the allow-list)",
                                  retryable=False)
        defined_in = getattr(target, "__module__", None)
        if not isinstance(defined_in, str) or not module_allowed(defined_in, allowed):
            raise ExecutionFailed(f"{ref}: {'.'.join(parts[:i + 1])} is defined in {defined_in!r}, which is "
                                  "not in the python job allow-list (CHRONOS_PYTHON_MODULES)",
                                  retryable=False)
    if not callable(target):
        raise ExecutionFailed(f"{ref} is not callable", retryable=False)
    return target  # type: ignore[no-any-return]


def ref_problem(ref: str) -> str | None:
    """Why an allow-listed reference is refused without importing anything: a private or dunder name
    (``f.__globals__``, ``C.__subclasses__``, ``_os.system``) leads anywhere, and importing a private
    module (``pkg.__main__``) may run anything."""
    module, qualname = split_ref(ref)
    private = [part for part in (*module.split("."), *qualname.split(".")) if part.startswith("_")]
    if private:  # also a module: importing pkg.__main__ runs the package's command line
        return (f"{ref}: {private[0]!r} is private; python jobs under an allow-list call public names "
                "defined in the allowed modules")
    return None


_HERE = os.path.dirname(__file__)
_INTERNAL = (*(os.path.dirname(m.__file__ or "") + os.sep for m in (asyncio, concurrent.futures)),
             __file__, os.path.join(_HERE, "_common.py"), os.path.join(_HERE, "python_child.py"))


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` and the traceback from the job's own code on (the frames of this executor, its
    thread pool and asyncio are left out), as the run's error."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename.startswith(_INTERNAL):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
    return f"{type(exc).__name__}: {exc}\n{text}"


def encode_result(value: Any, limit: int) -> tuple[str | None, str | None]:
    """(the value as JSON text, or None; a note for the output if it was not kept)."""
    if value is None:
        return None, None
    try:
        text = json.dumps(value, default=str, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return None, f"[chronos] the return value was not kept: not JSON ({exc})"
    # values under secret-looking names (a fresh access_token the function fetched): the result is shown
    # with the run, which read-only tokens read
    data = json.loads(text)
    fresh = [v for _, v in walk_named(data) if len(v) >= _MIN_RESULT_SECRET]
    if fresh:
        text = json.dumps(_masked(data, fresh), ensure_ascii=False)
    if len(text) > limit:
        return None, f"[chronos] the return value ({len(text)} characters of JSON) was not kept: over " \
                     f"the limit of {limit}"
    return text, None


def _masked(value: Any, secrets: list[str]) -> Any:
    """A JSON value with the secrets in its strings (keys too) masked; a number that is one, ``***``."""
    if isinstance(value, str):
        return mask(value, secrets)
    if isinstance(value, list):
        return [_masked(v, secrets) for v in value]
    if isinstance(value, dict):
        return {mask(k, secrets): _masked(v, secrets) for k, v in value.items()}
    if isinstance(value, int | float) and not isinstance(value, bool) and \
            mask(str(value), secrets) != str(value):
        return "***"
    return value


_MIN_RESULT_SECRET = 8  # shorter values under secret-looking names ("Bearer", counts) are not tokens


_Prepared = tuple[PythonPayload, Callable[..., Any] | None, str | None]
"""A job's payload, its function (None: it runs in a child process) and its RunContext parameter."""


class PythonExecutor(Executor):
    type_name: ClassVar[str] = "python"

    def __init__(self, *, allowed_modules: Iterable[str] | None = None, threads: int = 8,
                 kill_grace: float = 5.0, max_result: int = RESULT_LIMIT,
                 env: Mapping[str, str] | None = None, pass_env: Iterable[str] = ()) -> None:
        self.allowed_modules = None if allowed_modules is None else tuple(allowed_modules)
        self._allowed_refs: set[str] = set()
        self._prepared: dict[tuple[Any, ...], _Prepared] = {}
        self._threads = Threads("chronos-python", threads)
        self.kill_grace = kill_grace
        self.max_result = max_result
        # the child starts from a minimal environment, as shell jobs do: not the service's tokens and URLs
        self._env = minimal_env(("PYTHONPATH", *pass_env)) if env is None else dict(env)

    def allow(self, ref: str) -> None:
        """Allow this one function, whatever the module allow-list says."""
        self._allowed_refs.add(ref)

    def allowed(self, ref: str) -> bool:
        if self.allowed_modules is None or ref in self._allowed_refs:
            return True
        return module_allowed(ref.partition(":")[0], self.allowed_modules)

    def _refusal(self, ref: str) -> str:
        listed = ", ".join(self.allowed_modules or ()) or "none"
        return (f"module {ref.partition(':')[0]!r} is not in the python job allow-list "
                f"(CHRONOS_PYTHON_MODULES: {listed})")

    def check_payload(self, payload: Mapping[str, Any]) -> list[FieldError]:
        ref = str(payload.get("function", ""))
        if ref and not self.allowed(ref):
            return [FieldError(("payload", "function"), self._refusal(ref))]
        problem = ref_problem(ref) if ref and self._restricted(ref) else None
        if problem:
            return [FieldError(("payload", "function"), problem)]
        return []

    def _restricted(self, ref: str) -> tuple[str, ...] | None:
        """The allow-list that applies to ``ref`` (None: the program named this function itself)."""
        if self.allowed_modules is None or ref in self._allowed_refs:
            return None
        return self.allowed_modules

    async def start(self) -> None:
        _install_routers()

    async def stop(self) -> None:
        self._threads.close()

    def _prepare(self, job: Job) -> _Prepared:
        """The job's payload, function and RunContext parameter, kept per job version and allow-list
        (validating and looking up again for every run of a job costs more than the call)."""
        key = (job.id, job.updated_at, self.allowed_modules)
        hit = self._prepared.get(key)
        if hit is not None:
            return hit
        p = parse_payload(PythonPayload, job.payload)
        if not self.allowed(p.function):
            raise ExecutionFailed(self._refusal(p.function), retryable=False)
        func = None if p.isolation == "process" else load_function(p.function,
                                                                    self._restricted(p.function))
        prepared = (p, func, None if func is None else context_parameter(func))
        if len(self._prepared) >= 10_000:
            self._prepared.clear()
        self._prepared[key] = prepared
        return prepared

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        p, func, name = self._prepare(job)
        if not self.allowed(p.function):  # a function allowed by allow() stays allowed; a list may shrink
            raise ExecutionFailed(self._refusal(p.function), retryable=False)
        if func is None:
            return await self._in_process(job, run, p, log)
        _install_routers()
        loop = asyncio.get_running_loop()
        cap = _Capture(loop, log)
        ctx = RunContext(run_id=run.id, job_id=job.id, job_name=job.name, attempt=run.attempt,
                         scheduled_for=run.scheduled_for, trigger=run.trigger.value, _emit=cap.line)
        kwargs = dict(p.kwargs)
        if name is not None:
            kwargs[name] = ctx
        context = contextvars.copy_context()
        context.run(_current.set, cap)
        try:
            try:
                if inspect.iscoroutinefunction(func):
                    task = asyncio.create_task(func(*p.args, **kwargs), context=context)
                    try:
                        value = await asyncio.shield(task)
                    except asyncio.CancelledError:
                        ctx._cancel.set()
                        task.cancel()
                        with contextlib.suppress(BaseException):
                            await task
                        raise
                else:
                    try:
                        call = functools.partial(func, *p.args, **kwargs)
                        value = await self._threads.run(context.run, call)
                    except asyncio.CancelledError:
                        ctx._cancel.set()  # the thread goes on; what it returns is dropped
                        raise
                    if inspect.isawaitable(value):  # a plain function returning a coroutine
                        value = await asyncio.create_task(_await(value), context=context)
            except Exception as exc:  # the function failed: what it printed first still counts
                await cap.finish()
                retryable = exc.retryable if isinstance(exc, ExecutionFailed) else True
                exit_code = exc.exit_code if isinstance(exc, ExecutionFailed) else None
                raise ExecutionFailed(describe_exception(exc), retryable=retryable,
                                      exit_code=exit_code) from None
        except BaseException:
            await cap.abandon()  # cancelled or timed out: later output is dropped
            raise
        await cap.finish()
        return self._result(value)

    def _result(self, value: Any) -> ExecutionResult:
        return _outcome(*encode_result(value, self.max_result))

    # isolation: process ------------------------------------------------------------------------------
    async def _in_process(self, job: Job, run: Run, p: PythonPayload, log: LogSink) -> ExecutionResult:
        if p.module == "__main__":
            raise ExecutionFailed("isolation 'process' needs an importable module; a function of the "
                                  "program's __main__ cannot be imported by a child process",
                                  retryable=False)
        request = {"function": p.function, "args": p.args, "kwargs": p.kwargs, "sys_path": sys.path,
                   "allowed": self._restricted(p.function),
                   "max_result": self.max_result,
                   "context": {"run_id": run.id, "job_id": job.id, "job_name": job.name,
                               "attempt": run.attempt, "scheduled_for": run.scheduled_for.isoformat(),
                               "trigger": run.trigger.value}}
        read_fd, write_fd = os.pipe()
        env = dict(self._env)
        env["PYTHONUNBUFFERED"] = "1"
        env["CHRONOS_RESULT_FD"] = str(write_fd)
        try:
            # a cancel while the child starts ends its group; this returns or raises once the start is
            # over, so write_fd (the child's copy of it is made in the start) is closed after it either way
            proc = await start_in_group(
                self.kill_grace, sys.executable, "-m", "chronos_adapters.executors.python_child",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        messages = asyncio.StreamReader(limit=64 * 1024 * 1024)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        outcome: dict[str, Any] = {}

        async def read_messages() -> None:
            while line := await messages.readline():
                msg = json.loads(line)
                if "log" in msg:
                    await log(msg["log"], msg.get("stream", "stdout"))
                else:
                    outcome.update(msg)

        transport: asyncio.ReadTransport | None = None
        pumps: asyncio.Future[Any] | None = None
        try:  # from here on the child runs: whatever ends this ends its group
            # (cancelled in it, connect_read_pipe closes the pipe's file itself)
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(messages), os.fdopen(read_fd, "rb", buffering=0))
            pumps = asyncio.gather(_pump(proc.stdout, "stdout", log), _pump(proc.stderr, "stderr", log),
                                   read_messages())
            proc.stdin.write(json.dumps(request).encode())
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
            proc.stdin.close()
            await pumps
            code = await proc.wait()
        except BaseException:
            if pumps is not None:
                pumps.cancel()
            await stop_group(proc, self.kill_grace)
            if pumps is not None:
                with contextlib.suppress(BaseException):
                    await pumps
            raise
        finally:
            if transport is not None:
                transport.close()
        if "error" in outcome:
            err = outcome["error"]
            raise ExecutionFailed(err["text"], retryable=bool(err.get("retryable", True)))
        if "result" not in outcome:
            raise ExecutionFailed(f"the child process ended (exit code {code}) without a result",
                                  exit_code=code)
        return _outcome(outcome["result"], outcome.get("note"))


def _outcome(text: str | None, note: str | None) -> ExecutionResult:
    """A success with the return value (its JSON text) as the run's result, or the note why it is not."""
    if note:
        return ExecutionResult(ok=True, output=note)
    return ExecutionResult(ok=True, result=None if text is None else json.loads(text))


async def _await(value: Any) -> Any:
    return await value


async def _pump(stream: asyncio.StreamReader, name: str, log: LogSink) -> None:
    pending = b""
    while chunk := await stream.read(64 * 1024):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            await log(line.decode("utf-8", "replace"), name)
        while len(pending) > _MAX_LINE:
            await log(pending[:_MAX_LINE].decode("utf-8", "replace"), name)
            pending = pending[_MAX_LINE:]
    if pending:
        await log(pending.decode("utf-8", "replace"), name)
