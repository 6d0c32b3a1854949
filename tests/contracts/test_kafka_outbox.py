"""The outbox in front of the Kafka dispatch queue, on real MariaDB and a real (Tansu) broker: what is put
is delivered in order and marked sent; while the broker is unreachable ``put`` still succeeds, the outbox
grows, and once the broker is back every dispatch is delivered, none twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from chronos_adapters.kafka import KafkaDispatchQueue
from chronos_adapters.kafka.outbox import OutboxDispatchQueue, OutboxRelay
from chronos_core.ports import Dispatch
from tests.contracts.test_queue_contract import make_dispatch, make_job
from tests.fixtures.kafka import KafkaNames, TansuProcess

pytestmark = [pytest.mark.kafka, pytest.mark.mysql, pytest.mark.timeout(180)]


@pytest.fixture
def proxy(kafka_bootstrap: str) -> Iterator[TansuProcess]:
    """A Tansu proxy in front of the shared broker: stopping it is a broker outage that keeps the data."""
    p = TansuProcess(origin=kafka_bootstrap)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def kafka_queue(bootstrap: str, names: KafkaNames) -> KafkaDispatchQueue:
    return KafkaDispatchQueue(bootstrap, topic=names.topic("runs"), group=names.group(), partitions=3,
                              client_id=names.prefix, session_timeout_ms=2000, heartbeat_interval_ms=300,
                              rebalance_timeout_ms=500, request_timeout_ms=3000)


@pytest.fixture
async def consumer(kafka_bootstrap: str, kafka_names: KafkaNames) -> AsyncIterator[KafkaDispatchQueue]:
    """A worker-side queue straight on the broker (never behind the proxy)."""
    q = kafka_queue(kafka_bootstrap, kafka_names)
    await q.start()
    try:
        yield q
    finally:
        await q.stop()


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait (generously) for an outcome that follows from what the test did."""
    async with asyncio.timeout(90):
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def take(q: KafkaDispatchQueue, n: int) -> list[Dispatch]:
    out = []
    async with asyncio.timeout(90):
        while len(out) < n:
            d = await q.get()
            out.append(d)
            await q.ack(d)
    return out


async def _empty(queue: OutboxDispatchQueue) -> bool:
    return await queue.depth() == 0


async def _true(value: bool) -> bool:
    return value


async def test_put_goes_through_the_outbox_in_order_and_is_marked_sent(
        kafka_bootstrap: str, kafka_names: KafkaNames, fresh_mysql_url: str,
        consumer: KafkaDispatchQueue) -> None:
    inner = kafka_queue(kafka_bootstrap, kafka_names)
    queue = OutboxDispatchQueue(inner, OutboxRelay(fresh_mysql_url, inner, interval=0.2))
    await queue.start()
    try:
        jobs = [make_job(f"job-o{i}") for i in range(3)]
        sent = [make_dispatch(jobs[i % 3]) for i in range(30)]
        await queue.put(sent[:10])
        await queue.put(sent[10:])
        got = await take(consumer, len(sent))
        assert sorted(d.run.id for d in got) == sorted(d.run.id for d in sent)
        for job in jobs:
            assert [d.run.id for d in got if d.job.id == job.id] == \
                [d.run.id for d in sent if d.job.id == job.id]
        assert got[0] == next(d for d in sent if d.run.id == got[0].run.id)
        await until(lambda: _empty(queue))  # marked sent right after the broker acknowledged
    finally:
        await queue.stop()


async def test_while_the_broker_is_down_the_outbox_grows_and_everything_arrives_once_it_is_back(
        kafka_names: KafkaNames, fresh_mysql_url: str, proxy: TansuProcess,
        consumer: KafkaDispatchQueue) -> None:
    inner = kafka_queue(proxy.bootstrap, kafka_names)  # the scheduler side talks through the proxy
    relay = OutboxRelay(fresh_mysql_url, inner, interval=0.2)
    queue = OutboxDispatchQueue(inner, relay)
    await queue.start()
    try:
        job = make_job("job-outage")
        before = [make_dispatch(job) for _ in range(5)]
        await queue.put(before)
        assert [d.run.id for d in await take(consumer, 5)] == [d.run.id for d in before]

        proxy.stop()  # the broker is unreachable for the scheduler
        during = [make_dispatch(job) for _ in range(20)]
        for i in range(0, 20, 5):
            await queue.put(during[i:i + 5])  # scheduling goes on
        assert await queue.depth() == 20
        failures = relay.failures
        await until(lambda: _true(relay.failures > failures))  # the relay tried and could not publish
        assert await queue.depth() == 20

        proxy.start()  # back, same address
        got = await take(consumer, 20)
        assert [d.run.id for d in got] == [d.run.id for d in during]  # all, in order
        await until(lambda: _empty(queue))
        # none twice: the next thing on the topic is a fresh dispatch, not a repeat
        marker = make_dispatch(job)
        await queue.put([marker])
        [nxt] = await take(consumer, 1)
        assert nxt.run.id == marker.run.id
    finally:
        await queue.stop()


