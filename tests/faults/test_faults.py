"""Issue #12's fault suite: a real deployment under faults, counted at the target.

One deployment for the module - ``chronos api``, two ``chronos scheduler`` and two ``chronos worker``
processes on a private MariaDB and a private Tansu broker (behind a ``tansu proxy``) - runs HTTP jobs
every second (and slower ones, 2 s long, every 3 s, so that faults hit runs mid-execution) against a
local server that logs each request's ``X-Chronos-Run-Id``. Each test injects one fault into that
deployment as it runs, heals it, and checks the slots of its window (from a little before the fault to
a little after the heal):

* no run executed twice (two requests with one run id, anywhere, ever);
* no duplicate first attempt per slot; every slot has a run, or a missed/skipped record;
* every run recorded ``succeeded`` was executed (a request with its id);
* nothing stuck ``queued`` / ``running`` (waited for: reaping takes the lease plus the reaper's grace);
* the recovery time: from the heal to the first request for a slot due after it (reported at the end).

The tests run in file order on the same deployment (the last one loses the broker's data). ``make faults``
runs them (about 7 minutes; 11 on a busy 2-core machine); ``make test`` leaves them out (``-m "not faults"``).
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.faults.rig import RESULTS, Kafka, MariaDb, Stack, Target, kill9

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.mysql, pytest.mark.kafka,
              pytest.mark.timeout(900)]

FAST, SLOW = 10, 4  # jobs every second; jobs every 3 s whose request takes 2 s
LEASE, REAP_GRACE = 6, 10  # CHRONOS_LEASE; the scheduler's reap_grace (its default)
REDISPATCH_AFTER = 10
ACTIVE = ("queued", "running")


@dataclass
class Deployment:
    stack: Stack
    api: str
    db: MariaDb
    kafka: Kafka
    target: Target
    engine: Engine
    slow: set[str]  # ids of the slow jobs
    jobs: list[str]

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))


@pytest.fixture(scope="module")
def deployment(mariadb: MariaDb, kafka: Kafka, target: Target,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    mariadb.sql("CREATE DATABASE chronos_faults CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    url = mariadb.url("chronos_faults")
    prefix = f"f{uuid.uuid4().hex[:8]}"
    stack = Stack(url, kafka.proxy.bootstrap, tmp_path_factory.mktemp("stack"),
                  CHRONOS_LEASE=str(LEASE), CHRONOS_HTTP_ALLOW_HOSTS="127.0.0.1",
                  CHRONOS_REDISPATCH_AFTER=str(REDISPATCH_AFTER), CHRONOS_KAFKA_RUNS_TOPIC=f"{prefix}.runs",
                  CHRONOS_KAFKA_EVENTS_TOPIC=f"{prefix}.events", CHRONOS_KAFKA_GROUP=f"{prefix}-workers")
    engine = create_engine(url, pool_pre_ping=True, pool_size=2)
    try:
        api = stack.api()
        for name in ("s1", "s2"):
            stack.spawn(name, "scheduler")
        for name in ("w1", "w2"):
            stack.spawn(name, "worker")
        common = {"type": "http", "misfire": "fire_all", "misfire_grace": 600,
                  "retry": {"max_attempts": 3, "strategy": "immediate"}}
        jobs, slow = [], set()
        for i in range(FAST):
            r = httpx.post(f"{api}/jobs", json={**common, "name": f"fast-{i}", "schedule": "* * * * * *",
                                                "payload": {"url": f"{target.url}/fast"}}, timeout=30)
            assert r.status_code == 201, r.text
            jobs.append(r.json()["id"])
        for i in range(SLOW):
            r = httpx.post(f"{api}/jobs", json={**common, "name": f"slow-{i}", "schedule": "*/3 * * * * *",
                                                "payload": {"url": f"{target.url}/slow?s=2"}}, timeout=30)
            assert r.status_code == 201, r.text
            jobs.append(r.json()["id"])
            slow.add(r.json()["id"])
        d = Deployment(stack, api, mariadb, kafka, target, engine, slow, jobs)
        deadline = time.monotonic() + 180
        while len({row[0] for row in d.rows("SELECT DISTINCT job_id FROM runs WHERE status='succeeded'")}) \
                < len(jobs):  # every process is up and every job runs
            assert time.monotonic() < deadline, "the deployment did not start running every job"
            assert all(stack.alive().values()), stack.alive()
            time.sleep(0.5)
        yield d
    finally:
        stack.stop()
        engine.dispose()


def now() -> datetime:
    return datetime.now(UTC)


def naive(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None)


def aware(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC)


def slots(d: Deployment, job_id: str, first: datetime, last: datetime) -> list[datetime]:
    step = 3 if job_id in d.slow else 1
    t = first
    out = []
    while t <= last:
        if t.second % step == 0:
            out.append(t)
        t += timedelta(seconds=1)
    return out


def wait_until(condition: Any, what: str, timeout: float) -> float:
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout, f"timed out ({timeout:g}s) waiting for {what}"
        time.sleep(0.3)
    return time.monotonic() - began


def busy_worker(d: Deployment) -> str:
    """A live worker running a slow run now (which ones get the slow jobs depends on the partitions)."""
    found: list[str] = []

    def look() -> bool:
        for name, alive in d.stack.alive().items():
            if alive and name.startswith("w") and any(r.job_id in d.slow for r in running_on(d, name)):
                found.append(name)
                return True
        return False
    wait_until(look, "a worker to run a slow run", 90)
    return found[0]


def running_on(d: Deployment, worker: str) -> list[Any]:
    return d.rows("SELECT id, job_id FROM runs WHERE status='running' AND owner LIKE :w",
                  w=f"{worker}-%")


def check(d: Deployment, scenario: str, start: datetime, end: datetime, heal: datetime,
          **extra: Any) -> dict[str, Any]:
    """The window's slots after the deployment settled; the measurements (asserted by the caller). The
    window starts a second after ``start`` (or at the first slot of a run given in ``extra["held"]``,
    the runs a fault hit, if earlier: the deployment may run late)."""
    first = (start + timedelta(seconds=1)).replace(microsecond=0)
    held = extra.pop("held", ())
    if held:
        earliest = min(aware(r.scheduled_for) for r in d.rows(
            "SELECT scheduled_for FROM runs WHERE id IN :ids", ids=tuple(held)))
        first = min(first, earliest)
        extra["held"] = len(held)
    last = (end - timedelta(seconds=1)).replace(microsecond=0)
    try:
        settle = wait_until(lambda: not d.rows(
            "SELECT id FROM runs WHERE status IN ('queued','running') AND scheduled_for <= :last LIMIT 1",
            last=naive(last)), "the window's runs to finish", 240)
    except AssertionError:
        stuck = d.rows("SELECT id, job_id, status, attempt, owner, created_at, due_at, started_at FROM runs "
                       "WHERE status IN ('queued','running') AND scheduled_for <= :last ORDER BY id LIMIT 10",
                       last=naive(last))
        raise AssertionError(f"{scenario}: runs stuck queued/running: {[tuple(r) for r in stuck]}\n"
                             f"{kafka_state(d)}") from None
    rows = d.rows("SELECT id, job_id, scheduled_for, attempt, status, error, `trigger` FROM runs "
                  "WHERE scheduled_for BETWEEN :a AND :b", a=naive(first), b=naive(last))
    hits = d.target.snapshot()
    per_run = Counter(h.run_id for h in hits)
    doubled = {r: c for r, c in per_run.items() if c > 1}
    firsts: dict[tuple[str, datetime], list[str]] = {}
    for r in rows:
        if r.attempt == 1:
            firsts.setdefault((r.job_id, aware(r.scheduled_for)), []).append(r.id)
    missing = [(job, s.isoformat()) for job in d.jobs for s in slots(d, job, first, last)
               if (job, s) not in firsts]
    duplicate_firsts = {k: v for k, v in firsts.items() if len(v) > 1}
    unexecuted = [r.id for r in rows if r.status == "succeeded" and per_run[r.id] != 1]
    by_id = {r.id: r for r in rows}
    after = sorted(h.at for h in hits if h.run_id in by_id and aware(by_id[h.run_id].scheduled_for) >= heal)
    result = {
        "scenario": scenario, "slots": sum(len(slots(d, j, first, last)) for j in d.jobs),
        "runs": len(rows), "executions": sum(per_run[r.id] for r in rows),
        "retries": sum(1 for r in rows if r.attempt > 1),
        "reaped": sum(1 for r in rows if "stopped renewing its lease" in (r.error or "")),
        "missed_or_skipped": sum(1 for r in rows if r.status in ("missed", "skipped")),
        "failed_for_good": sum(1 for r in rows if r.status == "failed" and r.attempt >= 3),
        "doubled": len(doubled), "duplicate_first_attempts": len(duplicate_firsts), "missing": len(missing),
        "succeeded_unexecuted": len(unexecuted),
        "recovery_s": round((after[0] - heal).total_seconds(), 2) if after else None,
        "settle_s": round(settle, 1), **extra,
    }
    RESULTS.append(result)
    assert not doubled, f"{scenario}: runs executed twice: {doubled}"
    assert not duplicate_firsts, f"{scenario}: duplicate first attempts: {duplicate_firsts}"
    assert not missing, f"{scenario}: slots with no run and no record: {missing[:20]}"
    assert not unexecuted, f"{scenario}: recorded succeeded, never executed: {unexecuted[:20]}"
    assert after, f"{scenario}: nothing executed for a slot due after the heal"
    assert all(d.stack.alive().values()), d.stack.alive()  # every process recovered by itself
    return result


def kafka_state(d: Deployment) -> str:
    """The runs topic's partitions, the workers' group (members, assignments, committed offsets) and the
    log end offsets: what a stuck run is waiting for."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    env = d.stack.env
    topic, group = env["CHRONOS_KAFKA_RUNS_TOPIC"], env["CHRONOS_KAFKA_GROUP"]

    async def look() -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=d.kafka.broker.bootstrap)
        probe = AIOKafkaConsumer(bootstrap_servers=d.kafka.broker.bootstrap, group_id=None)
        await admin.start()
        await probe.start()
        try:
            [described] = await admin.describe_topics([topic])
            tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
            committed = await admin.list_consumer_group_offsets(group)
            ends = await probe.end_offsets(tps) if tps else {}
            groups = await admin.describe_consumer_groups([group])
            return (f"partitions={len(tps)} ends={ {tp.partition: o for tp, o in ends.items()} } "
                    f"committed={ {tp.partition: m.offset for tp, m in committed.items()} } group={groups}")
        finally:
            await probe.stop()
            await admin.close()
    try:
        return asyncio.run(look())
    except Exception as exc:
        return f"(kafka state unknown: {exc!r})"


