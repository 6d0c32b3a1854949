"""What the SSE fan-out's hand-over relies on (chronos_app.api.fanout), against every bus: a follower that
takes everything its subscription holds (``BufferedSubscription.take``) and subscribes again in the same
step of the event loop gets every event once, however the events were split between the two."""

from __future__ import annotations

import asyncio

import pytest

from chronos_core.errors import SubscriptionOverflow
from chronos_core.models import Event
from chronos_core.subscriptions import BufferedSubscription
from tests.contracts.test_bus_contract import BUFFER, Buses, buses, collect, ev, key, nothing_more

__all__ = ["buses"]  # the fixture, for every bus


async def test_taking_everything_then_subscribing_in_one_step_loses_and_repeats_nothing(buses: Buses) -> None:
    own = buses.bus.subscribe()
    assert isinstance(own, BufferedSubscription)
    await own.start()
    sent = [ev(job=f"job-{i % 3}") for i in range(20)]
    await buses.peer.publish(sent[:10])
    got = await collect(own, 3)
    async with asyncio.timeout(60):
        while True:  # until the rest of the first ten arrived
            if own.ready >= 7:
                break
            await asyncio.sleep(0.01)
    await buses.peer.publish(sent[10:])  # on Kafka some may arrive before the hand-over, some after
    await asyncio.sleep(0)
    got += own.take()  # the hand-over: no await from here...
    shared = buses.bus.subscribe()
    own.close()  # ...to here
    async with shared:
        got += await collect(shared, len(sent) - len(got))
        assert await nothing_more(shared, buses.peer) == []
    assert key(got) == key(sent)


async def test_take_returns_the_replay_then_the_live_events_then_the_overflow(buses: Buses) -> None:
    first = [ev() for _ in range(3)]
    async with buses.bus.subscribe() as seen:
        await buses.peer.publish(first)
        await collect(seen, 3)  # the bus has them
    assert first[0].id is not None
    sub = buses.bus.subscribe(after=first[0].id)
    assert isinstance(sub, BufferedSubscription)
    await sub.start()
    later = [ev() for _ in range(2)]
    await buses.peer.publish(later)
    got: list[Event] = []
    async with asyncio.timeout(60):
        while len(got) < 4:
            got += sub.take()
            await asyncio.sleep(0.01)
    assert key(got) == key(first[1:] + later) and sub.last_id == later[-1].id
    assert sub.take() == []
    # fallen behind: what it holds, then the overflow with the last id taken
    flood = [ev() for _ in range(BUFFER + 10)]
    await buses.peer.publish(flood)
    taken: list[Event] = []
    with pytest.raises(SubscriptionOverflow) as exc:
        async with asyncio.timeout(60):
            while True:
                taken += sub.take()
                await asyncio.sleep(0.01)
    assert key(taken) == key(flood[:len(taken)]) and 0 < len(taken) <= BUFFER
    assert exc.value.last_event_id == taken[-1].id
    await sub.aclose()
    assert sub.take() == []
