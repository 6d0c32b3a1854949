"""What every built-in executor shares: payload parsing and secret masking for error messages."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import ValidationError

from chronos_core.errors import ExecutionFailed
from chronos_core.payloads import REDACTED, Payload, field_errors
from chronos_core.secrets import secret_forms

__all__ = ["Threads", "mask", "parse_payload"]

P = TypeVar("P", bound=Payload)
T = TypeVar("T")


def parse_payload(model: type[P], payload: dict[str, Any]) -> P:
    """The job's payload as ``model``; a bad payload is a non-retryable failure (it will not get better)."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        detail = "; ".join(map(str, field_errors(exc, prefix=("payload",))))
        raise ExecutionFailed(f"invalid payload: {detail}", retryable=False) from None


def mask(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (of 3 characters or more), in each form the worker masks (URL-encoded,
    base64, hex...), replaced by ``***``."""
    for s in secret_forms(secrets):
        text = text.replace(s, REDACTED)
    return text


class Threads:
    """An executor's own thread pool for blocking drivers and users' functions, so its slow calls neither
    starve nor are starved by the event loop's default pool (which also resolves host names).

    Its threads are daemons, started as calls need them (up to ``size``): a call that never returns (a
    function that ignores its cancellation, a statement that runs for ever) must not keep the process
    from exiting once Chronos stopped, as a ``ThreadPoolExecutor``'s threads would (the interpreter joins
    those at exit). A call whose caller was cancelled before a thread took it is not run."""

    def __init__(self, name: str, size: int = 32) -> None:
        self._name = name
        self._size = size
        self._lock = threading.Lock()
        self._pool = _Pool()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            pool = self._pool
            pool.busy += 1
            if pool.busy > pool.threads and pool.threads < self._size:
                pool.threads += 1
                threading.Thread(target=self._serve, args=(pool,), daemon=True,
                                 name=f"{self._name}_{pool.threads - 1}").start()
            pool.work.put((loop, future, fn, args))
        return await future

    def _serve(self, pool: _Pool) -> None:
        while (call := pool.work.get()) is not None:
            loop, future, fn, args = call
            try:
                if not future.cancelled():  # (read from this thread: at worst one needless call)
                    try:
                        result, error = fn(*args), None
                    except BaseException as exc:  # handed to the caller, like run_in_executor
                        result, error = None, exc
                    _settle(loop, future, result, error)
            finally:
                with self._lock:
                    pool.busy -= 1

    def close(self) -> None:
        """Stop taking work: calls not started are cancelled, calls running finish in the background (or
        end with the process). The next call starts a new pool."""
        with self._lock:
            pool, self._pool = self._pool, _Pool()
            threads = pool.threads
        with contextlib.suppress(queue.Empty):
            while True:
                call = pool.work.get_nowait()
                if call is not None:
                    loop, future, _, _ = call
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        loop.call_soon_threadsafe(future.cancel)
        for _ in range(threads):
            pool.work.put(None)


class _Pool:
    """One generation of a :class:`Threads`' threads and their work (``close`` starts a new one)."""

    def __init__(self) -> None:
        self.work: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.threads = 0
        self.busy = 0  # calls queued or running


_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any,
            error: BaseException | None) -> None:
    def settle() -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)