def settled_start(seconds: float = 3) -> datetime:
    start = now()
    time.sleep(seconds)
    return start


def test_kill_9_of_a_worker_mid_run(deployment: Deployment) -> None:
    d = deployment
    start = settled_start()
    victim = busy_worker(d)
    in_flight = {r.id for r in running_on(d, victim)}
    d.stack.kill9(victim)
    fault = now()
    d.stack.spawn("w3", "worker")  # its replacement
    time.sleep(6)
    result = check(d, "kill -9 worker", start, now(), fault, held=in_flight)
    killed = d.rows("SELECT r.id, r.status, r.error, (SELECT MAX(n.attempt) FROM runs n WHERE "
                    "n.job_id=r.job_id AND n.scheduled_for=r.scheduled_for AND n.status='succeeded') AS ok "
                    "FROM runs r WHERE r.id IN :ids", ids=tuple(in_flight))
    for r in killed:  # the attempts it held were failed by the reaper and retried elsewhere
        if r.status == "succeeded":  # (it finished between the look and the kill)
            continue
        assert r.status == "failed" and "stopped renewing its lease" in r.error, r
        assert r.ok is not None and r.ok > 1, r
    assert result["reaped"] >= 1


def test_kill_9_of_a_scheduler(deployment: Deployment) -> None:
    d = deployment
    start = settled_start()
    d.stack.kill9("s1")  # it may die between a claim and its hand-off: the outbox has both
    fault = now()
    time.sleep(4)
    d.stack.spawn("s3", "scheduler")
    time.sleep(6)
    check(d, "kill -9 scheduler", start, now(), fault)


