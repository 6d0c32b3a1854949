"""``SyncChronos``: the whole ``Chronos`` for synchronous code (a script, a Flask or Django app).

Chronos runs on its own event loop in a background thread; every operation is a blocking call that
runs there, safe from any thread::

    with SyncChronos.embedded() as chronos:
        chronos.schedule(report, "*/5 * * * *")
        chronos.jobs.list()
        chronos.run_forever()      # or carry on: the thread does the work (like APScheduler's
                                   # BlockingScheduler / BackgroundScheduler)

``jobs``, ``runs`` and ``events`` are the async operations as blocking ones (an async iterator, such as
``events.stream(...)`` or ``events.subscribe(...)``, becomes an iterator). ``close()`` — also on leaving
the ``with`` block, on ``KeyboardInterrupt`` in ``run_forever`` and at interpreter exit — stops Chronos
as ``Chronos.stop`` does: no more claims, running attempts get the grace period, the rest are cancelled
and recorded so.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import inspect
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from chronos_core import InvalidArgument, Job, Run, function_ref

from .runtime import Chronos

__all__ = ["SyncChronos"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class _Portal:
    """Runs coroutines and calls on the loop thread and waits for them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="chronos-loop", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()
        # closing: let what is still scheduled finish its cleanup, then close the loop
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self) -> None:
        self.thread.start()
        self._ready.wait()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a SyncChronos call from its own event loop (from an async job?) would wait "
                               "for itself forever; in async code use the async Chronos "
                               "(SyncChronos.chronos) with await")
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("this SyncChronos is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise RuntimeError("the call was cancelled: the SyncChronos closed meanwhile") from None
        except BaseException:
            if not future.done():  # e.g. KeyboardInterrupt while waiting: do not leave it running
                self.loop.call_soon_threadsafe(future.cancel)
            raise

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the loop thread (event-loop state is not thread-safe)."""
        async def call() -> T:
            return fn(*args, **kwargs)
        return self.call(call())

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=60)


class _SyncIterator(Iterator[Any]):
    """An async iterator (a subscription, an async generator) pulled from another thread."""

    def __init__(self, portal: _Portal, source: Any) -> None:
        self._portal = portal
        self._source = source
        self._iter: Any = None

    def __iter__(self) -> _SyncIterator:
        return self

    def __next__(self) -> Any:
        if self._iter is None:
            self._iter = self._portal.run(self._source.__aiter__)
        try:
            return self._portal.call(self._iter.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        for target in (self._iter, self._source):
            aclose = getattr(target, "aclose", None)
            if aclose is not None:
                self._portal.call(aclose())
                return

    def __enter__(self) -> _SyncIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Blocking:
    """An async object's methods as blocking calls run on the loop."""

    def __init__(self, portal: _Portal, target: Any) -> None:
        self._portal = portal
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        portal = self._portal
        if inspect.isasyncgenfunction(attr):
            def gen(*args: Any, **kwargs: Any) -> _SyncIterator:
                return _SyncIterator(portal, attr(*args, **kwargs))
            return gen
        if inspect.iscoroutinefunction(attr):
            def call(*args: Any, **kwargs: Any) -> Any:
                return _wrap(portal, portal.call(attr(*args, **kwargs)))
            return call

        def plain(*args: Any, **kwargs: Any) -> Any:
            return _wrap(portal, portal.run(attr, *args, **kwargs))
        return plain

    def __repr__(self) -> str:
        return f"<blocking {self._target!r}>"


def _wrap(portal: _Portal, value: Any) -> Any:
    if hasattr(value, "__anext__") or isinstance(value, AsyncIterator):
        return _SyncIterator(portal, value)
    return value


def _at_exit(hook: Callable[[], None]) -> None:
    """Call ``hook`` when the program ends, before the interpreter waits for its threads: the python
    executor's pool threads are joined then (``concurrent.futures`` registers its join the same way), and a
    running job's thread only ends once Chronos is closed and its ``ctx.cancelled`` is set. (Hooks run
    last registered first, so this one runs before that join; ``atexit`` would run after it: too late.)"""
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(hook)
            return
    except RuntimeError:  # the interpreter is already shutting down
        return
    atexit.register(hook)


def _close_at_exit(ref: weakref.ref[SyncChronos]) -> None:
    sync = ref()
    if sync is not None:
        sync.close()


class SyncChronos:
    """A ``Chronos`` on its own event loop in a background thread, every operation blocking."""

    def __init__(self, factory: Callable[[], Chronos]) -> None:
        self._factory = factory
        self._portal: _Portal | None = None
        self._chronos: Chronos | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        # before start: @scheduled functions and register_job_type calls, applied by start()
        self._pending: list[tuple[Callable[..., Any], str | None, dict[str, Any]]] = []
        self._types: list[tuple[str, Any, Any]] = []

    @classmethod
    def embedded(cls, database_url: str | None = None, **options: Any) -> SyncChronos:
        """As :meth:`Chronos.embedded` (same arguments); started by ``start()`` or ``with``."""
        return cls(lambda: Chronos.embedded(database_url, **options))

    # lifecycle --------------------------------------------------------------------------------------
    def start(self) -> SyncChronos:
        with self._lock:
            if self._portal is not None:
                return self
            if self._closed.is_set():
                raise RuntimeError("this SyncChronos is closed")
            portal = _Portal()
            portal.start()
            try:
                chronos = portal.run(self._factory)  # built on the loop: its asyncio objects belong there
                for name, model, executor in self._types:
                    chronos.register_job_type(name, model, executor)
                for func, schedule, options in self._pending:  # applied by chronos.start()
                    chronos._declared.append(chronos.python_spec(func, schedule, **options))
                self._pending, self._types = [], []
                portal.call(chronos.start())
            except BaseException:
                portal.stop()
                raise
            self._portal, self._chronos = portal, chronos
            _at_exit(functools.partial(_close_at_exit, weakref.ref(self)))
        return self

    def close(self, grace: float | None = None) -> None:
        """Stop Chronos (running attempts get ``grace`` seconds, default its ``shutdown_grace``; the rest
        are cancelled and recorded so), then the loop and its thread. Idempotent."""
        with self._lock:
            portal, chronos = self._portal, self._chronos
            self._portal = self._chronos = None
            self._closed.set()
        if portal is None or chronos is None:
            return
        try:
            portal.call(chronos.stop(grace))
        finally:
            portal.stop()

    def run_forever(self) -> None:
        """Block until ``close()`` (from another thread) or ``KeyboardInterrupt`` (Ctrl-C: Chronos is then
        closed cleanly and this returns)."""
        self.start()
        try:
            while not self._closed.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __enter__(self) -> SyncChronos:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # the surface ------------------------------------------------------------------------------------
    @property
    def chronos(self) -> Chronos:
        """The async ``Chronos`` inside (for code running on its loop)."""
        if self._chronos is None:
            raise RuntimeError("not started: use 'with SyncChronos.embedded() as chronos:' or start()")
        return self._chronos

    def _blocking(self, name: str) -> Any:
        chronos = self.chronos
        assert self._portal is not None
        return _Blocking(self._portal, getattr(chronos, name))

    @property
    def jobs(self) -> Any:
        """``Chronos.jobs``, blocking: ``create``, ``get``, ``list``, ``apply``, ``trigger``..."""
        return self._blocking("jobs")

    @property
    def runs(self) -> Any:
        """``Chronos.runs``, blocking (``follow`` is an iterator of lines)."""
        return self._blocking("runs")

    @property
    def events(self) -> Any:
        """``Chronos.events``: ``for event in chronos.events.stream(job_id=...)``, or ``with
        chronos.events.subscribe(...) as sub: next(sub)``."""
        return self._blocking("events")

    def register_job_type(self, name: str, payload_model: Any, executor: Any) -> None:
        """As :meth:`Chronos.register_job_type`, before ``start()`` (which opens the executor)."""
        if self._chronos is not None:
            raise RuntimeError("register job types before start(): start() opens their executors")
        self._types.append((name, payload_model, executor))

    def schedule(self, func: Callable[..., Any], schedule: str | None = None, **options: Any) -> Job:
        """As :meth:`Chronos.schedule`: create, or update by name, a python job running ``func``."""
        return self._call(self.chronos.schedule(func, schedule, **options))

    def scheduled(self, schedule: str | None = None, **options: Any) -> Callable[[F], F]:
        """Decorator form of :meth:`schedule`: scheduled at once when started, else at ``start()``."""
        def decorate(func: F) -> F:
            if self._chronos is not None:
                self.schedule(func, schedule, **options)
                return func
            try:  # refused now (a lambda...), applied by start()
                function_ref(func)
            except ValueError as exc:
                raise InvalidArgument.single(("function",), str(exc)) from None
            self._pending.append((func, schedule, options))
            return func
        return decorate

    def run_now(self, target: Any, **options: Any) -> Run:
        """As :meth:`Chronos.run_now` (``wait=True`` blocks until the run ended)."""
        return self._call(self.chronos.run_now(target, **options))

    def wait(self, run: Run | str, **options: Any) -> Run:
        return self._call(self.chronos.wait(run, **options))

    def advance(self, seconds: float = 0.0, **options: Any) -> Any:
        """As :meth:`Chronos.advance` (a ``FakeClock``)."""
        return self._call(self.chronos.advance(seconds, **options))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._portal is None:
            coro.close()
            raise RuntimeError("not started")
        return self._portal.call(coro)
