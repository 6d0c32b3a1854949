"""The DispatchQueue contract (chronos_core.ports.DispatchQueue), against every adapter: memory and Kafka.

Pinned: a dispatch comes out as it went in (the run and its job); runs of one job keep their order;
every dispatch put is delivered; ``get`` waits for one; ``stop`` makes a waiting ``get`` raise
CancelledError; ``ack`` of a dispatch is harmless to repeat; and, for a durable queue, what was not acked
is delivered again after the consumer restarts while what was acked (in order) is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from chronos_adapters.memory import MemoryDispatchQueue
from chronos_core.models import Job, JobStatus, MisfirePolicy, OverlapPolicy, Run, RunStatus, Trigger
from chronos_core.ports import Dispatch, DispatchQueue
from chronos_core.retry import RetryPolicy, RetryStrategy

pytestmark = pytest.mark.timeout(120)

_seq = itertools.count(1)
T0 = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def make_job(job_id: str) -> Job:
    return Job(id=job_id, name=f"job {job_id}", type="shell",
               payload={"command": "echo hi", "env": {"A": "1"}}, schedule="*/5 * * * * *",
               timezone="Europe/Paris",
               retry=RetryPolicy(strategy=RetryStrategy.LINEAR, max_attempts=3, delay=2.5),
               timeout=12.5, overlap=OverlapPolicy.FORBID, misfire=MisfirePolicy.FIRE_ALL,
               misfire_grace=1.5, status=JobStatus.ACTIVE, created_at=T0, updated_at=T0,
               next_run_at=T0 + timedelta(seconds=5), description="d", history_limit=10)


def make_dispatch(job: Job, attempt: int = 1) -> Dispatch:
    n = next(_seq)
    slot = T0 + timedelta(seconds=n)
    run = Run(id=f"run-{n:06d}", job_id=job.id, scheduled_for=slot, trigger=Trigger.SCHEDULE,
              attempt=attempt, status=RunStatus.QUEUED, created_at=slot, due_at=slot)
    return Dispatch(run=run, job=job)


QueueFactory = Callable[[], Awaitable[DispatchQueue]]


DURABLE = ["kafka"]  # the adapters whose dispatches survive the process


def _factory(kind: str, request: pytest.FixtureRequest, made: list[DispatchQueue]) -> QueueFactory:
    """Makes started queues; every queue made in one test shares its topic and group (a restart is
    another queue from the same factory)."""
    if kind == "memory":
        async def memory() -> DispatchQueue:
            q = MemoryDispatchQueue()
            await q.start()
            made.append(q)
            return q
        return memory
    from chronos_adapters.kafka import KafkaDispatchQueue

    bootstrap = request.getfixturevalue("kafka_bootstrap")
    names = request.getfixturevalue("kafka_names")

    async def kafka() -> DispatchQueue:
        q = KafkaDispatchQueue(bootstrap, topic=names.topic("runs"), group=names.group(),
                               partitions=3, client_id=names.prefix, session_timeout_ms=2000,
                               heartbeat_interval_ms=300, rebalance_timeout_ms=500)
        await q.start()
        made.append(q)
        return q
    return kafka


@pytest.fixture(params=["memory", "kafka"])
async def make_queue(request: pytest.FixtureRequest) -> AsyncIterator[QueueFactory]:
    made: list[DispatchQueue] = []
    try:
        yield _factory(request.param, request, made)
    finally:
        for q in made:
            await q.stop()


@pytest.fixture(params=DURABLE)
async def make_durable_queue(request: pytest.FixtureRequest) -> AsyncIterator[QueueFactory]:
    made: list[DispatchQueue] = []
    try:
        yield _factory(request.param, request, made)
    finally:
        for q in made:
            await q.stop()


async def test_durable_says_whether_dispatches_survive_the_process(make_queue: QueueFactory) -> None:
    q = await make_queue()
    assert q.durable is (type(q).__name__ != "MemoryDispatchQueue")


async def take(q: DispatchQueue, n: int, *, ack: bool = True) -> list[Dispatch]:
    out = []
    async with asyncio.timeout(60):
        for _ in range(n):
            d = await q.get()
            out.append(d)
            if ack:
                await q.ack(d)
    return out


async def test_a_dispatch_comes_out_as_it_went_in(make_queue: QueueFactory) -> None:
    q = await make_queue()
    sent = make_dispatch(make_job("job-a"))
    await q.put([sent])
    [got] = await take(q, 1)
    assert got == sent
    assert got.job.retry == sent.job.retry and got.job.payload == sent.job.payload
    assert got.run.scheduled_for == sent.run.scheduled_for
    assert got.run.scheduled_for.utcoffset() == timedelta(0)
    assert got.run.status is RunStatus.QUEUED and got.job.overlap is OverlapPolicy.FORBID


async def test_every_dispatch_is_delivered_and_runs_of_a_job_keep_their_order(
        make_queue: QueueFactory) -> None:
    q = await make_queue()
    jobs = [make_job(f"job-{i}") for i in range(5)]
    sent = [make_dispatch(jobs[i % 5]) for i in range(40)]
    await q.put(sent[:15])
    await q.put(sent[15:])
    got = await take(q, len(sent))
    assert sorted(d.run.id for d in got) == sorted(d.run.id for d in sent)
    for job in jobs:
        assert [d.run.id for d in got if d.job.id == job.id] == [d.run.id for d in sent if d.job.id == job.id]


async def test_get_waits_for_a_dispatch(make_queue: QueueFactory) -> None:
    q = await make_queue()
    waiting = asyncio.create_task(q.get())
    await asyncio.sleep(0.5)
    assert not waiting.done()
    sent = make_dispatch(make_job("job-w"))
    await q.put([sent])
    async with asyncio.timeout(60):
        got = await waiting
    assert got.run.id == sent.run.id
    await q.ack(got)


async def test_stop_makes_a_waiting_get_raise_cancelled(make_queue: QueueFactory) -> None:
    q = await make_queue()
    waiting = asyncio.create_task(q.get())
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await q.stop()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(30):
            await waiting
    await q.stop()  # idempotent


async def test_ack_twice_or_of_an_unknown_dispatch_is_harmless(make_queue: QueueFactory) -> None:
    q = await make_queue()
    job = make_job("job-x")
    first, second = make_dispatch(job), make_dispatch(job)
    await q.put([first, second])
    got = await take(q, 1, ack=False)
    await q.ack(got[0])
    await q.ack(got[0])
    await q.ack(make_dispatch(job))  # never delivered by this queue
    [nxt] = await take(q, 1)
    assert nxt.run.id == second.run.id


async def test_durable_queue_redelivers_unacked_dispatches_after_a_consumer_restart(
        make_durable_queue: QueueFactory) -> None:
    make_queue = make_durable_queue
    q = await make_queue()
    job = make_job("job-r")  # one job: one partition, one order
    sent = [make_dispatch(job) for _ in range(5)]
    await q.put(sent)
    got = await take(q, 5, ack=False)
    assert [d.run.id for d in got] == [d.run.id for d in sent]
    by_id = {d.run.id: d for d in got}
    for i in (0, 1, 3):  # 2 and 4 stay unacked (the consumer "crashes" while running them)
        await q.ack(by_id[sent[i].run.id])
    await q.stop()

    q2 = await make_queue()
    marker = make_dispatch(job)
    await q2.put([marker])
    again: list[str] = []
    async with asyncio.timeout(60):
        while not again or again[-1] != marker.run.id:
            d = await q2.get()
            again.append(d.run.id)
            await q2.ack(d)
    # unacked ones come again, in order; ones acked in order before them do not. (3 was acked behind
    # the unacked 2: whether it comes again is up to the adapter - delivery is at least once.)
    assert sent[2].run.id in again and sent[4].run.id in again
    assert sent[0].run.id not in again and sent[1].run.id not in again
    assert again == sorted(again, key=lambda rid: int(rid.split("-")[1]))
    assert len(again) == len(set(again))
    await q2.stop()

    q3 = await make_queue()  # everything was acked in order: nothing comes again before a new one
    last = make_dispatch(job)
    await q3.put([last])
    [d] = await take(q3, 1)
    assert d.run.id == last.run.id


async def test_durable_queue_acked_in_order_is_not_delivered_again(
        make_durable_queue: QueueFactory) -> None:
    make_queue = make_durable_queue
    q = await make_queue()
    job = make_job("job-s")
    sent = [make_dispatch(job) for _ in range(3)]
    await q.put(sent)
    await take(q, 3, ack=True)
    await q.stop()
    q2 = await make_queue()
    marker = make_dispatch(job)
    await q2.put([marker])
    [d] = await take(q2, 1)
    assert d.run.id == marker.run.id


async def test_consumers_in_one_group_share_the_work_without_losing_any(
        make_durable_queue: QueueFactory) -> None:
    a = await make_durable_queue()
    b = await make_durable_queue()
    jobs = [make_job(f"job-g{i}") for i in range(6)]
    seen: dict[str, list[str]] = {"a": [], "b": []}
    job_of: dict[str, str] = {}
    sent: list[Dispatch] = []
    progress = asyncio.Event()

    async def consume(name: str, q: DispatchQueue) -> None:
        while True:
            d = await q.get()
            seen[name].append(d.run.id)
            await q.ack(d)
            progress.set()

    tasks = [asyncio.create_task(consume("a", a)), asyncio.create_task(consume("b", b))]
    try:
        async with asyncio.timeout(90):
            # keep sending until both consumers got work (both joined the group), then until all arrived
            while not (seen["a"] and seen["b"]):
                batch = [make_dispatch(jobs[i % 6]) for i in range(12)]
                sent += batch
                job_of.update((d.run.id, d.job.id) for d in batch)
                await a.put(batch)
                await asyncio.sleep(0.2)
            while not {d.run.id for d in sent} <= set(seen["a"]) | set(seen["b"]):
                progress.clear()
                await progress.wait()
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
    # redeliveries (around a rebalance) may repeat a run, but a consumer sees each job's runs in order
    for name in seen:
        for job in jobs:
            mine = [r for r in seen[name] if job_of[r] == job.id]
            assert mine == sorted(mine)
