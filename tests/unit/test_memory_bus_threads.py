"""The in-process bus across threads (``chronos serve`` runs the API on a thread and event loop of its own
beside the engines'): a subscription is fed on the loop it subscribed from, in id order, whoever
publishes; ids stay distinct with publishers on two threads; a subscriber whose loop does not keep up
overflows instead of growing an unbounded inbox; ``stop`` closes subscriptions on their own loop.

The subscribers' loops run in debug mode: there asyncio refuses a non-thread-safe call from another
thread (``Future.set_result`` of a waiter, ``call_soon``) with a RuntimeError, so a delivery that skips
``call_soon_threadsafe`` fails here at once instead of hanging or passing by luck."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from chronos_adapters.memory import MemoryEventBus
from chronos_core.errors import SubscriptionOverflow
from chronos_core.models import Event, EventType

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def ev(n: int, job: str = "job-1") -> Event:
    return Event(type=EventType.RUN_LOG, time=datetime(2026, 12, 1, tzinfo=UTC), job_id=job, run_id="r",
                 data={"n": n})


class LoopThread:
    """An event loop (debug mode) running on a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_debug(True)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro_fn: Callable[[], Awaitable[T]]) -> T:
        async def main() -> T:
            return await coro_fn()
        return asyncio.run_coroutine_threadsafe(main(), self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def other() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


async def test_a_subscriber_on_one_loop_gets_what_another_thread_publishes(other: LoopThread) -> None:
    asyncio.get_running_loop().set_debug(True)
    bus = MemoryEventBus()
    async with bus.subscribe(job_id="job-1") as sub:
        got = asyncio.ensure_future(anext(sub))
        await asyncio.sleep(0)  # the subscriber waits on its asyncio.Event
        other.run(lambda: bus.publish([ev(1), ev(2, job="job-2"), ev(3)]))
        first = await asyncio.wait_for(got, 30)
        second = await asyncio.wait_for(anext(sub), 30)
    assert (first.data["n"], second.data["n"]) == (1, 3)
    assert [first.id, second.id] == ["1", "3"]


async def test_the_publisher_thread_is_woken_by_what_this_loop_publishes(other: LoopThread) -> None:
    """The other direction: the engines' worker waits for a cancel request the API publishes."""
    bus = MemoryEventBus()
    ready = threading.Event()

    async def follow() -> list[Any]:
        async with bus.subscribe() as sub:
            ready.set()
            return [(await anext(sub)).data["n"] for _ in range(2)]

    waiting = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(follow(), other.loop))
    await asyncio.to_thread(ready.wait, 30)
    await bus.publish([ev(7)])
    await bus.publish([ev(8)])
    assert await asyncio.wait_for(waiting, 30) == [7, 8]


async def test_events_queued_for_a_loop_keep_their_order_before_its_own(other: LoopThread) -> None:
    """An event published from another thread waits in this loop's inbox; one this loop publishes next
    must come after it, not jump the queue."""
    bus = MemoryEventBus()
    async with bus.subscribe() as sub:
        other.run(lambda: bus.publish([ev(1)]))  # into the inbox; this loop has not drained it yet
        await bus.publish([ev(2)])
        got = [(await asyncio.wait_for(anext(sub), 30)).data["n"] for _ in range(2)]
    assert got == [1, 2]


async def test_ids_stay_distinct_and_ordered_with_publishers_on_two_threads(other: LoopThread) -> None:
    bus = MemoryEventBus(retain=100_000, buffer=100_000)
    n = 4000
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can: a race shows up
    try:
        async with bus.subscribe() as sub:
            async def burst(tag: int) -> None:
                for i in range(n):
                    await bus.publish([ev(i, job=f"job-{tag}")])

            there = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(burst(1), other.loop))
            await burst(0)
            await there
            ids = [int((await asyncio.wait_for(anext(sub), 30)).id or 0) for _ in range(2 * n)]
    finally:
        sys.setswitchinterval(previous)
    assert ids == list(range(1, 2 * n + 1))


async def test_a_subscriber_whose_loop_does_not_keep_up_overflows(other: LoopThread) -> None:
    bus = MemoryEventBus(buffer=8)
    blocked = threading.Event()

    sub = other.run(lambda: _subscribe(bus))
    other.loop.call_soon_threadsafe(blocked.wait)  # the loop is stuck: its inbox is not drained
    for i in range(100):
        await bus.publish([ev(i)])
    inbox = sub.inbox
    assert inbox is not None and len(inbox.items) <= 8  # bounded, not one per event
    blocked.set()

    async def read() -> list[int]:
        got = []
        with pytest.raises(SubscriptionOverflow):
            while True:
                got.append((await anext(sub)).data["n"])
        return got

    got = other.run(read)
    assert got == list(range(len(got))) and len(got) <= 16
    assert bus.subscribers == 0


async def test_stop_closes_a_subscription_on_its_own_loop(other: LoopThread) -> None:
    bus = MemoryEventBus()
    sub = other.run(lambda: _subscribe(bus))
    waiting = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_drain(sub), other.loop))
    await asyncio.sleep(0.05)
    await bus.stop()
    assert await asyncio.wait_for(waiting, 30) == []
    assert bus.subscribers == 0


async def _subscribe(bus: MemoryEventBus) -> Any:
    return bus.subscribe()


async def _drain(sub: Any) -> list[Event]:
    return [e async for e in sub]


async def test_a_subscription_of_a_closed_loop_is_dropped() -> None:
    bus = MemoryEventBus()
    t = LoopThread()
    sub = t.run(lambda: _subscribe(bus))
    t.close()
    await bus.publish([ev(1)])
    assert bus.subscribers == 0 and sub.inbox is not None and not sub.inbox.items
    await bus.stop()
