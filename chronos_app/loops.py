"""Two event loops in one process (``chronos serve`` with ``CHRONOS_API_THREAD``): the engines' loop on
the main thread, the API's on a thread of its own (:class:`LoopThread`), so that the API's CPU (parsing,
listing, rendering JSON) cannot hold up a scheduler tick for longer than the GIL's switch interval.

asyncio objects (futures, events, queues, tasks) belong to the loop that made them and are not
thread-safe. An object of the engines' loop that the API must use is reached through :func:`on_loop`:
each of its coroutine methods runs on its own loop (``asyncio.run_coroutine_threadsafe``), the caller
awaiting the result on its loop (a cancelled caller stops waiting; the call still ends there); a call
made on the owning loop itself goes straight through.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "OnLoop", "call_on", "on_loop"]

log = logging.getLogger("chronos")

T = TypeVar("T")


async def call_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` run on ``loop`` (from any loop; on ``loop`` itself it is simply awaited).

    Once sent, it runs to its end there: cancelling the caller (a client gone, the server's graceful
    timeout) stops only the waiting. So a handler cancelled between two such calls is cut where it was
    before, between awaits, never inside one: ``Jobs.trigger``'s queue put, instant on the engines' loop,
    cannot be left half done, as it could not when the API shared that loop."""
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if here is loop:
        return await coro
    return await asyncio.shield(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop)))


class OnLoop:
    """``target`` seen from other loops: its coroutine methods run on ``loop`` (see :func:`call_on`);
    every other attribute is ``target``'s own (read it only if reading it from another thread is
    safe: a constant, a flag)."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        loop = self._loop

        @functools.wraps(attr)
        async def marshalled(*args: Any, **kwargs: Any) -> Any:
            return await call_on(loop, attr(*args, **kwargs))

        return marshalled

    def __repr__(self) -> str:
        return f"OnLoop({self._target!r})"


def on_loop(target: T, loop: asyncio.AbstractEventLoop) -> T:
    """``target`` with its coroutine methods run on ``loop`` (typed as ``target``'s own type)."""
    return OnLoop(target, loop)  # type: ignore[return-value]


class LoopThread:
    """A thread running ``main()`` on an event loop of its own until it returns.

    :meth:`start` returns once the loop runs; :attr:`loop` is that loop (:meth:`call` runs a coroutine
    on it from elsewhere); ``on_exit`` is called on the thread when ``main`` has returned or raised
    (:attr:`error` then holds the exception). :meth:`join` waits for the thread (it never stops it:
    ``main`` decides when to return)."""

    def __init__(self, main: Callable[[], Awaitable[None]], *, name: str,
                 on_exit: Callable[[], None] | None = None) -> None:
        self._main = main
        self.on_exit = on_exit
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._running.wait()

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._running.set()
            await self._main()

        try:
            asyncio.run(main())
        except BaseException as exc:  # told to the main thread through ``error`` and ``on_exit``
            self.error = exc
        finally:
            self._running.set()  # also when it failed before the loop ran
            if self.on_exit is not None:
                try:
                    self.on_exit()
                except Exception:  # the main loop closed already: nobody is waiting
                    log.debug("%s: on_exit failed", self.name, exc_info=True)

    def call(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        assert self.loop is not None, "start() first"
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
