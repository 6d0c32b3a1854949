"""How ``chronos serve`` / ``chronos api`` run uvicorn: bounded against slow and numerous clients, with
logs that carry no secret and cannot be flooded.

* ``header_timeout``: a client must send a request's headers within this many seconds of connecting (or
  of the previous response), else the connection is closed - uvicorn itself only times out idle
  keep-alive connections, so a client sending one header line every few seconds (slowloris) would hold
  its socket forever. ``keep_alive_timeout`` closes idle connections, ``max_connections`` answers 503
  beyond that many connections or requests in flight.
* ``ApiThread``: uvicorn on a thread and event loop of its own (``chronos serve`` with
  ``CHRONOS_API_THREAD``): the main thread keeps the signals and the engines, and stops it.
* Logging: ``RedactQuery`` masks secret-named query parameters (``?token=``, also percent-encoded as
  ``?%74oken=``) in uvicorn's access log; ``RateLimited`` lets one ``socket.accept() out of system
  resource`` error through per period (asyncio logs it, with a traceback, on every accept attempt
  while the process is out of file descriptors); httpx's request lines (URLs with their secrets) are
  dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from chronos_core.secrets import redact_query

from .loops import LoopThread
from .settings import Settings

if TYPE_CHECKING:
    from .container import Container

log = logging.getLogger("chronos")

__all__ = ["ApiThread", "RateLimited", "RedactQuery", "api_on_thread", "install_log_filters",
           "timed_protocol", "uvicorn_config", "uvicorn_options"]


class RedactQuery(logging.Filter):
    """Masks the values of secret-named query parameters (``token``, ``access_token``, ``api_key``...,
    whatever their percent-encoding) in access-log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_path(a) if isinstance(a, str) and "?" in a else a
                                for a in record.args)
        return True


def _redact_path(text: str) -> str:
    path, _, query = text.partition("?")
    return f"{path}?{redact_query(query)}"


class RateLimited(logging.Filter):
    """Lets records whose message starts with one of ``prefixes`` through once per ``period`` seconds;
    the next one that passes says how many were held back."""

    def __init__(self, prefixes: tuple[str, ...], period: float = 10.0) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.period = period
        self._last = float("-inf")
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefixes):
            return True
        now = time.monotonic()
        if now - self._last < self.period:
            self.suppressed += 1
            return False
        self._last = now
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} more like it in the last {self.period:g}s)"
            self.suppressed = 0
        return True


_ACCEPT_ERRORS = RateLimited(("socket.accept() out of system resource", "Error on transport creation",
                              "Exception in callback BaseSelectorEventLoop._start_serving"))
_ACCESS = RedactQuery()


def install_log_filters() -> None:
    """Idempotent: the access-log redaction, the accept-error rate limit, httpx's URL lines dropped."""
    from chronos_adapters.executors.http import quiet_httpx_logging

    logging.getLogger("uvicorn.access").addFilter(_ACCESS)
    logging.getLogger("asyncio").addFilter(_ACCEPT_ERRORS)
    logging.getLogger("uvicorn.error").addFilter(_ACCEPT_ERRORS)
    quiet_httpx_logging()


class _TimedH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers do not arrive in time."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers were complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers have the same time


def timed_protocol(header_timeout: float) -> type[H11Protocol]:
    return type("ChronosH11Protocol", (_TimedH11,), {"header_timeout": header_timeout})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings that bound what clients can hold."""
    return {"http": timed_protocol(settings.header_timeout),
            "timeout_keep_alive": settings.keep_alive_timeout,
            "limit_concurrency": settings.max_connections}


def uvicorn_config(app: Any, host: str, port: int, settings: Settings) -> uvicorn.Config:
    """How ``chronos serve|api`` run uvicorn (:func:`uvicorn_options`, no proxy headers, 5 s for requests
    in flight at shutdown)."""
    return uvicorn.Config(app, host=host, port=port, log_level=settings.log_level.lower(), lifespan="on",
                          timeout_graceful_shutdown=5, proxy_headers=False, server_header=False,
                          **uvicorn_options(settings))


class ApiThread:
    """uvicorn serving ``config``'s app on ``sock`` (bound already) from a thread and event loop of its
    own. uvicorn installs no signal handler off the main thread: whoever holds the signals calls
    :meth:`stop` (the graceful shutdown: stop accepting, end the SSE streams, wait for requests in
    flight up to ``timeout_graceful_shutdown``, then the app's lifespan ends). ``on_exit`` is called on
    the API's thread once the server has returned, whether asked to or not (its start-up failed)."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket,
                 on_exit: Callable[[], None] | None = None, *, debug: bool | None = None) -> None:
        self.server = uvicorn.Server(config)
        self._sock = sock
        self._debug = debug
        self._thread = LoopThread(self._serve, name="chronos-api", on_exit=on_exit)

    async def _serve(self) -> None:
        if self._debug is not None:  # tests: asyncio's debug mode catches calls from the wrong thread
            asyncio.get_running_loop().set_debug(self._debug)
        try:
            await self.server.serve(sockets=[self._sock])
        finally:
            # A forced exit (a second signal) skips the app's lifespan shutdown: run it still, briefly,
            # so that the API's own store is closed and the lifespan task is not left to be cancelled
            # by asyncio.run's teardown (which uvicorn logs as an error).
            lifespan = getattr(self.server, "lifespan", None)
            if self.server.force_exit and self.server.started and lifespan is not None:
                with contextlib.suppress(Exception, asyncio.TimeoutError):
                    await asyncio.wait_for(lifespan.shutdown(), 5)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._thread.loop

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, force: bool = False) -> None:
        """Ask the server to shut down (a flag it polls every 0.1 s); ``force``: without waiting for
        requests in flight (a second signal)."""
        self.server.should_exit = True
        if force:
            self.server.force_exit = True

    @property
    def exiting(self) -> bool:
        return bool(self.server.should_exit)

    @property
    def started(self) -> bool:
        """Whether the server got through its start-up (the app's lifespan) and listened."""
        return bool(self.server.started)

    @property
    def error(self) -> BaseException | None:
        return self._thread.error

    def join(self, timeout: float | None = None) -> bool:
        return self._thread.join(timeout)


@contextlib.asynccontextmanager
async def api_on_thread(container: Container, sock: socket.socket, config: Callable[[Any], uvicorn.Config],
                        *, on_started: Callable[[], None] | None = None,
                        on_exit: Callable[[], None] | None = None,
                        debug: bool | None = None) -> AsyncIterator[ApiThread]:
    """The API of the container's Chronos (started already, its engines on this loop) served on
    ``sock`` from a thread and loop of its own (``config(app)``: its uvicorn settings), over a
    ``ChronosFront``; at the end of the block it is stopped and waited for (the engines are left to
    the caller, to stop after it: requests in flight may still call into them)."""
    from .api import create_app
    from .front import ChronosFront

    loop = asyncio.get_running_loop()
    front = ChronosFront(container.chronos(), loop)
    api: ApiThread | None = None
    app = create_app(container, on_started=on_started, served=front,
                     exiting=lambda: api is not None and api.exiting)
    api = ApiThread(config(app), sock, on_exit=on_exit, debug=debug)
    api.start()
    try:
        yield api
    finally:
        api.stop()
        if not await loop.run_in_executor(None, api.join, 30.0):
            log.warning("the API did not stop within 30 s; going on without it")
