"""The EventBus contract (chronos_core.ports.EventBus), against every adapter: memory and Kafka.

Each test gets a ``bus`` to subscribe on and a ``peer`` to publish from: for memory they are the same bus;
for Kafka the peer is another bus instance on the same topic (another process, in production), so every
test also pins that an instance sees what any other publishes.

Pinned: publish sets distinct ids; a subscriber gets events in publication order per job; a subscription
is registered when ``subscribe`` returns; filters (job, run, types, together); ``after=`` replays what
followed, then goes on live, without gap or repeat; a subscriber that falls behind its buffer is closed
with SubscriptionOverflow carrying the last id it got, from which it can resume; ``aclose`` and ``stop``
end subscriptions.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from chronos_adapters.memory import MemoryEventBus
from chronos_core.errors import SubscriptionOverflow
from chronos_core.models import Event, EventType
from chronos_core.ports import EventBus, Subscription

pytestmark = pytest.mark.timeout(120)

BUFFER = 64
_n = itertools.count()
T0 = datetime(2026, 11, 1, 1, 30, tzinfo=UTC)


def ev(job: str = "job-1", run: str | None = "run-1", type: EventType = EventType.RUN_LOG,
       **data: object) -> Event:
    n = next(_n)
    return Event(type=type, time=T0 + timedelta(milliseconds=n), job_id=job, run_id=run,
                 data={"n": n, **data})


@dataclass
class Buses:
    bus: EventBus
    peer: EventBus


@pytest.fixture(params=["memory", "kafka"])
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    made: list[EventBus] = []
    if request.param == "memory":
        bus = MemoryEventBus(buffer=BUFFER)
        made = [bus]
        pair = Buses(bus, bus)
    else:
        from chronos_adapters.kafka import KafkaEventBus

        bootstrap = request.getfixturevalue("kafka_bootstrap")
        names = request.getfixturevalue("kafka_names")
        made = [KafkaEventBus(bootstrap, topic=names.topic("events"), buffer=BUFFER,
                              client_id=f"{names.prefix}-{i}") for i in range(2)]
        pair = Buses(made[0], made[1])
    for b in made:
        await b.start()
    try:
        yield pair
    finally:
        for b in made:
            await b.stop()


async def collect(sub: Subscription, n: int) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(60):
        while len(out) < n:
            out.append(await sub.__anext__())
    return out


async def nothing_more(sub: Subscription, bus: EventBus, marker: Event | None = None) -> list[Event]:
    """Publish ``marker`` (it must pass the subscription's filters) and return what came before it."""
    marker = marker or ev(job="job-marker", run=None, type=EventType.JOB_UPDATED)
    await bus.publish([marker])
    before: list[Event] = []
    async with asyncio.timeout(60):
        async for e in sub:
            if e.id == marker.id:
                return before
            before.append(e)
    raise AssertionError("subscription ended before the marker")


def key(events: list[Event]) -> list[int]:
    return [int(e.data["n"]) for e in events]  # type: ignore[call-overload]


async def test_publish_sets_distinct_ids_and_subscribers_get_events_in_order(buses: Buses) -> None:
    async with buses.bus.subscribe() as sub:
        sent = [ev(job=f"job-{i % 3}") for i in range(30)]
        await buses.peer.publish(sent[:10])
        await buses.peer.publish(sent[10:])
        assert all(e.id for e in sent) and len({e.id for e in sent}) == len(sent)
        got = await collect(sub, len(sent))
    assert [e.id for e in got] == [e.id for e in sent]  # one job or not: single-partition order
    assert [(e.type, e.job_id, e.run_id, e.time, e.data) for e in got] == \
        [(e.type, e.job_id, e.run_id, e.time, e.data) for e in sent]


async def test_a_subscription_is_registered_when_subscribe_returns(buses: Buses) -> None:
    sub = buses.bus.subscribe(job_id="job-now")
    e = ev(job="job-now")
    await buses.peer.publish([e])  # no await between subscribe and publish
    async with sub:
        [got] = await collect(sub, 1)
    assert got.id == e.id


async def test_filters_by_job_run_and_types_together(buses: Buses) -> None:
    bus = buses.bus
    by_job = bus.subscribe(job_id="job-a")
    by_run = bus.subscribe(run_id="run-2")
    by_type = bus.subscribe(types={EventType.RUN_SUCCEEDED, EventType.RUN_FAILED})
    combined = bus.subscribe(job_id="job-a", run_id="run-2", types={EventType.RUN_SUCCEEDED})
    sent = [
        ev("job-a", "run-1", EventType.RUN_STARTED), ev("job-a", "run-1", EventType.RUN_SUCCEEDED),
        ev("job-a", "run-2", EventType.RUN_LOG), ev("job-a", "run-2", EventType.RUN_SUCCEEDED),
        ev("job-b", "run-2", EventType.RUN_FAILED), ev("job-b", "run-3", EventType.RUN_SUCCEEDED),
        ev("job-b", None, EventType.JOB_UPDATED),
    ]
    await buses.peer.publish(sent)
    expect = {
        "job": [0, 1, 2, 3],
        "run": [2, 3, 4],
        "types": [1, 3, 4, 5],
        "combined": [3],
    }
    markers = {  # each passes its subscription's filters
        "job": ev("job-a", None, EventType.JOB_UPDATED),
        "run": ev("job-c", "run-2", EventType.RUN_LOG),
        "types": ev("job-c", None, EventType.RUN_FAILED),
        "combined": ev("job-a", "run-2", EventType.RUN_SUCCEEDED),
    }
    for name, sub in (("job", by_job), ("run", by_run), ("types", by_type), ("combined", combined)):
        async with sub:
            got = await nothing_more(sub, buses.peer, markers[name])
        assert key(got) == [key(sent)[i] for i in expect[name]], name


async def test_after_replays_what_followed_then_goes_live_without_gap_or_repeat(buses: Buses) -> None:
    first = [ev(job="job-r") for _ in range(6)]
    await buses.peer.publish(first)
    sub = buses.bus.subscribe(after=first[2].id)
    live = [ev(job="job-r") for _ in range(3)]
    await buses.peer.publish(live)
    async with sub:
        got = await collect(sub, 6)
        rest = await nothing_more(sub, buses.peer)
    assert [e.id for e in got] == [e.id for e in first[3:] + live]
    assert rest == []


async def test_after_with_a_filter_replays_only_matching_events(buses: Buses) -> None:
    sent = [ev(job="job-x" if i % 2 else "job-y", run=f"run-{i}") for i in range(10)]
    await buses.peer.publish(sent)
    sub = buses.bus.subscribe(job_id="job-x", after=sent[1].id)
    async with sub:
        got = await collect(sub, 4)
    assert [e.id for e in got] == [e.id for e in sent if e.job_id == "job-x"][1:]


async def test_retains_says_whether_after_can_replay(buses: Buses) -> None:
    sent = [ev() for _ in range(3)]
    await buses.peer.publish(sent)
    assert buses.bus.retains(sent[0].id or "") in (True, None)
    assert buses.bus.retains("not an id of this bus") in (False, None)


async def test_a_subscriber_that_falls_behind_is_closed_with_overflow_and_can_resume(
        buses: Buses) -> None:
    bus = buses.bus
    sub = bus.subscribe(job_id="job-slow")
    base = bus.subscribers  # type: ignore[attr-defined]
    sent = [ev(job="job-slow") for _ in range(BUFFER * 3)]
    await buses.peer.publish(sent)
    async with asyncio.timeout(60):  # the bus drops the subscription once its buffer overflows
        while bus.subscribers == base:  # type: ignore[attr-defined]  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    got: list[Event] = []
    with pytest.raises(SubscriptionOverflow) as info:
        async with asyncio.timeout(60):
            async for e in sub:
                got.append(e)
    assert [e.id for e in got] == [e.id for e in sent[:BUFFER]]  # nothing silently skipped
    assert info.value.last_event_id == got[-1].id
    async with bus.subscribe(job_id="job-slow", after=info.value.last_event_id) as again:
        rest = await collect(again, len(sent) - BUFFER)
    assert [e.id for e in rest] == [e.id for e in sent[BUFFER:]]


async def test_aclose_ends_a_subscription(buses: Buses) -> None:
    sub = buses.bus.subscribe()
    await sub.aclose()
    await buses.peer.publish([ev()])
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(30):
            await sub.__anext__()


async def test_stop_closes_every_subscription(buses: Buses) -> None:
    subs = [buses.bus.subscribe(), buses.bus.subscribe(job_id="job-1")]
    waiting = [asyncio.create_task(collect(s, 1)) for s in subs]
    await asyncio.sleep(0.2)
    await buses.bus.stop()
    for w in waiting:
        with pytest.raises(StopAsyncIteration):
            async with asyncio.timeout(30):
                await w
    await buses.bus.stop()  # idempotent
