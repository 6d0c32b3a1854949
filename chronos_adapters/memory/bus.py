"""An in-process event bus with a bounded replay window.

The window keeps events as plain tuples, not ``Event`` objects: tuples of strings, datetimes and dicts of
plain values are not tracked by Python's cyclic garbage collector, so ten thousand retained events (three
per run) do not add to every full collection."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from chronos_core.models import Event, EventType
from chronos_core.ports import EventBus
from chronos_core.subscriptions import BufferedSubscription

__all__ = ["MemoryEventBus", "MemorySubscription"]

_TYPES = {t.value: t for t in EventType}
_Kept = tuple[int, str, datetime, "str | None", "str | None", dict[str, Any]]


def _event(k: _Kept) -> Event:
    return Event(type=_TYPES[k[1]], time=k[2], job_id=k[3], run_id=k[4], data=k[5], id=str(k[0]))


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
        self._recent: deque[_Kept] = deque(maxlen=retain)
        self._subs: set[MemorySubscription] = set()
        self._buffer = buffer

    async def publish(self, events: Sequence[Event]) -> None:
        subs = self._subs
        for e in events:
            self._seq += 1
            e.id = str(self._seq)
            self._recent.append((self._seq, e.type.value, e.time, e.job_id, e.run_id, e.data))
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
            for k in self._recent:
                if k[0] > after_seq:
                    e = _event(k)
                    if sub.matches(e):
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
        return seq == self._seq or (bool(self._recent) and self._recent[0][0] <= seq + 1)

    async def stop(self) -> None:
        for s in list(self._subs):
            await s.aclose()

    @property
    def subscribers(self) -> int:
        return len(self._subs)
