"""``ChronosFront``: what the API uses of a :class:`~chronos_app.runtime.Chronos` whose engines run on
another event loop (``chronos serve`` with ``CHRONOS_API_THREAD``: the API on a thread of its own).

Every collaborator the API reaches is one of these (ARCHITECTURE.md, "Threads in chronos serve", lists
them with the reason each is safe):

* **its own** on the API's loop: a SQL store is a :meth:`SqlStore.sibling` (own engine, connections and
  thread pool; the same SQLite writer lock; a SQLite file's hot reads run inline, on the API's thread),
  opened and closed by :meth:`start` / :meth:`stop`; the ``Jobs``/``Runs``/``Events`` operations over it
  (they keep no state of their own);
* **marshalled** to the engines' loop (:func:`~chronos_app.loops.on_loop`): the dispatch queue (an
  ``asyncio.Queue`` for the in-process one), a store that cannot have a sibling (the memory store, an
  in-memory SQLite database), and the engines' figures for ``/metrics`` (:meth:`gauges`);
* **shared as it is**: the event bus (only one that says it is ``thread_safe``: each subscription is fed
  on the loop it subscribed from), and what is read-only once the process has started (settings, the
  clock, the job types, the executors' ``check_payload``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from chronos_core import Clock, DispatchQueue, EventBus, Events, Executor, Jobs, JobTypes, Runs, Store

from .loops import call_on, on_loop
from .runtime import Chronos, Gauges
from .settings import EngineSettings

__all__ = ["ChronosFront", "can_thread"]

T = TypeVar("T")


def can_thread(chronos: Chronos) -> str | None:
    """Why the API of ``chronos`` cannot run on a loop of its own (None: it can)."""
    if not chronos.bus.thread_safe:
        return f"the event bus ({type(chronos.bus).__name__}) is reached from its own loop only"
    return None


def _api_store(store: Store, loop: asyncio.AbstractEventLoop) -> tuple[Store, bool]:
    """The store the API uses, and whether it is its own (to open and close)."""
    from chronos_adapters.sql import SqlStore
    from chronos_adapters.sql.engine import is_sqlite

    if isinstance(store, SqlStore) and not (is_sqlite(store.url) and _in_memory(store.url)):
        # a SQLite file's hot reads on the API's own thread (SqlStore.sibling, Database.read): no pool
        # threads fighting the API's loop thread and the engines for the GIL
        return store.sibling(inline_reads=is_sqlite(store.url)), True
    return on_loop(store, loop), False


def _in_memory(url: str) -> bool:
    from sqlalchemy.engine import make_url

    database = make_url(url).database or ""
    return database in ("", ":memory:") or ":memory:" in database or "mode=memory" in str(url)


class ChronosFront:
    """The API's view of ``chronos`` (started, its engines on ``loop``), for use on another loop."""

    def __init__(self, chronos: Chronos, loop: asyncio.AbstractEventLoop) -> None:
        if (why := can_thread(chronos)) is not None:
            raise ValueError(f"the API cannot run on a loop of its own: {why}")
        self._chronos = chronos
        self._loop = loop
        self.settings: EngineSettings = chronos.settings
        self.clock: Clock = chronos.clock
        self.job_types: JobTypes = chronos.job_types
        self.executors: dict[str, Executor] = chronos.executors  # read: membership, check_payload
        self.bus: EventBus = chronos.bus
        self.queue: DispatchQueue = on_loop(chronos.queue, loop)
        self.store, self._own_store = _api_store(chronos.store, loop)
        self.jobs = Jobs(self.store, self.queue, self.bus, self.clock, self.job_types,
                         allow_shell=chronos.allow_shell, executors=self.executors)
        self.runs = Runs(self.store, self.bus, self.clock)
        self.events = Events(self.bus, self.store, self.clock)
        self._started = False

    @property
    def allow_shell(self) -> bool:
        return self._chronos.allow_shell

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        """Open the API's own store (on the calling loop: the API's)."""
        if self._own_store:
            await self.store.start()
        self._started = True

    async def stop(self, grace: float | None = None) -> None:
        """Close the API's own store; the engines are stopped by whoever started them."""
        if not self._started:
            return
        self._started = False
        if self._own_store:
            await self.store.stop()

    async def gauges(self) -> Gauges:
        """The engines' figures, read on their own loop."""
        return await call_on(self._loop, self._chronos.gauges())

    async def on_engines(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro`` run on the engines' loop (the /metrics run counter subscribes there)."""
        return await call_on(self._loop, coro)
