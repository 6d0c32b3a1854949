"""An in-process event bus with a bounded replay window."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence

from chronos_core.models import Event, EventType
from chronos_core.ports import EventBus
from chronos_core.subscriptions import BufferedSubscription

__all__ = ["MemoryEventBus", "MemorySubscription"]


class MemorySubscription(BufferedSubscription):
    def __init__(self, bus: MemoryEventBus, job_id: str | None, run_id: str | None,
                 types: Collection[EventType] | None, buffer: int) -> None:
        super().__init__(job_id=job_id, run_id=run_id, types=types, buffer=buffer,
                         detach=bus._subs.discard)

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
                        s.offer(e)

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
                    sub.replay.append(e)
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
