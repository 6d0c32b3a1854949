"""An in-process event bus with a bounded replay window, safe to use from several threads.

The window keeps events as plain tuples, not ``Event`` objects: tuples of strings, datetimes and dicts of
plain values are not tracked by Python's cyclic garbage collector, so ten thousand retained events (three
per run) do not add to every full collection.

**Threads.** ``chronos serve`` runs the API on a thread and event loop of its own beside the engines' (so
a burst of listings cannot hold up the scheduler), and both publish and subscribe here. What makes that
safe, and what a change must keep:

* Ids, the window and the subscriber set change only under one lock (``_lock``), and each publish offers
  its events to the matching subscriptions inside it: every subscription sees events in id order, and
  a subscription registered from any thread misses nothing published after ``subscribe`` returns.
* A subscription is fed only on the event loop it subscribed from (asyncio objects are not thread-safe:
  its ``asyncio.Event`` belongs to that loop). A publisher on another thread appends the event to that
  loop's inbox and, if no drain is pending, schedules one with ``call_soon_threadsafe``: one wake-up per
  drain for all of that loop's subscriptions. A publisher on the subscriber's own loop offers directly,
  unless the inbox still holds events (they came first: the new one goes behind them).
* A subscription made outside any event loop is fed directly by whoever publishes (as before threads).
* ``take`` on a subscription's own loop drains that loop's inbox first, so what it returns is everything
  published before it was called, wherever it was published (see ``MemorySubscription.take``).
"""

from __future__ import annotations

import asyncio
import threading
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


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Inbox:
    """Events on their way to the subscriptions of one event loop, from publishers on other threads.
    Its state changes only under the bus's lock: ``put`` is called with it held; ``drain``, on the
    inbox's loop, takes it only to take the items, and offers them without it."""

    __slots__ = ("items", "lock", "loop", "lost", "scheduled", "subscribers")

    def __init__(self, loop: asyncio.AbstractEventLoop, lock: threading.RLock) -> None:
        self.loop = loop
        self.lock = lock
        self.items: deque[tuple[MemorySubscription, Event]] = deque()
        self.lost: set[MemorySubscription] = set()  # fell ``buffer`` events behind in here: overflowed
        self.scheduled = False  # a drain is scheduled on the loop and has not taken the items yet
        self.subscribers = 0

    def put(self, sub: MemorySubscription, e: Event, buffer: int) -> bool:
        """False if the loop is closed (its subscriptions will never read again)."""
        if self.loop.is_closed():
            self.items.clear()
            return False
        if sub.waiting >= buffer:  # its loop does not keep up: it overflows there, as it would here
            self.lost.add(sub)
        else:
            sub.waiting += 1
            self.items.append((sub, e))
        if not self.scheduled:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # closed meanwhile
                self.items.clear()
                return False
        return True

    def drain(self) -> None:
        with self.lock:
            self.scheduled = False  # an event put after this is drained by the next drain
            items, self.items = self.items, deque()
            lost, self.lost = self.lost, set()
            for sub, _ in items:
                sub.waiting -= 1
        for sub, e in items:
            sub.offer(e)
        for sub in lost:
            sub.overflowed()


class MemorySubscription(BufferedSubscription):
    def __init__(self, bus: MemoryEventBus, job_id: str | None, run_id: str | None,
                 types: Collection[EventType] | None, buffer: int, inbox: _Inbox | None) -> None:
        super().__init__(job_id=job_id, run_id=run_id, types=types, buffer=buffer, detach=bus._detach)
        self.inbox = inbox  # None: no event loop when it subscribed, fed directly
        self.waiting = 0  # events for it in the inbox (under the bus's lock)

    def take(self) -> list[Event]:
        """As :meth:`BufferedSubscription.take`, the events still in its loop's inbox first (published
        on other threads, their drain not run yet): "take everything, then subscribe elsewhere in the
        same step misses nothing" holds for those too (an SSE stream handed over to a new group)."""
        box = self.inbox
        # Unlocked look: an event put before a subscription registered after it (under the lock) is
        # in ``items`` by now, or drained into this one already; one put later reaches that one too.
        if box is not None and box.items and _running_loop() is box.loop:
            box.drain()
        return super().take()

    def overflowed(self) -> None:
        """Events for it were dropped on their way to its loop (on its loop): it ends with
        ``SubscriptionOverflow``, as when its own buffer is full."""
        if not (self._closed or self._overflow):
            self._overflow = True
            self._detach(self)
            self._ready.set()


