"""An in-process event bus with a bounded replay window."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Sequence
from types import TracebackType

from chronos_core.errors import SubscriptionOverflow
from chronos_core.models import Event, EventType
from chronos_core.ports import EventBus

__all__ = ["MemoryEventBus", "MemorySubscription"]


class MemorySubscription:
    def __init__(self, bus: MemoryEventBus, job_id: str | None, run_id: str | None,
                 types: Collection[EventType] | None, buffer: int) -> None:
        self._bus = bus
        self.job_id = job_id
        self.run_id = run_id
        self.types = frozenset(types) if types is not None else None
        self._buffer = buffer
        self._items: deque[Event] = deque()
        self._replay: deque[Event] = deque()  # retained events for ``after=``: not counted in the buffer
        self._ready = asyncio.Event()
        self._closed = False
        self._overflow = False
        self.last_id: str | None = None

    def matches(self, e: Event) -> bool:
        return ((self.types is None or e.type in self.types)
                and (self.job_id is None or e.job_id == self.job_id)
                and (self.run_id is None or e.run_id == self.run_id))

    def _offer(self, e: Event) -> None:
        if self._closed:
            return
        if len(self._items) >= self._buffer:
            self._overflow = True
            self._bus._subs.discard(self)
        else:
            self._items.append(e)
        self._ready.set()

    def __aiter__(self) -> MemorySubscription:
        return self

    async def __anext__(self) -> Event:
        if self._replay:
            e = self._replay.popleft()
            self.last_id = e.id
            return e
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
        self._closed = True
        self._items.clear()
        self._replay.clear()
        self._bus._subs.discard(self)
        self._ready.set()

    async def __aenter__(self) -> MemorySubscription:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


class MemoryEventBus(EventBus):
    """Delivers to subscribers in this process. Keeps the last ``retain`` events for resumption; a
    subscriber more than ``buffer`` events behind is disconnected with ``SubscriptionOverflow``."""

    def __init__(self, *, retain: int = 10_000, buffer: int = 10_000) -> None:
        self._seq = 0
        self._recent: deque[Event] = deque(maxlen=retain)
        self._subs: set[MemorySubscription] = set()
        self._buffer = buffer

    async def publish(self, events: Sequence[Event]) -> None:
        subs = self._subs
        for e in events:
            self._seq += 1
            e.id = str(self._seq)
            self._recent.append(e)
            if subs:
                for s in list(subs):
                    if s.matches(e):
                        s._offer(e)

    def subscribe(self, *, job_id: str | None = None, run_id: str | None = None,
                  types: Collection[EventType] | None = None,
                  after: str | None = None) -> MemorySubscription:
        sub = MemorySubscription(self, job_id, run_id, types, self._buffer)
        if after is not None:
            try:
                after_seq = int(after)
            except ValueError:
                after_seq = 0
            for e in self._recent:
                if int(e.id or 0) > after_seq and sub.matches(e):
                    sub._replay.append(e)
        self._subs.add(sub)
        return sub

    def retains(self, after: str) -> bool:
        try:
            seq = int(after)
        except ValueError:
            return False
        if seq > self._seq:  # an id from before a restart: numbering started again
            return False
        return seq == self._seq or (bool(self._recent) and int(self._recent[0].id or 0) <= seq + 1)

    async def stop(self) -> None:
        for s in list(self._subs):
            await s.aclose()

    @property
    def subscribers(self) -> int:
        return len(self._subs)
