"""An SSE stream handed over to its group neither loses nor repeats an event the engines' thread (another
loop) published around the hand-over, still in the API loop's inbox (found by the race review of apithread).

Real MemoryEventBus, SseHub, SseClient (its ASGI send collects the body). The engines' publish is made
from a thread of its own (its own loop, as the engines' in ``chronos serve``) while the API loop is in
the step that hands the stream over (catch_up: own.take() is empty -> hub.join), which is exactly where
the inbox drain for the API loop is still pending."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from chronos_adapters.memory import MemoryEventBus
from chronos_app.api.fanout import SseHub
from chronos_app.api.frames import EventFrames
from chronos_core import Event, EventType


def _event(n: int) -> Event:
    return Event(type=EventType.JOB_CREATED, time=datetime.now(UTC), job_id=f"job{n}",
                 data={"name": f"j{n}", "status": "active", "next_run_at": None})


def _publish_from_other_thread(bus: MemoryEventBus, event: Event) -> None:
    """As the engines do in chronos serve: publish on their own loop, on another thread."""
    t = threading.Thread(target=lambda: asyncio.run(bus.publish([event])))
    t.start()
    t.join()


async def _collect(hub: SseHub) -> tuple[Any, list[bytes]]:
    bodies: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        bodies.append(message.get("body", b""))

    client = hub.client({"type": "http", "method": "GET"}, send)
    return client, bodies


@pytest.mark.parametrize("group", ["new-group", "existing-group"])
async def test_an_event_published_on_another_thread_just_before_the_hand_over_reaches_the_stream(
        group: str) -> None:
    bus = MemoryEventBus()
    await bus.start()
    hub = SseHub(bus, EventFrames(), ping=15)
    if group == "existing-group":  # another client of the same filter joined earlier
        other, _ = await _collect(hub)
        first = bus.subscribe()
        await first.start()
        assert hub.join(other, first, None, None)
    client, bodies = await _collect(hub)
    runner = asyncio.ensure_future(client.run())
    own = bus.subscribe()  # the stream's own subscription (catch_up), on the API loop
    await own.start()
    assert own.ready == 0  # caught up: catch_up calls hub.join now, in this step of the loop ...
    _publish_from_other_thread(bus, _event(1))  # ... and the engines' thread publishes meanwhile
    assert own.ready == 0  # not delivered yet: it waits in this loop's inbox (drain scheduled)
    assert hub.join(client, own, None, None)
    for _ in range(20):  # let the drain and the group's task run
        await asyncio.sleep(0.01)
    client.end()
    await asyncio.wait_for(runner, 5)
    sent = b"".join(bodies)
    assert b'"job_id":"job1"' in sent, f"the stream never got the event ({group}): {sent!r}"
    await bus.stop()
    assert b'"job_id":"job1"' in sent, f"the stream never got the event ({group}): {sent!r}"
    await bus.stop()


async def test_an_event_in_the_inbox_for_the_group_is_not_sent_twice_to_a_resumed_stream() -> None:
    """The other way round: E is published on the engines' thread before the stream subscribes, so it is
    in the API loop's inbox for the existing group only; the stream resumes from an id before E (its replay
    holds E, from the bus's window) and hands over before the drain: the group then writes E again."""
    bus = MemoryEventBus()
    await bus.start()
    hub = SseHub(bus, EventFrames(), ping=15)
    other, _ = await _collect(hub)
    first = bus.subscribe()
    await first.start()
    assert hub.join(other, first, None, None)  # the group exists
    await asyncio.sleep(0.05)
    _publish_from_other_thread(bus, _event(0))
    await asyncio.sleep(0.05)  # drained: the window holds event 1
    client, bodies = await _collect(hub)
    runner = asyncio.ensure_future(client.run())
    _publish_from_other_thread(bus, _event(2))  # in the inbox for the group only (drain pending)
    own = bus.subscribe(after="1")  # the stream resumes after event 1: its replay holds event 2
    await own.start()
    caught = own.take()  # catch_up writes what it took ...
    assert [e.job_id for e in caught] == ["job2"]
    assert client.write(b"".join(hub.frames.frame(e) for e in caught))
    assert hub.join(client, own, None, None)  # ... and, nothing more ready, hands over
    for _ in range(20):
        await asyncio.sleep(0.01)
    client.end()
    await asyncio.wait_for(runner, 5)
    sent = b"".join(bodies)
    assert sent.count(b'"job_id":"job2"') == 1, f"sent {sent.count(b'job2')} times: {sent!r}"
    await bus.stop()
