"""Differential test of the stores: hypothesis drives random sequences of store operations (create,
claim, start, finish with stale owners and stale lease fences, renew, reap, cancel, trigger, pause/resume
and other changes through ``change_job`` with fresh and stale reads, delete, prune, release, output) on a
fake clock against the memory store (the reference) and every SQL backend (SQLite, MariaDB), compares
every result, and after every step the full visible state: jobs, every run, summaries, the next due
time, the stats and the expired leases.

Run ids are made deterministic (from the step, the job and the place in the plan), so the stores'
histories can be compared field by field. Operations whose outcome the contract leaves open are called
the way the engines call them: claims with a limit above the number of jobs (ties on ``next_run_at``
may be claimed in any order), pruning with a limit above the number of runs.

``make test`` runs a modest number of examples (derandomized: the same ones every time);
``CHRONOS_DIFF_EXAMPLES=500 CHRONOS_DIFF_STEPS=60`` runs more, with fresh random ones."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import delete

from chronos_adapters.memory import MemoryStore
from chronos_core.errors import ChronosError, RunNotFound
from chronos_core.models import (
    Job,
    JobStatus,
    MisfirePolicy,
    OverlapPolicy,
    Run,
    RunStatus,
    Trigger,
    evolve,
)
from chronos_core.planning import next_slot, plan_dropped, plan_due_job
from chronos_core.ports import SlotPlan, Store
from chronos_core.retry import RetryPolicy, RetryStrategy

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
CHOSEN = int(os.environ.get("CHRONOS_DIFF_EXAMPLES", "0"))
EXAMPLES = CHOSEN or 12
STEPS = int(os.environ.get("CHRONOS_DIFF_STEPS", "25"))
BIG = 10_000  # a limit above anything a sequence creates

SCHEDULES = ["* * * * * *", "*/5 * * * * *", "*/13 * * * * *", "@every 3s", None]
OWNERS = ["w1", "w2", None]
FINISHED = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED]
index = st.integers(min_value=0, max_value=10**6)


def rid(step: int, job_id: str, k: int) -> str:
    """A run id: ordered by step, then job, then place in the plan (as new ids are by creation)."""
    return f"r{step:07d}-{job_id}-{k:05d}"


class StoreDifferential(RuleBasedStateMachine):
    def __init__(self, urls: dict[str, str]) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stores: dict[str, Store] = {"memory": MemoryStore()}
        from chronos_adapters.sql import SqlStore

        for name, url in urls.items():
            self.stores[name] = SqlStore(url, pool_size=2, create_schema=False)
        self.call(self._open())
        self.now = T0
        self.step = 0
        self.job_ids: list[str] = []  # every job ever created (deleted ones stay: operations on them too)
        self.applied = False  # whether the last operation applied (raised nothing)
        self.reads: list[Job] = []  # jobs as read at some step: stale reads for change_job

    # plumbing ------------------------------------------------------------------------------------
    def call(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    async def _open(self) -> None:
        from chronos_adapters.sql.tables import metadata

        for store in self.stores.values():
            await store.start()
            engine = getattr(store, "engine", None)
            if engine is not None:
                with engine.begin() as conn:
                    for table in reversed(metadata.sorted_tables):
                        conn.execute(delete(table))

    def teardown(self) -> None:
        async def close() -> None:
            for store in self.stores.values():
                await store.stop()
        self.call(close())
        self.loop.close()

    def each(self, what: str, op: Callable[[Store], Awaitable[Any]]) -> Any:
        """``op`` on every store; the outcomes (a value, or the exception's type) must all be the memory
        store's. Returns it (None after an exception)."""
        outcomes: dict[str, tuple[str, Any]] = {}
        for name, store in self.stores.items():
            try:
                outcomes[name] = ("ok", self.call(op(store)))
            except (ChronosError, ValueError) as exc:
                outcomes[name] = ("raised", type(exc).__name__)
        ref = outcomes["memory"]
        for name, got in outcomes.items():
            assert got == ref, f"step {self.step} {what}: {name} gave {got!r}, memory {ref!r}"
        self.applied = ref[0] == "ok"
        return ref[1] if self.applied else None

    @property
    def memory(self) -> Store:
        return self.stores["memory"]

    def pick_job(self, i: int) -> str:
        return self.job_ids[i % len(self.job_ids)] if self.job_ids else "job-none"

    def run_ids(self) -> list[str]:
        runs = self.call(self.memory.list_runs(limit=BIG))
        return [r.id for r in runs]

    def pick_run(self, i: int) -> str:
        ids = self.run_ids()
        return ids[i % len(ids)] if ids else "run-none"

    def ref_run(self, run_id: str) -> Run | None:
        try:
            run: Run = self.call(self.memory.get_run(run_id))
            return run
        except RunNotFound:
            return None

    def planner(self) -> Callable[[Job, Any, datetime], SlotPlan]:
        step = self.step

        def plan(job: Job, active: Any, now: datetime) -> SlotPlan:
            p = plan_due_job(job, active, now)
            p.runs = [evolve(r, id=rid(step, job.id, k)) for k, r in enumerate(p.runs)]
            return p
        return plan

    def retry_of(self, run: Run, k: int, wait: float) -> Run:
        return Run(id=rid(self.step, run.job_id, k), job_id=run.job_id, scheduled_for=run.scheduled_for,
                   trigger=Trigger.RETRY, attempt=run.attempt + 1, status=RunStatus.QUEUED,
                   created_at=self.now, due_at=self.now + timedelta(seconds=wait))

    # state ---------------------------------------------------------------------------------------
    @invariant()
    def the_stores_agree(self) -> None:
        async def snapshot(store: Store) -> tuple[Any, ...]:
            jobs = await store.list_jobs(limit=BIG)
            return (jobs, await store.list_runs(limit=BIG), await store.job_summaries([j.id for j in jobs]),
                    await store.list_jobs_with_summaries(limit=BIG),
                    await store.next_due_time(), await store.stats([self.now - timedelta(hours=1)]),
                    sorted((r.lease_expires_at, r.id) for r in await store.expired_leases(self.now, BIG)))
        ref = self.call(snapshot(self.memory))
        for name, store in self.stores.items():
            got = self.call(snapshot(store))
            for part, a, b in zip(("jobs", "runs", "summaries", "jobs with summaries", "next due", "stats",
                                   "expired"), got, ref, strict=True):
                assert a == b, f"after step {self.step}: {name}'s {part} differ from memory's:\n{a!r}\n{b!r}"

    # operations ----------------------------------------------------------------------------------
    @rule(seconds=st.sampled_from([0.25, 1, 2, 5, 11, 40]))
    def time_passes(self, seconds: float) -> None:
        self.step += 1
        self.now += timedelta(seconds=seconds)

    @rule(name=st.integers(0, 8), schedule=st.sampled_from(SCHEDULES),
          overlap=st.sampled_from(list(OverlapPolicy)), misfire=st.sampled_from(list(MisfirePolicy)),
          grace=st.sampled_from([0.0, 2.0, 5.0]), history=st.sampled_from([None, 1, 3]),
          attempts=st.integers(1, 3), paused=st.booleans())
    def create(self, name: int, schedule: str | None, overlap: OverlapPolicy, misfire: MisfirePolicy,
               grace: float, history: int | None, attempts: int, paused: bool) -> None:
        self.step += 1
        job_id = f"job-{len(self.job_ids):04d}"
        # 8: "n5 ", which MariaDB's PAD SPACE index would hold as n5: every store refuses it (InvalidJob)
        job = Job(id=job_id, name=f"n{name}" if name < 8 else "n5 ", type="shell",
                  payload={"command": "true"}, schedule=schedule,
                  timezone="UTC", retry=RetryPolicy(strategy=RetryStrategy.IMMEDIATE, max_attempts=attempts),
                  timeout=None, overlap=overlap, misfire=misfire, misfire_grace=grace,
                  status=JobStatus.PAUSED if paused else JobStatus.ACTIVE, created_at=self.now,
                  updated_at=self.now, history_limit=history)
        if not paused:
            job.next_run_at = next_slot(job, self.now)
        self.each("add_jobs", lambda s: s.add_jobs([job]))
        if self.applied:  # (a taken name: NameConflict, nothing added)
            self.job_ids.append(job_id)
        if name == 7 and self.job_ids:  # now and then an id that exists: refused, nothing changed
            again = evolve(job, id=self.job_ids[0], name="fresh-name")
            self.each("add_jobs (a taken id)", lambda s: s.add_jobs([again]))

    @rule()
    def claim_due(self) -> None:
        self.step += 1
        planner, now = self.planner(), self.now

        async def claim(s: Store) -> Any:
            c = await s.claim_due(now, BIG, planner)
            return (sorted((d.run.id, d.run, d.job) for d in c.dispatch), sorted(r.id for r in c.recorded),
                    sorted(c.cancel), sorted((r.id, r) for r in c.cancelled), c.duplicates, c.jobs)
        self.each("claim_due", claim)

    @rule()
    def claim_due_runs(self) -> None:
        self.step += 1
        now = self.now

        async def due(s: Store) -> Any:
            return sorted((d.run.id, d.run, d.job) for d in await s.claim_due_runs(now, BIG))
        self.each("claim_due_runs", due)

    @rule(i=index, owner=st.sampled_from(["w1", "w2"]), lease=st.sampled_from([3, 30]))
    def start(self, i: int, owner: str, lease: int) -> None:
        self.step += 1
        run_id, now = self.pick_run(i), self.now
        self.each("start_run", lambda s: s.start_run(run_id, owner, now, now + timedelta(seconds=lease)))

    @rule(i=index, owner=st.sampled_from(OWNERS), status=st.sampled_from(FINISHED), retry=st.booleans(),
          fence=st.sampled_from(["none", "read", "stale"]), lines=st.integers(0, 3))
    def finish(self, i: int, owner: str | None, status: RunStatus, retry: bool, fence: str,
               lines: int) -> None:
        self.step += 1
        run_id, now = self.pick_run(i), self.now
        ref = self.ref_run(run_id)
        nxt = self.retry_of(ref, 0, 1) if retry and ref is not None else None
        lease = None
        if fence != "none" and ref is not None and ref.lease_expires_at is not None:
            lease = ref.lease_expires_at - (timedelta(seconds=1) if fence == "stale" else timedelta(0))
        output = "\n".join(f"line {n}" for n in range(lines))
        ok = status is RunStatus.SUCCEEDED
        self.each("finish_run", lambda s: s.finish_run(
            run_id, owner, status=status, finished_at=now, exit_code=0 if ok else 1, output=output,
            error=None if ok else "boom", retry=nxt, lease_expires_at=lease))

    @rule(picks=st.lists(index, max_size=3), owner=st.sampled_from(["w1", "w2"]))
    def renew(self, picks: list[int], owner: str) -> None:
        self.step += 1
        ids, until = [self.pick_run(i) for i in picks], self.now + timedelta(seconds=30)

        async def renew(s: Store) -> Any:
            return sorted(await s.renew_leases(ids, owner, until))
        self.each("renew_leases", renew)

    @rule(race=st.booleans())
    def reap(self, race: bool) -> None:
        """As the scheduler's reaper: fail each expired run, fenced on the lease it read, with a retry.
        With ``race``, its worker renews the first one in between: that finish must not apply."""
        self.step += 1
        now = self.now
        expired = sorted(self.call(self.memory.expired_leases(now, BIG)), key=lambda r: r.id)
        for k, run in enumerate(expired):
            if race and k == 0 and run.owner is not None:
                self.renew_for(run.id, run.owner, now + timedelta(seconds=30))
            retry = self.retry_of(run, k, 0)
            self.each("finish_run (reaper)", lambda s, run=run, retry=retry: s.finish_run(
                run.id, run.owner, status=RunStatus.FAILED, finished_at=now, error="lease expired",
                retry=retry, lease_expires_at=run.lease_expires_at, output=run.output,
                output_lines=run.output_lines))

    def renew_for(self, run_id: str, owner: str, until: datetime) -> None:
        async def renew(s: Store) -> Any:
            return sorted(await s.renew_leases([run_id], owner, until))
        self.each("renew_leases (racing the reaper)", renew)

    @rule(i=index, status=st.sampled_from([RunStatus.CANCELLED, RunStatus.MISSED]))
    def cancel_queued(self, i: int, status: RunStatus) -> None:
        self.step += 1
        run_id, now = self.pick_run(i), self.now
        self.each("cancel_queued_run", lambda s: s.cancel_queued_run(run_id, now, "stop", status=status))

    @rule(j=index, dispatched=st.booleans())
    def trigger(self, j: int, dispatched: bool) -> None:
        self.step += 1
        job_id = self.pick_job(j)
        run = Run(id=rid(self.step, job_id, 0), job_id=job_id, scheduled_for=self.now, trigger=Trigger.MANUAL,
                  attempt=1, status=RunStatus.QUEUED, created_at=self.now, due_at=self.now)
        self.each("add_run", lambda s: s.add_run(run, dispatched=dispatched))

    @rule(j=index)
    def read_job(self, j: int) -> None:
        """Keep the job as it is now: a later change_job may use this (by then stale) read."""
        self.step += 1
        job_id = self.pick_job(j)
        job = self.each("get_job", lambda s: s.get_job(job_id))
        if job is not None:
            self.reads.append(job)

    @rule(j=index, stale=st.integers(0, 3), what=st.sampled_from(
        ["pause", "resume", "describe", "reschedule", "rename"]), value=st.integers(0, 7))
    def change(self, j: int, stale: int, what: str, value: int) -> None:
        """What the operations write: only the changed fields, from a read (fresh, or an older one)."""
        self.step += 1
        read = self.reads[-1 - stale % len(self.reads)] if stale and self.reads else \
            self.each("get_job", lambda s: s.get_job(self.pick_job(j)))
        if read is None:
            return
        now = self.now
        changes: dict[str, Any] = {"updated_at": now if now > read.updated_at else read.updated_at + US}
        records: list[Run] = []
        if what == "pause":
            changes.update(status=JobStatus.PAUSED, next_run_at=None)
            if read.status is JobStatus.ACTIVE and read.next_run_at is not None and read.next_run_at <= now:
                records = plan_dropped(read, now, "paused")
        elif what == "resume":
            changes.update(status=JobStatus.ACTIVE,
                           next_run_at=next_slot(evolve(read, status=JobStatus.ACTIVE), now))
        elif what == "describe":
            changes["description"] = f"d{value}"
        elif what == "reschedule":
            schedule = SCHEDULES[value % len(SCHEDULES)]
            changes["schedule"] = schedule
            if read.status is JobStatus.ACTIVE:
                changes["next_run_at"] = next_slot(evolve(read, schedule=schedule), now)
        else:
            changes["name"] = f"n{value}"
        records = [evolve(r, id=rid(self.step, read.id, k)) for k, r in enumerate(records)]

        async def change(s: Store) -> Any:
            done = await s.change_job(read, changes, records=records)
            return None if done is None else (done.job, sorted(r.id for r in done.recorded))
        self.each("change_job", change)

    @rule(j=index)
    def delete_job(self, j: int) -> None:
        self.step += 1
        job_id = self.pick_job(j)

        async def delete_(s: Store) -> Any:
            return sorted((r.id, r) for r in await s.delete_job(job_id))
        self.each("delete_job", delete_)

    @rule(j=index)
    def delete_history(self, j: int) -> None:
        self.step += 1
        job_id = self.pick_job(j)
        self.each("delete_runs", lambda s: s.delete_runs(job_id))

    @rule(max_age=st.sampled_from([None, 5, 30]))
    def prune(self, max_age: int | None) -> None:
        self.step += 1
        now, age = self.now, None if max_age is None else timedelta(seconds=max_age)
        self.each("prune_runs", lambda s: s.prune_runs(now, age, BIG))

    @rule(picks=st.none() | st.lists(index, max_size=3))
    def release(self, picks: list[int] | None) -> None:
        self.step += 1
        ids = None if picks is None else [self.pick_run(i) for i in picks]
        self.each("release_undispatched", lambda s: s.release_undispatched(ids))

    @rule(i=index, owner=st.sampled_from(["w1", "w2"]), lines=st.integers(0, 4))
    def record_output(self, i: int, owner: str, lines: int) -> None:
        self.step += 1
        run_id = self.pick_run(i)
        text = "\n".join(f"so far {n}" for n in range(lines))

        async def record(s: Store) -> Any:
            return sorted(await s.record_output({run_id: (text, lines)}, owner))
        self.each("record_output", record)


def test_the_stores_agree_on_random_operation_sequences(request: pytest.FixtureRequest,
                                                         tmp_path: Path) -> None:
    from chronos_adapters.sql import SqlStore

    urls = {"sqlite": f"sqlite:///{tmp_path / 'diff.db'}"}
    try:
        urls["mysql"] = request.getfixturevalue("fresh_mysql_url")
    except pytest.skip.Exception:  # no MariaDB here (under CI=true that fails instead)
        pass

    async def schema() -> None:  # once: each example empties the tables
        for url in urls.values():
            store = SqlStore(url)
            await store.start()
            await store.stop()
    asyncio.run(schema())
    run_state_machine_as_test(
        lambda: StoreDifferential(urls),
        settings=settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                          derandomize=not CHOSEN, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