class MemoryEventBus(EventBus):
    """Delivers to subscribers in this process, on the event loop each subscribed from. Keeps the last
    ``retain`` events for resumption; a subscriber more than ``buffer`` events behind is disconnected
    with ``SubscriptionOverflow``."""

    thread_safe = True  # see the module's docstring

    def __init__(self, *, retain: int = 10_000, buffer: int = 10_000) -> None:
        self._seq = 0
        self._recent: deque[_Kept] = deque(maxlen=retain)
        self._subs: set[MemorySubscription] = set()
        self._inboxes: dict[asyncio.AbstractEventLoop, _Inbox] = {}
        self._buffer = buffer
        # reentrant: an offer made under it may detach an overflowing subscription
        self._lock = threading.RLock()

    async def publish(self, events: Sequence[Event]) -> None:
        here = asyncio.get_running_loop()
        with self._lock:
            subs = self._subs
            for e in events:
                self._seq += 1
                e.id = str(self._seq)
                self._recent.append((self._seq, e.type.value, e.time, e.job_id, e.run_id, e.data))
                if subs:
                    for s in list(subs):
                        if s.matches(e):
                            box = s.inbox
                            if box is None or (box.loop is here and not box.items):
                                s.offer(e)
                            elif not box.put(s, e, self._buffer):
                                self._drop_loop(box)

    def subscribe(self, *, job_id: str | None = None, run_id: str | None = None,
                  types: Collection[EventType] | None = None,
                  after: str | None = None) -> MemorySubscription:
        loop = _running_loop()
        with self._lock:
            inbox = None
            if loop is not None:
                inbox = self._inboxes.get(loop)
                if inbox is None:
                    inbox = self._inboxes[loop] = _Inbox(loop, self._lock)
                inbox.subscribers += 1
            sub = MemorySubscription(self, job_id, run_id, types, self._buffer, inbox)
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

    def _detach(self, sub: BufferedSubscription) -> None:
        with self._lock:
            if not isinstance(sub, MemorySubscription) or sub not in self._subs:
                return
            self._subs.discard(sub)
            box = sub.inbox
            if box is not None:
                box.subscribers -= 1
                if box.subscribers <= 0 and self._inboxes.get(box.loop) is box:
                    del self._inboxes[box.loop]

    def _drop_loop(self, box: _Inbox) -> None:
        """The subscriptions of a closed event loop: no one will read them again."""
        for s in [s for s in self._subs if s.inbox is box]:
            s._closed = True
            self._detach(s)

    def retains(self, after: str) -> bool:
        try:
            seq = int(after)
        except ValueError:
            return False
        with self._lock:
            if seq > self._seq:  # an id from before a restart: numbering started again
                return False
            return seq == self._seq or (bool(self._recent) and self._recent[0][0] <= seq + 1)

    async def stop(self) -> None:
        here = asyncio.get_running_loop()
        with self._lock:
            subs = list(self._subs)
        for s in subs:
            box = s.inbox
            if box is None or box.loop is here:
                await s.aclose()
                continue
            closing = s.aclose()
            try:  # closed on its own loop: its asyncio.Event belongs there
                asyncio.run_coroutine_threadsafe(closing, box.loop)
            except RuntimeError:  # that loop is closed
                closing.close()
                s._closed = True
                self._detach(s)

    @property
    def subscribers(self) -> int:
        return len(self._subs)
