"""Notifications, chains and auto-pause end to end: the real engines on every store (memory, SQLite,
MariaDB) with a fake clock, a real local HTTP server receiving the webhooks and a real SMTP server
(aiosmtpd) receiving the emails. The notifier is ticked by hand, like the scheduler."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from chronos_adapters.executors import ExecutorConfig
from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus
from chronos_adapters.notify import notify_channels
from chronos_core import EventType, FakeClock, Job, Jobs, JobStatus, JobTypes, Run, Runs, Scheduler, Worker
from chronos_core.hooks import MAX_ATTEMPTS, NoticeStatus
from chronos_core.notifier import Notifier
from chronos_core.ports import Store
from tests.engine.test_engines import T0, StepExecutor, StepPayload, settle
from tests.fixtures.httpserver import LocalHttpServer
from tests.fixtures.smtp import LocalSmtpServer

SECRET = "whsec-0123456789abcdef"


@dataclass
class H:
    clock: FakeClock
    store: Store
    queue: MemoryDispatchQueue
    bus: MemoryEventBus
    jobs: Jobs
    runs: Runs
    scheduler: Scheduler
    worker: Worker
    notifier: Notifier
    executor: StepExecutor
    done: list[Run | None] = field(default_factory=list)

    async def create(self, **spec: Any) -> Job:
        base: dict[str, Any] = {"name": f"job-{id(spec)}", "type": "step", "payload": {"behaviour": "ok"}}
        return await self.jobs.create({**base, **spec})

    async def drain(self) -> None:
        while (d := self.queue.get_nowait()) is not None:
            self.done.append(await self.worker.process(d))
        await settle()

    async def run_now(self, job: Job) -> Run:
        self.clock.advance(1)  # (two manual runs at the same instant would be the same slot)
        run = await self.jobs.trigger(job.id)
        await self.drain()
        return run

    async def later(self, seconds: float) -> None:
        """Move the clock on, fire what is due (retries), execute it."""
        self.clock.advance(seconds)
        await self.scheduler.tick()
        await self.drain()


@pytest.fixture
async def h(store: Store) -> Any:
    clock = FakeClock(T0)
    queue, bus = MemoryDispatchQueue(), MemoryEventBus()
    types = JobTypes()
    types.register("step", StepPayload)
    executor = StepExecutor()
    config = ExecutorConfig(http_allow_hosts=("127.0.0.1",))
    channels = notify_channels(config)
    notifier = Notifier(store, queue, bus, clock, {c.channel: c for c in channels}, lease=60)
    for c in channels:
        await c.start()
    harness = H(clock=clock, store=store, queue=queue, bus=bus, jobs=Jobs(store, queue, bus, clock, types),
                runs=Runs(store, bus, clock), scheduler=Scheduler(store, queue, bus, clock, batch_size=50),
                worker=Worker(store, queue, bus, clock, {"step": executor}, job_types=types, lease=30),
                notifier=notifier, executor=executor)
    yield harness
    for c in channels:
        await c.stop()


def hook(server: LocalHttpServer, path: str = "/hook", **extra: Any) -> dict[str, Any]:
    return {"url": f"{server.url}{path}", **extra}


def verify(req: Any) -> dict[str, Any]:
    """The signature a receiver checks, as GitHub's: HMAC-SHA256 of the raw body with the shared secret."""
    want = "sha256=" + hmac.new(SECRET.encode(), req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(req.headers["x-chronos-signature"], want)
    data: dict[str, Any] = json.loads(req.body)
    return data


async def test_one_message_after_the_last_of_three_failed_attempts(h: H, http_server: LocalHttpServer
                                                                   ) -> None:
    job = await h.create(name="nightly", payload={"behaviour": "fail"},
                         retry={"max_attempts": 3, "strategy": "linear", "delay": 10},
                         notify=[{"on": ["failed"], "webhook": hook(http_server, secret=SECRET,
                                                                    headers={"Authorization": "Bearer tk"})}])
    await h.run_now(job)
    await h.notifier.tick()
    await h.later(10)  # attempt 2
    await h.notifier.tick()
    assert http_server.requests_to("/hook") == []  # no message for attempts that will be retried
    await h.later(20)  # attempt 3, the last (linear: 20 s after the second)
    assert [(r.attempt, r.status.value) for r in await h.jobs.history(job.id)] == [
        (3, "failed"), (2, "failed"), (1, "failed")]
    await h.notifier.tick()
    await h.notifier.tick()
    (req,) = http_server.requests_to("/hook")
    assert req.method == "POST" and req.headers["content-type"] == "application/json"
    assert req.headers["authorization"] == "Bearer tk"
    assert req.headers["x-chronos-event"] == "failed"
    body = verify(req)
    assert body["event"] == "failed" and body["job"] == {"id": job.id, "name": "nightly"}
    assert body["run"]["attempt"] == 3 and body["run"]["status"] == "failed"
    assert "exit code 3" in body["run"]["error"] and body["links"]["run"] == f"/runs/{body['run']['id']}"
    # the delivery is recorded on the run's notices
    (notice,) = await h.runs.notices(body["run"]["id"])
    assert notice.status is NoticeStatus.DELIVERED and notice.attempts == 1 and notice.last_code == 200
    assert req.headers["x-chronos-delivery"] == notice.id
    assert notice.tries[0]["ok"] is True and notice.tries[0]["code"] == 200


async def test_recovered_once_after_failures_and_succeeded_each_time(h: H, http_server: LocalHttpServer
                                                                     ) -> None:
    job = await h.create(name="flaky", payload={"behaviour": "fail"},
                         notify=[{"on": ["recovered"], "webhook": hook(http_server, "/recovered")},
                                 {"on": ["succeeded"], "webhook": hook(http_server, "/ok", format="slack")}])
    await h.run_now(job)
    await h.run_now(job)
    await h.jobs.patch(job.id, {"payload": {"behaviour": "ok"}})
    ok1 = await h.run_now(job)
    await h.run_now(job)
    await h.notifier.tick()
    (rec,) = http_server.requests_to("/recovered")
    assert json.loads(rec.body)["run"]["id"] == ok1.id
    oks = http_server.requests_to("/ok")
    assert len(oks) == 2
    text = json.loads(oks[0].body)["text"]  # Slack's format: one text
    assert text.startswith("[chronos] flaky: succeeded") and "x-chronos-signature" not in oks[0].headers


async def test_an_endpoint_down_for_a_minute_still_gets_the_message_once(h: H, http_server: LocalHttpServer
                                                                        ) -> None:
    http_server.respond("/hook", *([(503, "down")] * 4), (200, "ok"))
    job = await h.create(payload={"behaviour": "fatal"},
                         notify=[{"on": ["failed"], "webhook": hook(http_server, secret=SECRET)}])
    run = await h.run_now(job)
    waited = 0.0
    for _ in range(10):
        await h.notifier.tick()
        if len(http_server.requests_to("/hook")) == 5:
            break
        h.clock.advance(20)  # the backoff is 5 s, 15 s, 30 s...: a tick every 20 s finds each try due
        waited += 20
    reqs = http_server.requests_to("/hook")
    assert [r.headers["x-chronos-delivery"] for r in reqs] == [reqs[0].headers["x-chronos-delivery"]] * 5
    assert waited >= 50  # delivered after the endpoint was down for about a minute
    for _ in range(3):
        h.clock.advance(600)
        await h.notifier.tick()
    assert len(http_server.requests_to("/hook")) == 5  # once delivered, never again
    (notice,) = await h.runs.notices(run.id)
    assert notice.status is NoticeStatus.DELIVERED and notice.attempts == 5
    assert [t["code"] for t in notice.tries] == [503, 503, 503, 503, 200]
    verify(reqs[-1])


async def test_an_undeliverable_message_stops_after_a_bounded_number_of_tries(
        h: H, http_server: LocalHttpServer) -> None:
    http_server.respond("/hook", (500, "broken"))
    job = await h.create(payload={"behaviour": "fatal"},
                         notify=[{"on": ["failed"], "webhook": hook(http_server)}])
    run = await h.run_now(job)
    for _ in range(MAX_ATTEMPTS + 5):
        await h.notifier.tick()
        h.clock.advance(3600)
    assert len(http_server.requests_to("/hook")) == MAX_ATTEMPTS
    (notice,) = await h.runs.notices(run.id)
    assert notice.status is NoticeStatus.FAILED and notice.attempts == MAX_ATTEMPTS
    assert "HTTP 500" in (notice.last_error or "")


async def test_a_refused_address_is_not_retried_and_the_secret_is_not_in_the_error(h: H) -> None:
    job = await h.create(payload={"behaviour": "fatal"},
                         notify=[{"on": ["failed"], "webhook": {"url": "http://10.1.2.3/x?token=abc123secret",
                                                                "headers": {"X-Api-Key": "k3y-value-9"}}}])
    run = await h.run_now(job)
    await h.notifier.tick()
    (notice,) = await h.runs.notices(run.id)
    assert notice.status is NoticeStatus.FAILED and notice.attempts == 1  # the SSRF guard refused it
    assert "10.1.2.3" in (notice.last_error or "")
    assert "abc123secret" not in (notice.last_error or "") and "k3y-value-9" not in (notice.last_error or "")


async def test_pause_after_failures_pauses_with_the_reason_and_emails(h: H, smtp_server: LocalSmtpServer
                                                                      ) -> None:
    h.notifier.channels["email"].email.host = smtp_server.host  # type: ignore[attr-defined]
    h.notifier.channels["email"].email.port = smtp_server.port  # type: ignore[attr-defined]
    h.notifier.channels["email"].email.sender = "chronos@example.com"  # type: ignore[attr-defined]
    job = await h.create(name="etl", payload={"behaviour": "fail"}, schedule="*/10 * * * * *",
                         retry={"max_attempts": 2, "strategy": "immediate"}, pause_after_failures=2,
                         notify=[{"on": ["paused", "failed"], "email": {"to": ["ops@example.com"]}}])
    events = h.bus.subscribe(job_id=job.id, types={EventType.JOB_PAUSED})
    await h.run_now(job)
    await h.later(0)  # the retry: slot 1 failed (two attempts)
    await h.notifier.tick()
    assert (await h.jobs.get(job.id)).status is JobStatus.ACTIVE  # one failed slot of two
    await h.run_now(job)
    await h.later(0)
    await h.notifier.tick()  # the pause notice: pauses, adds the paused notification
    await h.notifier.tick()  # ...delivered
    paused = await h.jobs.get(job.id)
    assert paused.status is JobStatus.PAUSED and paused.next_run_at is None
    assert paused.paused_reason is not None and "2 failed runs in a row" in paused.paused_reason
    event = await anext(aiter(events))
    assert event.type is EventType.JOB_PAUSED and "pause_after_failures" in event.data["reason"]
    await events.aclose()
    subjects = sorted(m.message["Subject"] for m in smtp_server.received)
    assert subjects == ["[chronos] etl: failed", "[chronos] etl: failed", "[chronos] etl: paused"]
    body = next(m for m in smtp_server.received if m.message["Subject"].endswith("paused"))
    assert body.rcpt_tos == ["ops@example.com"]
    assert "pause_after_failures: 2" in body.message.get_content()
    summary = (await h.jobs.summaries([paused]))[job.id]
    assert summary.consecutive_failed_slots == 2 and summary.consecutive_failures == 4
    # resuming clears the reason
    assert (await h.jobs.resume(job.id)).paused_reason is None


async def test_the_service_default_list_applies_to_jobs_without_notify(h: H, http_server: LocalHttpServer
                                                                      ) -> None:
    from chronos_core.hookspec import NotifyRule

    h.worker.default_notify = (NotifyRule.model_validate({"on": ["failed"],
                                                          "webhook": hook(http_server, "/default")}),)
    plain = await h.create(name="plain", payload={"behaviour": "fatal"})
    own = await h.create(name="own", payload={"behaviour": "fatal"},
                         notify=[{"on": ["failed"], "webhook": hook(http_server, "/own")}])
    await h.run_now(plain)
    await h.run_now(own)
    await h.notifier.tick()
    assert [json.loads(r.body)["job"]["name"] for r in http_server.requests_to("/default")] == ["plain"]
    assert [json.loads(r.body)["job"]["name"] for r in http_server.requests_to("/own")] == ["own"]


async def test_a_notice_written_twice_is_kept_once(h: H, http_server: LocalHttpServer) -> None:
    job = await h.create(payload={"behaviour": "fatal"},
                         notify=[{"on": ["failed"], "webhook": hook(http_server)}])
    run = await h.run_now(job)
    (notice,) = await h.store.list_notices(run_id=run.id)
    from dataclasses import replace

    assert await h.store.add_notices([replace(notice, id="another-id")]) == 0  # same key
    await h.notifier.tick()
    assert len(http_server.requests_to("/hook")) == 1


# ------------------------------------------------------------------ missed, skipped, exclude, jitter


async def test_missed_slots_of_a_scheduler_outage_are_notified_once_each(h: H, http_server: LocalHttpServer
                                                                        ) -> None:
    job = await h.create(name="ticker", schedule="*/10 * * * * *", misfire="skip",
                         notify=[{"on": ["missed"], "webhook": hook(http_server)}])
    h.clock.advance(47)  # the scheduler was away: slots :10 :20 :30 :40 are past the grace (5 s)
    await h.scheduler.tick()
    await h.scheduler.tick()
    await h.notifier.tick()
    await h.notifier.tick()
    missed = [r for r in await h.jobs.history(job.id) if r.status.value == "missed"]
    assert len(missed) == 4
    got = sorted(json.loads(r.body)["run"]["id"] for r in http_server.requests_to("/hook"))
    assert got == sorted(r.id for r in missed)
    assert all(json.loads(r.body)["event"] == "missed" for r in http_server.requests_to("/hook"))


async def test_excluded_slots_are_recorded_skipped_with_the_reason(h: H, http_server: LocalHttpServer
                                                                   ) -> None:
    # T0 is Tuesday 2030-01-01 12:00 UTC = 13:00 in Berlin; the range is in the job's zone
    job = await h.create(name="quiet", schedule="*/10 * * * * *", timezone="Europe/Berlin",
                         exclude=[{"from": "2030-01-01T13:00:15", "to": "2030-01-01T13:00:35"},
                                  {"cron": "50-59 * * * * *"}],
                         notify=[{"on": ["skipped"], "webhook": hook(http_server)}])
    for _ in range(6):
        h.clock.advance(10)
        await h.scheduler.tick()
        await h.drain()
    runs = sorted(await h.jobs.history(job.id), key=lambda r: r.scheduled_for)
    assert [(r.scheduled_for.second, r.status.value) for r in runs] == [
        (10, "succeeded"), (20, "skipped"), (30, "skipped"), (40, "succeeded"), (50, "skipped"),
        (0, "succeeded")]
    assert "excluded by exclude[0]" in (runs[1].error or "")
    assert "excluded by exclude[1]" in (runs[4].error or "")
    await h.notifier.tick()
    told = sorted(json.loads(r.body)["run"]["id"] for r in http_server.requests_to("/hook"))
    assert told == sorted(r.id for r in runs if r.status.value == "skipped")


async def test_a_bad_exclusion_cron_is_refused(h: H) -> None:
    from chronos_core import InvalidJob

    with pytest.raises(InvalidJob) as err:
        await h.create(exclude=[{"cron": "* * * *"}])
    assert err.value.errors[0].loc[:3] == ("exclude", 0, "cron")


async def test_jitter_delays_each_slot_by_its_offset_within_bounds(h: H) -> None:
    from chronos_core.planning import jitter_offset

    job = await h.create(name="spread", schedule="0 * * * *", jitter=30)
    h.clock.set(T0.replace(hour=13))
    await h.scheduler.tick()
    (run,) = await h.jobs.history(job.id)
    offset = jitter_offset(job.id, run.scheduled_for, 30)
    assert run.scheduled_for == T0.replace(hour=13)  # the nominal slot is kept
    assert run.due_at == run.scheduled_for + offset and 0 <= offset.total_seconds() <= 30
    assert h.queue.get_nowait() is None  # not handed out before its offset
    h.clock.set(run.due_at)
    await h.scheduler.tick()
    await h.drain()
    (done,) = await h.jobs.history(job.id)
    assert done.status.value == "succeeded" and done.started_at == run.due_at


async def test_a_burst_of_jittered_jobs_hands_out_due_runs_between_claim_batches(h: H) -> None:
    # 120 jobs at one instant, claimed in batches of 5 (a tenth of the batch size while runs wait for
    # their jitter); the clock moves 10 s during each claim (a large
    # burst takes a while to claim): the first batch's runs whose offset came meanwhile are handed out
    # before the next batch is claimed, not only once the whole burst is claimed. (A store whose claim
    # holds the loop ends the tick after such a batch instead: tests/engine/test_burst.py.)
    for i in range(120):
        await h.create(name=f"burst-{i}", schedule="0 * * * *", jitter=30)
    h.clock.set(T0.replace(hour=13))
    claim, waiting = h.store.claim_due, []

    async def slow_claim(now: Any, limit: int, planner: Any) -> Any:
        waiting.append(await h.queue.depth())  # handed out before this claim
        got = await claim(now, limit, planner)
        h.clock.advance(10)
        return got

    h.store.claim_due = slow_claim  # type: ignore[method-assign]
    await h.scheduler.tick()
    if h.store.claim_holds_loop:  # the tick may end after a batch that left runs waiting (test_burst.py)
        assert waiting[0] == 0 and len(waiting) < 25
    else:
        assert len(waiting) == 25 and waiting[0] == 0  # (the last finds nothing)
        assert waiting[1] > 0  # the first 5 (the smallest offsets, under 10 s of 30)
    handed = []
    while (d := h.queue.get_nowait()) is not None:
        assert d.run.due_at <= h.clock.now()  # none before its offset
        handed.append(d.run.id)
    h.clock.advance(30)
    for _ in range(30):  # one tick, or (the claim holding the loop) the rest over the next ticks
        await h.scheduler.tick()
        while (d := h.queue.get_nowait()) is not None:
            assert d.run.due_at <= h.clock.now()
            handed.append(d.run.id)
        if len(handed) >= 120:
            break
    assert len(handed) == len(set(handed)) == 120  # every slot handed out once


# ----------------------------------------------------------------------------- running_long, chains


async def test_running_long_once_while_the_run_goes_on(h: H, http_server: LocalHttpServer) -> None:
    job = await h.create(name="slow", payload={"behaviour": "block"}, alert_after=60,
                         notify=[{"on": ["running_long"], "webhook": hook(http_server)}])
    h.clock.advance(1)
    run = await h.jobs.trigger(job.id)
    task = asyncio.create_task(h.worker.process(h.queue.get_nowait()))  # type: ignore[arg-type]
    await settle()
    h.clock.advance(59)
    await settle()
    await h.notifier.tick()
    assert http_server.requests_to("/hook") == []  # not yet
    h.clock.advance(2)
    for _ in range(500):  # the timer fired; its write goes through the store's threads (SQL)
        if await h.store.list_notices(run_id=run.id):
            break
        await asyncio.sleep(0.01)
    for _ in range(3):
        h.clock.advance(120)
        await settle()
        await h.notifier.tick()
    (req,) = http_server.requests_to("/hook")
    body = json.loads(req.body)
    assert body["event"] == "running_long" and body["run"]["id"] == run.id
    assert body["run"]["status"] == "running"
    assert (await h.runs.get(run.id)).status.value == "running"  # the alert does not stop it
    h.executor.release.set()
    done = await task
    assert done is not None and done.status.value == "succeeded"
    await h.notifier.tick()
    assert len(http_server.requests_to("/hook")) == 1


async def _second_store(store: Store, tmp: Any) -> tuple[Store, bool]:
    """Another store on the same data, as a second scheduler process has (memory: the same one)."""
    url = getattr(store, "url", None)
    if url is None:
        return store, False
    from chronos_adapters.sql import SqlStore

    other = SqlStore(url, pool_size=4)
    await other.start()
    return other, True


async def test_a_chain_runs_the_next_job_once_per_success_with_links_both_ways(
        h: H, store: Store, tmp_path: Any) -> None:
    b = await h.create(name="load-warehouse")
    a = await h.create(name="extract", then=[{"on": ["succeeded"], "job": "load-warehouse"}],
                       retry={"max_attempts": 1})
    other, opened = await _second_store(store, tmp_path)
    try:
        # two notifiers on two stores, as two scheduler processes: the chained run happens once
        second = Notifier(other, h.queue, h.bus, h.clock, {}, lease=60)
        parents = [await h.run_now(a) for _ in range(2)]
        await asyncio.gather(h.notifier.tick(), second.tick())
        await asyncio.gather(h.notifier.tick(), second.tick())
        await h.drain()
        children = [r for r in await h.jobs.history(b.id)]
        assert len(children) == 2 and all(r.trigger.value == "chain" for r in children)
        assert all(r.status.value == "succeeded" for r in children)
        links = {(await h.runs.links(c))[0]: c.id for c in children}
        assert set(links) == {p.id for p in parents}
        for p in parents:
            assert (await h.runs.links(await h.runs.get(p.id)))[1] == [links[p.id]]
        # ticking again (a retry of the delivery path) makes no new run
        h.clock.advance(3600)
        await asyncio.gather(h.notifier.tick(), second.tick())
        await h.drain()
        assert len(await h.jobs.history(b.id)) == 2
    finally:
        if opened:
            await other.stop()


async def test_a_chain_on_failure_waits_for_the_last_attempt(h: H) -> None:
    b = await h.create(name="cleanup")
    a = await h.create(name="risky", payload={"behaviour": "fail"},
                       then=[{"on": ["failed"], "job": "cleanup"}],
                       retry={"max_attempts": 2, "strategy": "immediate"})
    await h.run_now(a)
    await h.notifier.tick()
    await h.drain()
    assert await h.jobs.history(b.id) == []  # attempt 1 of 2 failed: not final
    await h.later(0)
    await h.notifier.tick()
    await h.drain()
    (child,) = await h.jobs.history(b.id)
    assert child.trigger.value == "chain"


async def test_a_chain_to_a_deleted_job_is_reported_not_retried(h: H) -> None:
    b = await h.create(name="gone")
    a = await h.create(name="first", then=[{"job": "gone"}])
    await h.jobs.delete(b.id)
    run = await h.run_now(a)
    await h.notifier.tick()
    (notice,) = await h.runs.notices(run.id)
    assert notice.status is NoticeStatus.FAILED and "does not exist" in (notice.last_error or "")


async def test_a_worker_killed_mid_run_gives_one_message_when_two_schedulers_reap(
        h: H, store: Store, tmp_path: Any, http_server: LocalHttpServer) -> None:
    job = await h.create(name="doomed", notify=[{"on": ["failed"], "webhook": hook(http_server)}])
    h.clock.advance(1)
    run = await h.jobs.trigger(job.id)
    h.queue.get_nowait()  # a worker took it...
    now = h.clock.now()
    assert await store.start_run(run.id, "worker-that-dies", now, now + timedelta(seconds=30))
    # ...and died: no renewals. Two schedulers (two stores, as two processes) reap it at once.
    other, opened = await _second_store(store, tmp_path)
    try:
        second = Scheduler(other, h.queue, h.bus, h.clock, batch_size=50)
        h.clock.advance(60)
        await asyncio.gather(h.scheduler.reap(h.clock.now()), second.reap(h.clock.now()))
        await asyncio.gather(h.notifier.tick(), Notifier(other, h.queue, h.bus, h.clock,
                                                         h.notifier.channels).tick())
    finally:
        if opened:
            await other.stop()
    assert (await h.runs.get(run.id)).status.value == "failed"
    (req,) = http_server.requests_to("/hook")
    assert "stopped renewing its lease" in json.loads(req.body)["run"]["error"]


async def test_run_events_wake_the_notifier_at_most_once_per_min_interval() -> None:
    from chronos_adapters.memory import MemoryStore
    from chronos_core import Event

    class Counting(MemoryStore):
        claims = 0

        async def claim_notices(self, *args: Any, **kw: Any) -> Any:
            Counting.claims += 1
            return await super().claim_notices(*args, **kw)

    clock, bus = FakeClock(T0), MemoryEventBus()
    notifier = Notifier(Counting(), MemoryDispatchQueue(), bus, clock, {}, interval=5, min_interval=0.2)
    await notifier.start()
    try:
        await settle()
        first = Counting.claims
        assert first == 1
        for _ in range(200):  # runs ending at a high rate: each run event wakes it
            await bus.publish([Event(type=EventType.RUN_SUCCEEDED, time=T0, job_id="j", run_id="r")])
            await settle()
        assert Counting.claims == first  # the clock has not moved: no claim before min_interval
        clock.advance(0.2)
        await settle()
        assert Counting.claims == first + 1  # then one, for all those events
    finally:
        clock.advance(10)
        await notifier.stop()