def test_kill_9_of_the_broker_proxy_for_15s_data_kept(deployment: Deployment) -> None:
    d = deployment
    start = settled_start()
    kill9(d.kafka.proxy)
    time.sleep(15)
    d.kafka.proxy.start()
    heal = now()
    time.sleep(8)
    check(d, "broker outage 15s (proxy kill -9)", start, now(), heal)


def test_sigstop_of_a_worker_past_its_lease_then_sigcont(deployment: Deployment) -> None:
    d = deployment
    start = settled_start()
    victim = busy_worker(d)
    d.stack.signal(victim, signal.SIGSTOP)
    stopped = now()

    def reaped() -> list[Any]:
        return d.rows("SELECT id, status, error, finished_at FROM runs WHERE owner LIKE :w "
                      "AND error LIKE '%stopped renewing its lease%'", w=f"{victim}-%")
    held = {r.id for r in running_on(d, victim)}
    wait_until(lambda: bool(reaped()), "the stopped worker's runs to be reaped", LEASE + REAP_GRACE + 30)
    time.sleep(2)
    before = {r.id: tuple(r) for r in reaped()}
    d.stack.signal(victim, signal.SIGCONT)  # its late outcomes must be refused
    heal = now()
    time.sleep(8)
    check(d, "SIGSTOP worker past its lease", start, now(), heal, stopped_s=round((heal - stopped)
                                                                                  .total_seconds(), 1),
          reaped_while_stopped=len(before), held=held)
    after = {r.id: tuple(r) for r in d.rows(
        "SELECT id, status, error, finished_at FROM runs WHERE id IN :ids", ids=tuple(before))}
    assert after == before  # the reaped outcome stands: the late finish did not overwrite it


def test_database_killed_for_15s(deployment: Deployment) -> None:
    d = deployment
    start = settled_start()
    d.db.kill9()
    time.sleep(15)
    d.db.start()
    heal = now()
    time.sleep(10)
    check(d, "database kill -9 for 15s", start, now(), heal)


def test_broker_restarted_without_its_data(deployment: Deployment) -> None:
    d = deployment
    start = settled_start()
    d.kafka.restart_broker_empty()  # acknowledged messages, topics, consumer offsets: all gone
    heal = now()
    time.sleep(8)
    check(d, "broker restarted without its data", start, now(), heal)
