"""A ready-made :class:`~chronos_core.ports.Subscription` for event-bus implementations.

The bus calls :meth:`BufferedSubscription.offer` with each live event; the subscriber iterates. Events a
resumed subscription must see first (``subscribe(after=...)``) go into ``replay`` (filled at once, or
lazily by overriding :meth:`BufferedSubscription.before_first`), which does not count against the live
buffer. A subscriber more than ``buffer`` live events behind is closed with
:class:`~chronos_core.errors.SubscriptionOverflow` rather than silently losing events.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Collection
from types import TracebackType

from .errors import SubscriptionOverflow
from .models import Event, EventType

__all__ = ["BufferedSubscription"]


class BufferedSubscription:
    def __init__(self, *, job_id: str | None, run_id: str | None, types: Collection[EventType] | None,
                 buffer: int, detach: Callable[[BufferedSubscription], None]) -> None:
        self.job_id = job_id
        self.run_id = run_id
        self.types = frozenset(types) if types is not None else None
        self.replay: deque[Event] = deque()
        self.last_id: str | None = None
        self._buffer = buffer
        self._detach = detach  # tells the bus to stop offering events to this subscription
        self._items: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._overflow = False
        self._started = False

    def matches(self, e: Event) -> bool:
        return ((self.types is None or e.type in self.types)
                and (self.job_id is None or e.job_id == self.job_id)
                and (self.run_id is None or e.run_id == self.run_id))

    def offer(self, e: Event) -> None:
        """A live event for this subscription (the bus has checked :meth:`matches`)."""
        if self._closed or self._overflow:
            return
        if len(self._items) >= self._buffer:
            self._overflow = True
            self._detach(self)
        else:
            self._items.append(e)
        self._ready.set()

    async def before_first(self) -> None:
        """Called once before the first event is returned: a bus may fetch ``replay`` here."""

    def __aiter__(self) -> BufferedSubscription:
        return self

    async def start(self) -> None:
        """Run :meth:`before_first` now rather than at the first step of the iteration (idempotent)."""
        if not self._started:
            self._started = True
            if not self._closed:
                await self.before_first()

    def take(self) -> list[Event]:
        """Every event ready now, without waiting: the replay, then the live ones (after :meth:`start`).
        Empty when none is ready (or the subscription is closed); :class:`SubscriptionOverflow` once the
        buffered events are taken, if the subscriber fell behind. A follower that takes everything and
        then subscribes elsewhere in the same step of the event loop misses nothing: the bus offers
        each event to every subscription in one step."""
        out = list(self.replay)
        self.replay.clear()
        out += self._items
        self._items.clear()
        if out:
            self.last_id = out[-1].id
        elif self._overflow and not self._closed:
            raise SubscriptionOverflow(self.last_id)
        return out

    @property
    def ready(self) -> int:
        """How many events :meth:`take` would return now."""
        return len(self.replay) + len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    async def __anext__(self) -> Event:
        if not self._started:
            await self.start()
        if self.replay:
            e = self.replay.popleft()
        else:
            while not self._items:
                if self._overflow:
                    raise SubscriptionOverflow(self.last_id)
                if self._closed:
                    raise StopAsyncIteration
                self._ready.clear()
                await self._ready.wait()
            e = self._items.popleft()
        self.last_id = e.id
        return e

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """:meth:`aclose` from synchronous code (closing waits for nothing)."""
        self._closed = True
        self._items.clear()
        self.replay.clear()
        self._detach(self)
        self._ready.set()

    async def __aenter__(self) -> BufferedSubscription:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