async def test_one_relay_at_a_time_on_mysql(
        kafka_bootstrap: str, kafka_names: KafkaNames, fresh_mysql_url: str,
        consumer: KafkaDispatchQueue) -> None:
    inners = [kafka_queue(kafka_bootstrap, kafka_names) for _ in range(2)]
    queues = [OutboxDispatchQueue(q, OutboxRelay(fresh_mysql_url, q, interval=0.1)) for q in inners]
    for q in queues:
        await q.start()
    try:
        job = make_job("job-two-relays")
        sent = [make_dispatch(job) for _ in range(40)]
        for i in range(0, 40, 4):
            await queues[i // 4 % 2].put(sent[i:i + 4])  # both schedulers write
        got = await take(consumer, 40)
        assert [d.run.id for d in got] == [d.run.id for d in sent]  # one relay: one order, no repeats
        assert sorted(q.relay.sent for q in queues) == [0, 40]
    finally:
        for q in queues:
            await q.stop()


async def test_a_relay_whose_lock_session_ended_stops_leading(
        kafka_bootstrap: str, kafka_names: KafkaNames, fresh_mysql_url: str,
        consumer: KafkaDispatchQueue) -> None:
    """The active relay's lock lives as long as its database session, which the server can end under it
    (wait_timeout on an idle connection, a KILL, a proxy): the standby then takes the lock, and the old
    leader must stand by, or two relays send and a job's runs lose their order (review-scaleout F4)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    inners = [kafka_queue(kafka_bootstrap, kafka_names) for _ in range(2)]
    queues = [OutboxDispatchQueue(q, OutboxRelay(fresh_mysql_url, q, interval=0.2)) for q in inners]
    await queues[0].start()
    await until(lambda: _true(queues[0].relay.leading))
    await queues[1].start()
    engine = create_engine(fresh_mysql_url)
    try:
        await asyncio.sleep(1)
        assert not queues[1].relay.leading
        name = f"chronos_outbox_relay:{make_url(fresh_mysql_url).database}"[:64]
        with engine.connect() as conn:  # end the leader's lock session, as wait_timeout would
            holder = conn.scalar(text("SELECT IS_USED_LOCK(:n)"), {"n": name})
            conn.execute(text(f"KILL {int(holder)}"))
        await until(lambda: _true(queues[1].relay.leading))
        await asyncio.sleep(2)  # ten polls of the old leader
        assert [q.relay.leading for q in queues] == [False, True]
        job = make_job("job-lock-lost")
        sent = [make_dispatch(job) for _ in range(12)]
        for i in range(0, 12, 2):
            await queues[i // 2 % 2].put(sent[i:i + 2])  # both schedulers write
        got = await take(consumer, 12)
        assert [d.run.id for d in got] == [d.run.id for d in sent]
    finally:
        engine.dispose()
        for q in queues:
            await q.stop()


async def test_a_put_in_another_process_wakes_the_active_relay_at_once(
        kafka_bootstrap: str, kafka_names: KafkaNames, fresh_mysql_url: str,
        consumer: KafkaDispatchQueue) -> None:
    """Two schedulers, one active relay: rows the other one claimed go out when it puts them (a wake
    record), not at the active relay's next poll (here 60 s, beyond the test's patience)."""
    inners = [kafka_queue(kafka_bootstrap, kafka_names) for _ in range(2)]
    queues = [OutboxDispatchQueue(q, OutboxRelay(fresh_mysql_url, q, interval=60)) for q in inners]
    for q in queues:
        await q.start()
    try:
        await until(lambda: _true(any(q.relay.leading for q in queues)))
        active, standby = (queues if queues[0].relay.leading else queues[::-1])
        assert not standby.relay.leading
        job = make_job("job-woken")
        await asyncio.sleep(1)  # the active relay's first round (and its wake reader's start) is over
        for _round in range(3):
            sent = [make_dispatch(job) for _ in range(2)]
            await standby.put(sent)
            async with asyncio.timeout(15):
                assert [d.run.id for d in await take(consumer, 2)] == [d.run.id for d in sent]
        await until(lambda: _true(active.relay.sent == 6))  # counted once marked sent, after the ack
        assert active.relay.woken >= 1 and standby.relay.sent == 0
    finally:
        for q in queues:
            await q.stop()


async def test_a_put_while_the_relay_sends_a_batch_is_not_left_for_the_next_poll(
        kafka_bootstrap: str, kafka_names: KafkaNames, fresh_mysql_url: str,
        consumer: KafkaDispatchQueue) -> None:
    """A put whose rows become ready while the active relay is sending the batch before them wakes the
    relay's next pass. Its wake used to be cleared after the batch, so those rows waited for the next
    poll (here 60 s; 1 s by default: the start-lag tail of a busy scale-out deployment)."""
    inner = kafka_queue(kafka_bootstrap, kafka_names)
    queue = OutboxDispatchQueue(inner, OutboxRelay(fresh_mysql_url, inner, interval=60, settle=3600))
    await queue.start()
    try:
        await until(lambda: _true(queue.relay.leading))
        await asyncio.sleep(1)  # the relay's first pass (an empty outbox) is over: it waits for a wake
        job = make_job("job-during-send")
        first, second = make_dispatch(job), make_dispatch(job)
        send = inner.put_encoded
        calls = 0

        async def put_meanwhile(messages: list[tuple[str, bytes]]) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:  # the first batch is on its way: the next claim is put now
                await queue.put([second])
            await send(messages)
        inner.put_encoded = put_meanwhile  # type: ignore[method-assign]
        await queue.put([first])
        async with asyncio.timeout(15):
            assert [d.run.id for d in await take(consumer, 2)] == [first.run.id, second.run.id]
        assert calls == 2
    finally:
        await queue.stop()


async def test_two_chronos_processes_on_mysql_and_kafka_run_jobs_through_the_outbox(
        kafka_bootstrap: str, kafka_names: KafkaNames, fresh_mysql_url: str) -> None:
    """The container's scaled-out wiring: a scheduler-only and a worker-only Chronos share MariaDB and
    Kafka; runs fired by one are executed by the other and their events reach the first."""
    from dependency_injector import providers

    from chronos_app.container import Container
    from chronos_app.settings import Settings
    from chronos_core import EventType, RunStatus

    settings = Settings(database_url=fresh_mysql_url, kafka_bootstrap=kafka_bootstrap, allow_shell=True,
                        kafka_runs_topic=kafka_names.topic("runs"),
                        kafka_events_topic=kafka_names.topic("events"),
                        kafka_group=kafka_names.group(), kafka_runs_partitions=3)
    made = []
    for scheduler, worker in ((True, False), (False, True)):
        c = Container()
        c.settings.override(providers.Object(settings))
        c.run_scheduler.override(providers.Object(scheduler))
        c.run_worker.override(providers.Object(worker))
        made.append(c.chronos())
    sched, work = made
    assert type(sched.queue).__name__ == "OutboxDispatchQueue"
    assert sched.store.on_dispatch is not None  # type: ignore[attr-defined]  # rows written in the claim
    for chronos in made:
        await chronos.start()
    try:
        job = await sched.jobs.create({"name": "tick", "type": "shell", "schedule": "*/1 * * * * *",
                                       "payload": {"command": "echo out-$((6*7))"}})
        async with sched.events.subscribe(job_id=job.id, types={EventType.RUN_SUCCEEDED}) as sub:
            async with asyncio.timeout(90):
                done = [await sub.__anext__() for _ in range(2)]
        assert len({e.run_id for e in done}) == 2
        runs = await sched.jobs.history(job.id, status="succeeded")
        assert {r.id for r in runs} >= {e.run_id for e in done}
        assert all("out-42" in r.output and r.owner == work.worker.owner for r in runs)  # type: ignore[union-attr]
        assert all(r.status is RunStatus.SUCCEEDED for r in runs)
    finally:
        for chronos in made:
            await chronos.stop()


async def test_rows_the_store_wrote_wait_for_put_or_are_sent_once_settled(
        kafka_bootstrap: str, kafka_names: KafkaNames, fresh_mysql_url: str,
        consumer: KafkaDispatchQueue) -> None:
    from datetime import UTC, datetime

    from chronos_adapters.kafka.outbox import write_outbox

    inner = kafka_queue(kafka_bootstrap, kafka_names)
    relay = OutboxRelay(fresh_mysql_url, inner, settle=3600)
    queue = OutboxDispatchQueue(inner, relay, run_relay=False)  # the test drives the relay
    await queue.start()
    try:
        job = make_job("job-hook")
        claimed = [make_dispatch(job) for _ in range(3)]
        def write(dispatches: list[Dispatch]) -> None:
            with relay.engine.begin() as conn:  # as the store's claim transaction does
                write_outbox(conn, dispatches, datetime.now(UTC))
        await relay._run(write, claimed)  # (where the engine may be used: an asyncio driver's loop)
        assert await relay.relay_once() == 0  # not handed over yet: run.queued may not be out
        extra = make_dispatch(job)  # a dispatch the store did not write
        await queue.put([*claimed, extra])
        assert await relay.relay_once() == 4 and await queue.depth() == 0
        assert [d.run.id for d in await take(consumer, 4)] == [d.run.id for d in [*claimed, extra]]

        crashed = [make_dispatch(job) for _ in range(2)]  # the scheduler died before its put
        await relay._run(write, crashed)
        relay.settle = timedelta(seconds=0.5)
        await until(lambda: _relayed(relay, 2))
        assert [d.run.id for d in await take(consumer, 2)] == [d.run.id for d in crashed]
        await queue.put(crashed)  # a late put of sent rows sends nothing again
        assert await relay.relay_once() == 0
    finally:
        await queue.stop()


async def _relayed(relay: OutboxRelay, n: int) -> bool:
    return await relay.relay_once() == n


async def test_a_relay_that_lets_go_frees_the_lock_and_databases_do_not_share_it(
        kafka_bootstrap: str, kafka_names: KafkaNames, fresh_mysql_url: str) -> None:
    """A MySQL named lock lives as long as its session: a relay that gives up leading (after a store or
    broker error, or on stop) must end that session, not park it in the pool still holding the lock; and
    deployments on other databases of the same server have locks of their own."""
    from chronos_adapters.kafka.outbox import _end_session
    from tests.fixtures.mysql import create_test_database, drop_test_database

    inner = kafka_queue(kafka_bootstrap, kafka_names)
    first, second = OutboxRelay(fresh_mysql_url, inner), OutboxRelay(fresh_mysql_url, inner)
    other_db = create_test_database()
    elsewhere = OutboxRelay(other_db, inner)
    try:
        for relay in (first, second, elsewhere):
            await relay.open()
        assert await first._lead()
        assert not await second._lead()
        assert await elsewhere._lead()  # another database: not blocked by `first`
        # what the relay loop does when it loses the store or the broker:
        conn, first._lock_conn = first._lock_conn, None
        assert conn is not None
        await first._run(_end_session, conn)
        # the server frees a named lock once it has noticed the session's end (asynchronously, after the
        # socket closed): the relay loop tries again each round; so does this test, briefly
        for _ in range(50):
            if await second._lead():
                break
            await asyncio.sleep(0.1)
        assert second._lock_conn is not None
    finally:
        for relay in (first, second, elsewhere):
            await relay.stop()
        drop_test_database(other_db)


async def test_a_dead_schedulers_claim_reaches_the_workers_within_the_default_misfire_grace(
        tmp_path: Path) -> None:
    """A scheduler killed between its claim and its put leaves the rows unready: the relay sends them
    once ``settle`` old. Since the misfire grace also applies at start, settle (and the relay's poll)
    must stay well inside the default grace, or every such kill turns its claimed runs into missed
    records (the scale-out kill test saw it with settle = grace = 5 s)."""
    from datetime import UTC, datetime

    from chronos_adapters.kafka.outbox import write_outbox
    from chronos_core.models import JobSpec
    from tests.engine.proxies import Proxy

    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    kafka = Proxy(KafkaDispatchQueue("127.0.0.1:9"))
    sent: list[bytes] = []

    async def put_encoded(real: object, messages: list[tuple[str, bytes]]) -> None:
        sent.extend(m for _, m in messages)
    kafka.hooks["put_encoded"] = put_encoded
    relay = OutboxRelay(url, kafka)  # type: ignore[arg-type]
    await relay.open()
    try:
        grace = JobSpec.model_fields["misfire_grace"].default
        assert relay.settle.total_seconds() + relay.interval <= grace / 2
        d = make_dispatch(make_job("job-settle"))
        with relay.engine.begin() as conn:  # claimed 2.5 s ago by a scheduler that then died
            write_outbox(conn, [d], datetime.now(UTC) - timedelta(seconds=2.5))
        assert await relay.relay_once() == 1 and len(sent) == 1
    finally:
        await relay.stop()
