"""What the Kafka adapters promise beyond the port contracts: dead letters, topic creation, several event
partitions, an unreachable broker. Against the real (Tansu) broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from chronos_adapters.kafka import KafkaDispatchQueue, KafkaEventBus
from chronos_adapters.kafka.queue import DEAD_REASON, DEAD_SOURCE, TRIES
from chronos_core.errors import BrokerUnavailable
from chronos_core.models import EventType
from tests.contracts.test_bus_contract import ev
from tests.contracts.test_queue_contract import make_dispatch, make_job
from tests.fixtures.kafka import KafkaNames, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


@pytest.fixture
async def queue(kafka_bootstrap: str, kafka_names: KafkaNames) -> AsyncIterator[KafkaDispatchQueue]:
    q = KafkaDispatchQueue(kafka_bootstrap, topic=kafka_names.topic("runs"), group=kafka_names.group(),
                           partitions=2, max_tries=3, client_id=kafka_names.prefix,
                           session_timeout_ms=2000, heartbeat_interval_ms=300, rebalance_timeout_ms=500)
    await q.start()
    try:
        yield q
    finally:
        await q.stop()


async def read_all(bootstrap: str, topic: str, n: int) -> list[tuple[bytes | None, bytes, dict[str, str]]]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await c.start()
    out = []
    try:
        async with asyncio.timeout(60):
            while len(out) < n:
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    out += [(m.key, m.value, {k: v.decode() for k, v in m.headers}) for m in msgs]
    finally:
        await c.stop()
    return out


async def test_undecodable_message_goes_to_the_dead_letter_topic_and_is_not_delivered(
        kafka_bootstrap: str, queue: KafkaDispatchQueue) -> None:
    job = make_job("job-dl")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(queue.topic, b"{not json", key=job.id.encode())
        await producer.send_and_wait(queue.topic, b'{"v": 99, "kind": "dispatch"}', key=job.id.encode())
    finally:
        await producer.stop()
    good = make_dispatch(job)
    await queue.put([good])
    async with asyncio.timeout(60):
        got = await queue.get()
    assert got.run.id == good.run.id
    await queue.ack(got)
    dead = await read_all(kafka_bootstrap, queue.dead_letter_topic, 2)
    assert [d[1] for d in dead] == [b"{not json", b'{"v": 99, "kind": "dispatch"}']
    assert all(d[0] == job.id.encode() for d in dead)
    assert "undecodable" in dead[0][2][DEAD_REASON] and "JSON" in dead[0][2][DEAD_REASON]
    assert "schema version 99" in dead[1][2][DEAD_REASON]
    assert dead[0][2][DEAD_SOURCE].startswith(f"{queue.topic}/")
    assert queue.dead_lettered == 2


async def test_nack_delivers_again_then_dead_letters_after_max_tries(
        kafka_bootstrap: str, queue: KafkaDispatchQueue) -> None:
    sent = make_dispatch(make_job("job-nack"))
    await queue.put([sent])
    tries = 0
    async with asyncio.timeout(60):
        while tries < queue.max_tries:
            d = await queue.get()
            assert d.run.id == sent.run.id
            tries += 1
            await queue.nack(d, f"boom {tries}")
    [dead] = await read_all(kafka_bootstrap, queue.dead_letter_topic, 1)
    assert dead[2][DEAD_REASON] == f"boom {queue.max_tries}" and dead[2][TRIES] == str(queue.max_tries)
    other = make_dispatch(make_job("job-nack"))
    await queue.put([other])
    async with asyncio.timeout(60):
        d = await queue.get()
    assert d.run.id == other.run.id  # the dead one is not delivered a fourth time


async def test_topics_are_created_with_the_given_partitions_and_existing_ones_kept(
        kafka_bootstrap: str, kafka_names: KafkaNames) -> None:
    q = KafkaDispatchQueue(kafka_bootstrap, topic=kafka_names.topic("runs"), partitions=5)
    bus = KafkaEventBus(kafka_bootstrap, topic=kafka_names.topic("events"), partitions=3)
    await q.start()
    await bus.start()
    await q.stop()
    await bus.stop()
    again = KafkaDispatchQueue(kafka_bootstrap, topic=kafka_names.topic("runs"), partitions=9)
    await again.start()  # exists: left as it is
    await again.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([q.topic, q.dead_letter_topic, bus.topic])
    finally:
        await admin.close()
    counts = {t["topic"]: len(t["partitions"]) for t in described}
    assert counts == {q.topic: 5, q.dead_letter_topic: 1, bus.topic: 3}


@pytest.fixture
async def wide_buses(kafka_bootstrap: str, kafka_names: KafkaNames) -> AsyncIterator[list[KafkaEventBus]]:
    buses = [KafkaEventBus(kafka_bootstrap, topic=kafka_names.topic("events"), partitions=4,
                           client_id=f"{kafka_names.prefix}-{i}") for i in range(2)]
    for b in buses:
        await b.start()
    try:
        yield buses
    finally:
        for b in buses:
            await b.stop()


async def test_several_event_partitions_keep_each_jobs_order_and_resume(
        wide_buses: list[KafkaEventBus]) -> None:
    reader, writer = wide_buses
    jobs = [f"job-{i}" for i in range(8)]
    sent = [ev(job=jobs[i % 8], run=None, type=EventType.RUN_LOG) for i in range(80)]
    async with reader.subscribe() as sub:
        await writer.publish(sent)
        got = []
        async with asyncio.timeout(60):
            while len(got) < len(sent):
                got.append(await sub.__anext__())
    assert {e.id for e in got} == {e.id for e in sent}
    assert len({e.id.split(":")[0] for e in sent if e.id}) > 1  # really spread over partitions
    for job in jobs:
        assert [e.id for e in got if e.job_id == job] == [e.id for e in sent if e.job_id == job]
    # a job's stream resumes exactly after any of its ids
    mine = [e for e in sent if e.job_id == "job-3"]
    async with reader.subscribe(job_id="job-3", after=mine[3].id) as again:
        async with asyncio.timeout(60):
            rest = [await again.__anext__() for _ in range(len(mine) - 4)]
    assert [e.id for e in rest] == [e.id for e in mine[4:]]
    # an unfiltered resume loses nothing that followed (it may repeat a few around that instant)
    later = [ev(job=jobs[i % 8], run=None) for i in range(16)]
    await writer.publish(later)
    async with reader.subscribe(after=sent[-1].id) as resumed:
        seen: set[str | None] = set()
        async with asyncio.timeout(60):
            while not {e.id for e in later} <= seen:
                seen.add((await resumed.__anext__()).id)


async def test_an_unreachable_broker_is_broker_unavailable() -> None:
    q = KafkaDispatchQueue(f"127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable):
        async with asyncio.timeout(60):
            await q.start()
    with contextlib.suppress(Exception):
        await q.stop()


async def test_a_full_prefetch_buffer_pauses_fetching_and_resumes_without_loss(
        kafka_bootstrap: str, kafka_names: KafkaNames) -> None:
    q = KafkaDispatchQueue(kafka_bootstrap, topic=kafka_names.topic("runs"), group=kafka_names.group(),
                           partitions=2, prefetch=4, client_id=kafka_names.prefix,
                           session_timeout_ms=2000, heartbeat_interval_ms=300, rebalance_timeout_ms=500)
    await q.start()
    try:
        job = make_job("job-prefetch")
        sent = [make_dispatch(job) for _ in range(40)]
        await q.put(sent)
        got = []
        async with asyncio.timeout(90):
            while len(got) < len(sent):
                d = await q.get()
                assert await q.depth() <= 4  # never more than prefetch fetched ahead
                got.append(d.run.id)
                await q.ack(d)
                if len(got) == 6:
                    await asyncio.sleep(1.5)  # the buffer is full meanwhile: the fetcher waits, paused
        assert got == [d.run.id for d in sent]
    finally:
        await q.stop()


async def test_a_rebalance_hands_unacked_runs_to_the_partitions_new_owner(
        kafka_bootstrap: str, kafka_names: KafkaNames) -> None:
    def make() -> KafkaDispatchQueue:
        return KafkaDispatchQueue(kafka_bootstrap, topic=kafka_names.topic("runs"),
                                  group=kafka_names.group(), partitions=2, client_id=kafka_names.prefix,
                                  session_timeout_ms=2000, heartbeat_interval_ms=300,
                                  rebalance_timeout_ms=500)

    a, b = make(), make()
    await a.start()
    await b.start()
    try:
        jobs = [make_job("job-0"), make_job("job-1")]  # keys that land in partitions 1 and 0
        sent = {job.id: [make_dispatch(job), make_dispatch(job)] for job in jobs}
        await a.put([d for pair in sent.values() for d in pair])
        held = []
        async with asyncio.timeout(60):
            for _ in range(4):
                d = await a.get()
                if d.run.id == sent[d.job.id][0].run.id:
                    await a.ack(d)  # the first run of each job is done...
                else:
                    held.append(d)  # ...the second is still running on a when b joins
        assert len(held) == 2
        async with asyncio.timeout(60):
            moved = await b.get()  # b's join takes one partition from a; its unacked run comes again
        assert moved.run.id in {d.run.id for d in held}
        assert moved.run.id not in {pair[0].run.id for pair in sent.values()}
        await b.ack(moved)
        for d in held:
            await a.ack(d)  # for the partition a lost, this is ignored: b owns it now
        marker = make_dispatch(moved.job)
        await a.put([marker])
        async with asyncio.timeout(60):
            nxt = await b.get()
        assert nxt.run.id == marker.run.id  # nothing else of that partition came to b
        await b.ack(nxt)
    finally:
        await a.stop()
        await b.stop()


async def test_publishing_during_a_broker_outage_does_not_hold_the_caller_and_delivers_later(
        kafka_bootstrap: str, kafka_names: KafkaNames) -> None:
    import time

    from tests.fixtures.kafka import TansuProcess

    proxy = TansuProcess(origin=kafka_bootstrap)
    proxy.start()
    topic = kafka_names.topic("events")
    writer = KafkaEventBus(proxy.bootstrap, topic=topic, publish_timeout=1.0, client_id="w")
    reader = KafkaEventBus(kafka_bootstrap, topic=topic, client_id="r")
    await writer.start()
    await reader.start()
    try:
        async with reader.subscribe(job_id="job-late") as sub:
            proxy.stop()
            late = [ev(job="job-late") for _ in range(3)]
            began = time.monotonic()
            await writer.publish(late)  # returns, does not raise
            assert time.monotonic() - began < 30
            assert all(e.id is None for e in late)
            proxy.start()
            async with asyncio.timeout(90):
                got = [await sub.__anext__() for _ in range(3)]
        assert [e.data for e in got] == [e.data for e in late]  # delivered, in order, once back
    finally:
        await writer.stop()
        await reader.stop()
        proxy.stop()


async def test_a_consumer_that_cannot_join_yet_keeps_trying_until_the_broker_answers(
        kafka_bootstrap: str, kafka_names: KafkaNames) -> None:
    from tests.fixtures.kafka import TansuProcess

    proxy = TansuProcess(origin=kafka_bootstrap)
    proxy.start()
    opts = {"topic": kafka_names.topic("runs"), "group": kafka_names.group(), "partitions": 2,
            "session_timeout_ms": 2000, "heartbeat_interval_ms": 300, "rebalance_timeout_ms": 500}
    worker_side = KafkaDispatchQueue(proxy.bootstrap, client_id="w", **opts)  # type: ignore[arg-type]
    scheduler_side = KafkaDispatchQueue(kafka_bootstrap, client_id="s", **opts)  # type: ignore[arg-type]
    await worker_side.start()
    await scheduler_side.start()
    try:
        proxy.stop()
        waiting = asyncio.create_task(worker_side.get())  # the group consumer cannot start now
        sent = make_dispatch(make_job("job-join"))
        await scheduler_side.put([sent])
        await asyncio.sleep(2)
        assert not waiting.done()
        proxy.start()
        async with asyncio.timeout(90):
            got = await waiting
        assert got.run.id == sent.run.id
        await worker_side.ack(got)
    finally:
        await worker_side.stop()
        await scheduler_side.stop()
        proxy.stop()


async def test_a_broker_that_accepts_connections_but_never_answers_fails_start_within_its_bound() -> None:
    """A process must not hang at start on a broker that takes the connection and says nothing (the
    group-join hang once seen on Tansu): ``start`` gives up after ``start_timeout``."""
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # reads whatever comes and never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    q = KafkaDispatchQueue(f"127.0.0.1:{port}", start_timeout=2)
    try:
        with pytest.raises(BrokerUnavailable, match="no answer within 2s"):
            async with asyncio.timeout(20):  # aiokafka's own request timeout is 40 s
                await q.start()
    finally:
        with contextlib.suppress(Exception):
            await q.stop()
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


async def test_the_live_feed_decodes_only_the_events_its_subscriptions_want(
        kafka_bootstrap: str, kafka_names: KafkaNames) -> None:
    """A worker listens for cancel requests only: the run logs and outcomes of every run go by it
    without being decoded (the type travels in a header); what it subscribed to still arrives."""
    topic = kafka_names.topic("events")
    writer = KafkaEventBus(kafka_bootstrap, topic=topic, client_id=kafka_names.prefix)
    reader = KafkaEventBus(kafka_bootstrap, topic=topic, client_id=kafka_names.prefix)
    await writer.start()
    await reader.start()
    try:
        async with reader.subscribe(types={EventType.RUN_CANCEL_REQUESTED}) as cancels, \
                reader.subscribe(run_id="run-7") as one_run:
            noise = [ev(run=f"run-{i}") for i in range(40)]
            await writer.publish([*noise, ev(run="run-9", type=EventType.RUN_CANCEL_REQUESTED)])
            async with asyncio.timeout(60):
                got = await cancels.__anext__()
                mine = await one_run.__anext__()
        assert got.type is EventType.RUN_CANCEL_REQUESTED and got.run_id == "run-9"
        assert mine.run_id == "run-7" and mine.id == noise[7].id
        assert reader.decoded == 2  # of 41 events: the cancel request and run-7's line
    finally:
        await reader.stop()
        await writer.stop()
