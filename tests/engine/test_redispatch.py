"""Issue #12 item 10: a broker that loses acknowledged messages (restarted without its data) must not leave
runs queued forever. The scheduler dispatches again the runs still queued long after their dispatch was
sent, once, and not those the outbox has not sent yet. Real engines on a FakeClock over every real store;
the lossy broker is a durable queue wrapped in a proxy that drops what it is given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus
from chronos_core import (
    ExecutionResult,
    Executor,
    FakeClock,
    Job,
    Jobs,
    JobTypes,
    Run,
    RunStatus,
    Scheduler,
    Worker,
)
from chronos_core.ports import Dispatch, LogSink, Store
from tests.engine.proxies import Proxy

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
S = timedelta(seconds=1)


class OkExecutor(Executor):
    type_name: ClassVar[str] = "shell"

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        return ExecutionResult(ok=True, exit_code=0)


class LossyBroker(Proxy):
    """A durable queue that acknowledges every put; while ``losing`` it forgets what it was given."""

    durable = True

    def __init__(self) -> None:
        super().__init__(MemoryDispatchQueue())
        self.losing = True
        self.lost: list[str] = []

        async def put(real: Any, dispatches: list[Dispatch]) -> None:
            if self.losing:
                self.lost.extend(d.run.id for d in dispatches)
                return
            await real(dispatches)
        self.hooks["put"] = put

    def taken(self) -> list[str]:
        out = []
        while (d := self.inner.get_nowait()) is not None:
            out.append(d.run.id)
        return out


async def test_a_run_the_broker_lost_is_dispatched_again_once(store: Store) -> None:
    clock, broker, bus = FakeClock(T0), LossyBroker(), MemoryEventBus()
    jobs = Jobs(store, broker, bus, clock, JobTypes())  # type: ignore[arg-type]
    scheduler = Scheduler(store, broker, bus, clock, redispatch_after=60)  # type: ignore[arg-type]
    job = await jobs.create({"name": "lost", "type": "shell", "payload": {"command": "true"}})
    run = await jobs.trigger(job.id)
    assert broker.lost == [run.id]  # acknowledged, then forgotten
    broker.losing = False
    clock.set(T0 + 30 * S)
    await scheduler.tick()
    assert broker.taken() == []  # 30 s queued: a busy worker pool, not a loss
    clock.set(T0 + 61 * S)
    await scheduler.tick()
    assert broker.taken() == [run.id]  # dispatched again
    clock.set(T0 + 100 * S)
    await scheduler.tick()
    assert broker.taken() == []  # not every tick
    assert scheduler.stats.redispatched == 1
    clock.set(T0 + 150 * S)
    await scheduler.tick()
    assert broker.taken() == []  # the second time waits twice as long
    clock.set(T0 + 182 * S)
    await scheduler.tick()
    assert broker.taken() == [run.id]  # still queued: sent once more
    assert scheduler.stats.redispatched == 2
    worker = Worker(store, broker, bus, clock, {"shell": OkExecutor()})  # type: ignore[arg-type]
    done = await worker.process(Dispatch(run, job))
    assert done is not None and done.status is RunStatus.SUCCEEDED
    clock.set(T0 + 400 * S)
    await scheduler.tick()
    assert broker.taken() == [] and (await store.get_run(run.id)).status is RunStatus.SUCCEEDED


async def test_a_run_whose_retry_waits_out_its_delay_or_that_runs_is_left_alone(store: Store) -> None:
    clock, broker, bus = FakeClock(T0), LossyBroker(), MemoryEventBus()
    broker.losing = False
    jobs = Jobs(store, broker, bus, clock, JobTypes())  # type: ignore[arg-type]
    scheduler = Scheduler(store, broker, bus, clock, redispatch_after=60)  # type: ignore[arg-type]
    job = await jobs.create({"name": "busy", "type": "shell", "payload": {"command": "true"}})
    running = await jobs.trigger(job.id)
    assert broker.taken() == [running.id]
    assert await store.start_run(running.id, "worker-1", T0, T0 + 600 * S)
    clock.set(T0 + 200 * S)
    await scheduler.tick()
    assert broker.taken() == [] and scheduler.stats.redispatched == 0


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    url: str = request.getfixturevalue("fresh_mysql_url")
    return url


async def test_only_runs_the_outbox_says_were_sent_long_ago_are_dispatched_again(sql_url: str) -> None:
    pytest.importorskip("aiokafka")
    from sqlalchemy import select, update

    from chronos_adapters.kafka import KafkaDispatchQueue
    from chronos_adapters.kafka.outbox import OutboxDispatchQueue, OutboxRelay, outbox_table, write_outbox
    from chronos_adapters.sql import SqlStore

    clock = FakeClock(T0)
    store = SqlStore(sql_url, pool_size=4, on_dispatch=write_outbox)
    relay = OutboxRelay(sql_url, KafkaDispatchQueue("127.0.0.1:9"))  # the relay loop is not run
    kafka = Proxy(relay.queue)  # what the workers' group acknowledged, as the broker would say
    consumed = {"before": T0}

    async def consumed_before(real: Any) -> datetime:
        return consumed["before"]
    kafka.hooks["consumed_before"] = consumed_before
    queue = OutboxDispatchQueue(kafka, relay, run_relay=False)  # type: ignore[arg-type]
    await store.start()
    await relay.open()
    bus = MemoryEventBus()
    jobs = Jobs(store, queue, bus, clock, JobTypes())
    scheduler = Scheduler(store, queue, bus, clock, redispatch_after=60)

    def row(run_id: str) -> Any:
        def read() -> Any:
            with relay.engine.connect() as conn:
                return conn.execute(select(outbox_table).where(outbox_table.c.run_id == run_id)).one()
        return relay.run_blocking(read)

    def mark_sent(run_id: str, at: datetime) -> None:
        def write() -> None:
            with relay.engine.begin() as conn:
                conn.execute(update(outbox_table).where(outbox_table.c.run_id == run_id)
                             .values(sent_at=at.replace(tzinfo=None)))
        relay.run_blocking(write)
    try:
        job = await jobs.create({"name": "outboxed", "type": "shell", "payload": {"command": "true"}})
        unsent = await jobs.trigger(job.id)  # Kafka is down: its row waits in the outbox
        clock.advance(1)
        sent = await jobs.trigger(job.id)
        mark_sent(sent.id, T0 + 2 * S)  # published, acknowledged by the broker...
        clock.set(T0 + 200 * S)
        await scheduler.tick()
        assert scheduler.stats.redispatched == 0  # the workers have not acknowledged that far: a backlog
        consumed["before"] = T0 + 190 * S  # they have now: the run's message was lost with the broker
        clock.set(T0 + 230 * S)
        await scheduler.tick()
        assert scheduler.stats.redispatched == 1
        assert row(unsent.id).sent_at is None and row(unsent.id).seq < row(sent.id).seq  # untouched
        again = row(sent.id)
        assert again.sent_at is None and bool(again.ready)  # written again, to be sent again
        other = Scheduler(store, queue, bus, clock, redispatch_after=60)  # another process: no memory
        consumed["before"] = T0 + 1000 * S
        clock.set(T0 + 300 * S)
        await other.tick()
        assert other.stats.redispatched == 0  # its row is unsent again: not doubled
        mark_sent(sent.id, T0 + 290 * S)
        clock.set(T0 + 316 * S)
        await other.tick()
        assert other.stats.redispatched == 0  # sent 26 s ago: not yet
        clock.set(T0 + 400 * S)
        await other.tick()
        assert other.stats.redispatched == 1
    finally:
        await relay.stop()
        await store.stop()


async def test_a_lost_run_is_sent_again_while_a_backlog_waits_and_the_backlog_is_not(store: Store) -> None:
    """The gate is per run: a steady backlog (the queue never empty) neither holds back a run the broker
    lost nor gets copies of its own."""
    clock, broker, bus = FakeClock(T0), LossyBroker(), MemoryEventBus()
    jobs = Jobs(store, broker, bus, clock, JobTypes())  # type: ignore[arg-type]
    scheduler = Scheduler(store, broker, bus, clock, redispatch_after=60)  # type: ignore[arg-type]
    job = await jobs.create({"name": "mixed", "type": "shell", "payload": {"command": "true"}})
    lost = await jobs.trigger(job.id)  # acknowledged, then forgotten
    broker.losing = False
    waiting = []
    for _ in range(4):  # the backlog: in the broker, not reached by the saturated workers
        clock.advance(1)
        waiting.append(await jobs.trigger(job.id))
    copies: list[str] = []
    for _ in range(40):  # 10 minutes; the workers never catch up
        clock.advance(15)
        await scheduler.tick()
        d = broker.inner.get_nowait()  # what is sent again goes behind the backlog: take it out to count
        while d is not None:
            copies.append(d.run.id)
            d = broker.inner.get_nowait()
        for r in waiting:  # the backlog is still there
            await broker.inner.put([Dispatch(r, job)])
    assert copies.count(lost.id) in (3, 4)  # at 60 s, then 120 s and 240 s later (back-off)
    assert all(copies.count(r.id) == 40 for r in waiting)  # the backlog got no copies (40 rounds)
