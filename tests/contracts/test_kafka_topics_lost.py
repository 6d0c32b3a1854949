"""Issue #12 item 10: topics lost by the broker (restarted without its data, or deleted) are created again
by the running adapters, instead of every send failing until the processes restart. Against the real
(Tansu) broker. Tansu creates a missing topic by itself on a metadata request (with 4 partitions); a
Kafka broker with ``auto.create.topics.enable=false`` answers UNKNOWN_TOPIC_OR_PARTITION instead: that
answer is injected through a proxy around the real producer."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownTopicOrPartitionError

from chronos_adapters.kafka import KafkaDispatchQueue, KafkaEventBus
from chronos_core.models import EventType
from tests.contracts.test_bus_contract import ev
from tests.contracts.test_queue_contract import make_dispatch, make_job
from tests.engine.proxies import Proxy
from tests.fixtures.kafka import KafkaNames

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


async def delete_topics(bootstrap: str, *topics: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(topics))
    finally:
        await admin.close()


async def partitions(bootstrap: str, topic: str) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return None
        [described] = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()


def unknown_topic_once(producer: Any) -> Proxy:
    """The producer, whose next ``send`` is answered UNKNOWN_TOPIC_OR_PARTITION (no auto-creation)."""
    proxy = Proxy(producer)
    proxy.fail("send", UnknownTopicOrPartitionError())
    return proxy


async def test_the_dispatch_queue_creates_its_lost_topics_again(kafka_bootstrap: str,
                                                               kafka_names: KafkaNames) -> None:
    q = KafkaDispatchQueue(kafka_bootstrap, topic=kafka_names.topic("runs"), group=kafka_names.group(),
                           partitions=3, client_id=kafka_names.prefix)
    await q.start()
    await q.topics.stop()  # (only the send's answer makes it look here)
    try:
        await delete_topics(kafka_bootstrap, q.topic, q.dead_letter_topic)  # the broker lost its data
        q._producer = unknown_topic_once(q._producer)
        job = make_job("job-lost-topic")
        d = make_dispatch(job)
        await q.put([d])  # not StoreUnavailable: the topics are created again and the send goes out
        assert q.topics.recreated == 1
        assert await partitions(kafka_bootstrap, q.topic) == 3  # as configured
        assert await partitions(kafka_bootstrap, q.dead_letter_topic) == 1
        got = await asyncio.wait_for(q.get(), 60)
        assert got.run.id == d.run.id
        await q.ack(got)
    finally:
        await q.stop()


async def test_the_event_bus_creates_its_lost_topic_again(kafka_bootstrap: str,
                                                         kafka_names: KafkaNames) -> None:
    bus = KafkaEventBus(kafka_bootstrap, topic=kafka_names.topic("events"), partitions=2,
                        client_id=kafka_names.prefix)
    await bus.start()
    await bus.topics.stop()
    try:
        await delete_topics(kafka_bootstrap, bus.topic)
        real = bus._producer
        bus._producer = unknown_topic_once(real)
        with pytest.raises(Exception, match="publish"):
            await bus.publish([ev("job-e", type=EventType.RUN_QUEUED)])  # this one is lost (best-effort)...
        assert bus.topics.recreated == 1
        assert await partitions(kafka_bootstrap, bus.topic) == 2  # ... and the topic is back as configured
        bus._producer = real
        event = ev("job-e", type=EventType.RUN_QUEUED)
        await bus.publish([event])
        assert event.id is not None
    finally:
        await bus.stop()


async def test_lost_topics_are_noticed_without_a_send_failing(kafka_bootstrap: str,
                                                             kafka_names: KafkaNames) -> None:
    """A broker may take records for a topic it lost without an error, and the client retries a
    consumer's unknown-partition errors by itself: the adapters look for their topics now and then."""
    q = KafkaDispatchQueue(kafka_bootstrap, topic=kafka_names.topic("runs"), group=kafka_names.group(),
                           partitions=3, client_id=kafka_names.prefix)
    q.topics.every = 0.3
    bus = KafkaEventBus(kafka_bootstrap, topic=kafka_names.topic("events"), partitions=2,
                        client_id=kafka_names.prefix)
    bus.topics.every = 0.3
    await q.start()
    await bus.start()
    try:
        await delete_topics(kafka_bootstrap, q.topic, q.dead_letter_topic, bus.topic)
        for _ in range(600):
            if min(q.topics.recreated, bus.topics.recreated) >= 1:
                break
            await asyncio.sleep(0.1)
        assert await partitions(kafka_bootstrap, q.topic) == 3
        assert await partitions(kafka_bootstrap, q.dead_letter_topic) == 1
        assert await partitions(kafka_bootstrap, bus.topic) == 2
    finally:
        await bus.stop()
        await q.stop()


async def test_consumed_before_tells_a_backlog_from_a_loss(kafka_bootstrap: str,
                                                          kafka_names: KafkaNames) -> None:
    """What the scheduler asks before dispatching a run again: up to when the workers acknowledged
    everything. A message still in the log (a backlog) holds it back; once acknowledged, it moves on."""
    from datetime import UTC, datetime

    q = KafkaDispatchQueue(kafka_bootstrap, topic=kafka_names.topic("runs"), group=kafka_names.group(),
                           partitions=2, client_id=kafka_names.prefix)
    await q.start()
    try:
        job = make_job("job-consumed")
        await q.put([make_dispatch(job)])
        first = await asyncio.wait_for(q.get(), 60)
        await q.ack(first)
        caught_up = datetime.now(UTC)
        consumed = await q.consumed_before()
        assert consumed is not None and consumed >= caught_up  # nothing waits
        await q.put([make_dispatch(job)])  # a backlog: sent, not acknowledged
        sent = datetime.now(UTC)
        consumed = await q.consumed_before()
        assert consumed is not None and caught_up - timedelta(seconds=5) < consumed <= sent
        assert await q.sent_before(["run-x"], sent) == set()  # (no outbox: all or nothing)
        second = await asyncio.wait_for(q.get(), 60)
        await q.ack(second)
        consumed = await q.consumed_before()
        assert consumed is not None and consumed >= sent
        assert await q.sent_before(["run-x"], sent) == {"run-x"}
    finally:
        await q.stop()
