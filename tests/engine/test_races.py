"""Issue #12's races and partial failures, each reproduced deterministically: the real engines on a
FakeClock, over every real store (memory, SQLite, MariaDB), with the other side of a race or a failure
injected through a failing proxy around the real adapter (``tests/engine/proxies.py``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus
from chronos_core import (
    Event,
    EventType,
    ExecutionResult,
    Executor,
    FakeClock,
    Job,
    Jobs,
    JobTypes,
    Payload,
    Run,
    Runs,
    RunStatus,
    Scheduler,
    StoreUnavailable,
    Worker,
)
from chronos_core.ports import Dispatch, LogSink, Store
from tests.engine.proxies import Proxy

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
S = timedelta(seconds=1)


class StepPayload(Payload):
    behaviour: str = "ok"  # ok | fail | lines | block


class StepExecutor(Executor):
    type_name: ClassVar[str] = "step"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = asyncio.Event()
        self._began = asyncio.Event()

    async def wait_started(self, n: int) -> None:
        """Until ``n`` runs have started here (an event per start, not a timed poll)."""
        while len(self.started) < n:
            self._began.clear()
            await self._began.wait()

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        self.started.append(run.id)
        self._began.set()
        mode = job.payload.get("behaviour", "ok")
        if mode == "lines":
            for i in range(3):
                await log(f"line {i}")
        if mode == "block":
            await self.release.wait()
        if mode == "fail":
            return ExecutionResult(ok=False, exit_code=3, error="exit code 3")
        return ExecutionResult(ok=True, exit_code=0)


class BusDown(ConnectionError):
    """What a broker outage looks like to a publisher."""


@dataclass
class Rig:
    clock: FakeClock
    store: Proxy
    queue: Proxy
    bus: Proxy
    jobs: Jobs
    runs: Runs
    scheduler: Scheduler
    worker: Worker
    executor: StepExecutor
    events: list[Event] = field(default_factory=list)

    async def create(self, **spec: Any) -> Job:
        base: dict[str, Any] = {"name": f"job-{len(self.events)}-{spec.get('schedule')}", "type": "step",
                                "payload": {"behaviour": "ok"}}
        return await self.jobs.create({**base, **spec})

    def take(self) -> Dispatch | None:
        d: Dispatch | None = self.queue.inner.get_nowait()
        return d

    async def history(self, job: Job) -> list[Run]:
        return list(reversed(await self.store.list_runs(job.id, limit=100_000)))

    def published(self, type_: EventType, run_id: str | None = None) -> list[Event]:
        return [e for e in self.events if e.type is type_ and (run_id is None or e.run_id == run_id)]

    def bus_fails_on(self, *types: EventType) -> None:
        """Every publish carrying one of ``types`` raises (a broker outage for those events)."""
        async def publish(real: Any, events: list[Event]) -> None:
            if any(e.type in types for e in events):
                raise BusDown("broker unreachable")
            await real(events)
            self.events.extend(events)
        self.bus.hooks["publish"] = publish


def build_rig(store: Store, executor: Any) -> Rig:
    """Every adapter behind a proxy around ``store`` and in-memory queue and bus, the engines on a fake
    clock with ``executor`` for the ``step`` type, and the published events recorded (the rig of this
    module, test_races_ops and test_racereview)."""
    clock = FakeClock(T0)
    store_p, queue, bus = Proxy(store), Proxy(MemoryDispatchQueue()), Proxy(MemoryEventBus())
    types = JobTypes()
    types.register("step", StepPayload)
    r = Rig(clock=clock, store=store_p, queue=queue, bus=bus,
            jobs=Jobs(store_p, queue, bus, clock, types),  # type: ignore[arg-type]
            runs=Runs(store_p, bus, clock),  # type: ignore[arg-type]
            scheduler=Scheduler(store_p, queue, bus, clock, batch_size=50, reap_grace=10),  # type: ignore[arg-type]
            worker=Worker(store_p, queue, bus, clock, {"step": executor}, job_types=types,  # type: ignore[arg-type]
                          lease=30, store_retry_for=3600),
            executor=executor)

    async def record(real: Any, events: list[Event]) -> None:
        await real(events)
        r.events.extend(events)
    bus.hooks["publish"] = record
    return r


@pytest.fixture
def rig(store: Store) -> Rig:
    return build_rig(store, StepExecutor())


async def moving_clock(rig: Rig, task: asyncio.Task[Any], step: float = 1.0, limit: int = 500) -> Any:
    """Run ``task`` to its end, moving the fake clock while it waits (the worker's store retries)."""
    for _ in range(limit):
        for _ in range(5):
            await asyncio.sleep(0)
        if task.done():
            break
        rig.clock.advance(step)
        await asyncio.sleep(0.001)  # a SQL store answers from its threads
    return await asyncio.wait_for(task, 30)


# ------------------------------------------------------------------------ 4: best-effort publishing


async def test_a_bus_error_right_after_start_does_not_keep_the_run_from_executing(rig: Rig) -> None:
    job = await rig.create()
    run = await rig.jobs.trigger(job.id)
    d = rig.take()
    assert d is not None
    rig.bus_fails_on(EventType.RUN_STARTED)
    done = await rig.worker.process(d)
    assert done is not None and done.status is RunStatus.SUCCEEDED
    assert rig.executor.started == [run.id]
    assert (await rig.store.get_run(run.id)).status is RunStatus.SUCCEEDED
    assert rig.queue.inner.get_nowait() is None  # acked, not handed back


async def test_a_failing_run_log_publish_neither_fails_the_attempt_nor_loses_the_output(rig: Rig) -> None:
    job = await rig.create(payload={"behaviour": "lines"})
    run = await rig.jobs.trigger(job.id)
    d = rig.take()
    assert d is not None
    rig.bus_fails_on(EventType.RUN_LOG)
    done = await rig.worker.process(d)
    assert done is not None and done.status is RunStatus.SUCCEEDED
    stored = await rig.store.get_run(run.id)
    assert (stored.status, stored.output) == (RunStatus.SUCCEEDED, "line 0\nline 1\nline 2")
    assert len(rig.published(EventType.RUN_SUCCEEDED, run.id)) == 1


async def test_a_bus_error_in_run_now_still_dispatches_the_run(rig: Rig) -> None:
    job = await rig.create()
    rig.bus_fails_on(EventType.RUN_QUEUED)
    run = await rig.jobs.trigger(job.id)  # with the outbox off, the queue's put comes after the event
    d = rig.take()
    assert d is not None and d.run.id == run.id
    assert (await rig.worker.process(d)) is not None
    assert (await rig.store.get_run(run.id)).status is RunStatus.SUCCEEDED


# ---------------------------------------------------------------------------- 6: the reaper's fence


async def test_a_renewal_between_expired_leases_and_the_reapers_finish_wins(rig: Rig) -> None:
    job = await rig.create(retry={"strategy": "immediate", "max_attempts": 3})
    run = await rig.jobs.trigger(job.id)
    assert rig.take() is not None
    owner = "worker-alive"
    assert await rig.store.start_run(run.id, owner, T0, T0 + 30 * S)
    rig.clock.set(T0 + 41 * S)  # the lease ran out 11 s ago: past the reaper's 10 s grace

    async def renewal(_: Any) -> None:  # the worker was slow, not dead: its heartbeat lands now
        assert await rig.store.inner.renew_leases([run.id], owner, rig.clock.now() + 30 * S) == {run.id}
    rig.store.once_after("expired_leases", renewal)
    await rig.scheduler.reap(rig.clock.now())
    stored = await rig.store.get_run(run.id)
    assert (stored.status, stored.owner) == (RunStatus.RUNNING, owner)  # the live attempt goes on
    assert [r.attempt for r in await rig.history(job)] == [1]  # and no retry runs beside it
    assert rig.published(EventType.RUN_FAILED) == [] and rig.scheduler.stats.reaped == 0
    assert await rig.store.finish_run(run.id, owner, status=RunStatus.SUCCEEDED, finished_at=rig.clock.now())


# ------------------------------------------------- 7: the worker must not take the reaper's write


async def test_after_a_store_error_the_worker_does_not_take_the_reapers_finish_for_its_own(rig: Rig) -> None:
    job = await rig.create(payload={"behaviour": "fail"}, retry={"strategy": "immediate", "max_attempts": 3})
    run = await rig.jobs.trigger(job.id)
    d = rig.take()
    assert d is not None

    async def finish(real: Any, *args: Any, **kwargs: Any) -> bool:
        if rig.store.calls["finish_run"] == 1:  # the worker's first try: the database is restarting...
            rig.clock.advance(45)  # ... long enough for its lease (30 s) and the reaper's grace to pass
            assert await rig.scheduler.reap(rig.clock.now()) == 1
            raise StoreUnavailable("connection lost")
        result: bool = await real(*args, **kwargs)
        return result
    rig.store.hooks["finish_run"] = finish
    assert await moving_clock(rig, asyncio.create_task(rig.worker.process(d))) is None
    assert rig.worker.stats.stale == 1 and rig.worker.stats.finished == 0
    history = await rig.history(job)
    assert [(r.attempt, r.status) for r in history] == [(1, RunStatus.FAILED), (2, RunStatus.QUEUED)]
    assert "stopped renewing its lease" in (history[0].error or "")
    # one run.failed (the reaper's) and one retry_scheduled, for the retry that exists
    assert len(rig.published(EventType.RUN_FAILED, run.id)) == 1
    assert [e.run_id for e in rig.published(EventType.RUN_RETRY_SCHEDULED)] == [history[1].id]


# ------------------------------------------------------------ 1: a failed outbox hand-off stalls nothing


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    url: str = request.getfixturevalue("fresh_mysql_url")
    return url


async def outbox_rows(relay: Any) -> list[tuple[str, bool, bool]]:
    """(run id, ready, sent) of every outbox row."""
    from sqlalchemy import select

    from chronos_adapters.kafka.outbox import outbox_table as t

    def read() -> list[tuple[str, bool, bool]]:
        with relay.engine.connect() as conn:
            return [(r.run_id, bool(r.ready), r.sent_at is not None)
                    for r in conn.execute(select(t).order_by(t.c.seq))]
    return list(relay.run_blocking(read))


async def test_a_failed_outbox_hand_off_stalls_neither_retries_nor_reaping(sql_url: str) -> None:
    pytest.importorskip("aiokafka")
    from chronos_adapters.kafka import KafkaDispatchQueue
    from chronos_adapters.kafka.outbox import OutboxDispatchQueue, OutboxRelay, write_outbox
    from chronos_adapters.sql import SqlStore

    clock = FakeClock(T0)
    store = SqlStore(sql_url, pool_size=4, on_dispatch=write_outbox)
    relay = Proxy(OutboxRelay(sql_url, KafkaDispatchQueue("127.0.0.1:9")))  # the relay loop is not run
    queue = OutboxDispatchQueue(relay.inner.queue, relay, run_relay=False)  # type: ignore[arg-type]
    await store.start()
    await relay.inner.open()
    bus = MemoryEventBus()
    types = JobTypes()
    types.register("step", StepPayload)
    jobs = Jobs(store, queue, bus, clock, types)
    scheduler = Scheduler(store, queue, bus, clock, reap_grace=10)
    try:
        job = await jobs.create({"name": "every-second", "type": "step", "schedule": "* * * * * *",
                                 "retry": {"strategy": "immediate", "max_attempts": 2}})
        dead = await jobs.trigger(job.id)  # taken by a worker that then died
        assert await store.start_run(dead.id, "worker-dead", T0, T0 + 5 * S)
        clock.set(T0 + S)
        relay.fail("write", StoreUnavailable("outbox: OperationalError"))  # the scheduler's put fails once
        with pytest.raises(StoreUnavailable):
            await scheduler.tick()
        [first] = [r for r in await store.list_runs(job.id) if r.scheduled_for == T0 + S]
        assert first.status is RunStatus.QUEUED  # released: the next tick hands it out again
        clock.set(T0 + 16 * S)  # the dead worker's lease ran out 11 s ago
        await scheduler.tick()
        reaped = await store.get_run(dead.id)
        assert reaped.status is RunStatus.FAILED and "worker-dead" in (reaped.error or "")
        retry = next(r for r in await store.list_runs(job.id) if r.attempt == 2)
        clock.advance(1)
        await scheduler.tick()  # the reaped run's retry is handed out too
        rows = await outbox_rows(relay.inner)
        assert [r for r in rows if r[0] == first.id] == [(first.id, True, False)]  # one row, to send
        assert (retry.id, True, False) in rows
        assert len(rows) == len({r[0] for r in rows})
        assert scheduler.stats.reaped == 1
    finally:
        await relay.inner.stop()
        await store.stop()


async def test_write_outbox_is_idempotent_per_run(sql_url: str) -> None:
    pytest.importorskip("aiokafka")
    from sqlalchemy import update

    from chronos_adapters.kafka import KafkaDispatchQueue
    from chronos_adapters.kafka.outbox import OutboxRelay, outbox_table, write_outbox
    from tests.contracts.test_queue_contract import make_dispatch, make_job

    relay = OutboxRelay(sql_url, KafkaDispatchQueue("127.0.0.1:9"))
    await relay.open()
    try:
        job = make_job("job-idem")
        a, b = make_dispatch(job), make_dispatch(job)

        def write_then_write_again() -> None:
            with relay.engine.begin() as conn:
                write_outbox(conn, [a, b], T0)
                conn.execute(update(outbox_table).where(outbox_table.c.run_id == a.run.id)
                             .values(sent_at=T0.replace(tzinfo=None)))
            with relay.engine.begin() as conn:
                write_outbox(conn, [a], T0 + S)  # dispatched again: its row is rewritten, to be sent again
        relay.run_blocking(write_then_write_again)
        await relay.write([a, b])  # the scheduler's put marks both ready, adds nothing
        assert await outbox_rows(relay) == [(a.run.id, True, False), (b.run.id, True, False)]
    finally:
        await relay.stop()


async def test_one_run_that_cannot_be_handed_out_does_not_hold_up_the_others(sql_url: str) -> None:
    from sqlalchemy import exc as sa_exc

    from chronos_adapters.sql import SqlStore
    from tests.contracts.test_store_contract import make_job, make_run

    handed: list[str] = []
    bad: set[str] = set()

    def on_dispatch(conn: Any, dispatches: Any, now: datetime) -> None:  # a hand-off that fails for one run
        if any(d.run.id in bad for d in dispatches):
            raise sa_exc.IntegrityError("INSERT INTO chronos_outbox ...", {}, Exception("duplicate run_id"))
        handed.extend(d.run.id for d in dispatches)

    store = SqlStore(sql_url, pool_size=4, on_dispatch=on_dispatch)
    await store.start()
    try:
        job = make_job("retries", next_run_at=None)
        await store.add_jobs([job])
        waiting = [make_run(job, T0 + i * S, attempt=2, due_at=T0 + i * S) for i in range(5)]
        for run in waiting:
            await store.add_run(run, dispatched=False)
        bad.add(waiting[1].id)
        got = await store.claim_due_runs(T0 + 10 * S, 100)
        assert [d.run.id for d in got] == [r.id for i, r in enumerate(waiting) if i != 1]
        assert handed == [d.run.id for d in got]
        bad.clear()  # the bad one stays due, and goes once it can
        assert [d.run.id for d in await store.claim_due_runs(T0 + 10 * S, 100)] == [waiting[1].id]
    finally:
        await store.stop()


async def test_a_phase_of_the_tick_that_fails_does_not_stop_reaping_pruning_or_firing(rig: Rig) -> None:
    from chronos_core import RunConflict

    job = await rig.create(schedule="*/20 * * * * *")
    other = await rig.create(retry={"strategy": "immediate", "max_attempts": 2}, history_limit=1)
    dead = await rig.jobs.trigger(other.id)
    assert await rig.store.start_run(dead.id, "worker-dead", T0, T0 + 5 * S)
    assert rig.take() is not None  # (the dead worker's dispatch)
    for _ in range(3):  # finished runs beyond the history limit
        rig.clock.advance(1)
        d = (await rig.jobs.trigger(other.id), rig.take())[1]
        assert d is not None and await rig.worker.process(d) is not None
    rig.store.fail("claim_due_runs", RunConflict("conflicting write"), times=10**6)  # one bad run, forever
    rig.clock.set(T0 + 20 * S)
    assert await rig.scheduler.tick() is not None
    assert [r.status for r in await rig.history(job)] == [RunStatus.QUEUED]  # fired
    runs = await rig.history(other)
    assert rig.scheduler.stats.reaped == 1  # reaped: its retry waits
    assert [(r.attempt, r.status) for r in runs if r.scheduled_for == dead.scheduled_for] == [
        (2, RunStatus.QUEUED)]  # (the reaped attempt itself was the oldest finished run: pruned)
    assert rig.scheduler.stats.pruned == 3  # pruned to the history limit
    assert len([r for r in runs if r.finished_at is not None]) == 1
