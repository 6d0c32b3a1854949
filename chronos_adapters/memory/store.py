"""The in-memory store: the reference implementation of the ``Store`` contract and every user's test
double. Nothing survives the process.

Due jobs, undispatched runs and leases sit in heaps keyed by time (stale heap entries are skipped when
popped), so a claim costs O(due work · log n), not O(stored jobs). Every method runs without awaiting,
which makes each one atomic on the event loop.

Finished runs (the history, by far the most of what is stored) are kept as plain tuples of their field
values rather than ``Run`` objects: a tuple of strings, numbers and datetimes is not tracked by Python's
cyclic garbage collector, so a growing history does not make every full collection longer (at 10,000 runs
a second, a history of ``Run`` objects made full collections of 100+ ms every few seconds). For the same
reason a claim does not store a new ``Job`` per claimed job: each job's current ``next_run_at`` is kept
beside its stored definition (``_next``), and a job is brought up to date only when it is handed out.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import json
from collections import defaultdict, deque
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from chronos_core.errors import JobNotFound, NameConflict, RunConflict, RunNotFound
from chronos_core.hooks import (
    NOTICE_RETENTION,
    Notice,
    NoticeStatus,
    OutcomeHooks,
    outcome_notices,
    run_facts,
)
from chronos_core.ids import new_id
from chronos_core.models import (
    ACTIVE_RUN_STATUSES,
    FINISHED_RUN_STATUSES,
    Job,
    JobStatus,
    JobSummary,
    Run,
    RunStatus,
    Trigger,
    check_job_names,
    count_lines,
    evolve,
)
from chronos_core.planning import jitter_order, replaced_reason
from chronos_core.ports import Claim, Dispatch, JobChange, Planner, RunCounts, SlotPlan, Store, StoreStats

__all__ = ["MemoryStore"]

_STATUS = {s.value: s for s in RunStatus}
_TRIGGER = {t.value: t for t in Trigger}
_Packed = tuple[Any, ...]


def _pack(run: Run) -> _Packed:
    return (run.id, run.job_id, run.scheduled_for, run.trigger.value, run.attempt, run.status.value,
            run.created_at, run.due_at, run.started_at, run.finished_at, run.exit_code, run.output,
            run.error, run.owner, run.lease_expires_at, run.output_lines,
            # the result as JSON text: each read gets its own copy, plain JSON as a SQL store reads it
            None if run.result is None else json.dumps(run.result, ensure_ascii=False))


def _pack_finished(run: Run, status: RunStatus, finished_at: datetime, exit_code: int | None, output: str,
                   error: str | None, output_lines: int, result: Any) -> _Packed:
    """``_pack(evolve(run, status=..., ..., lease_expires_at=None))`` without the copy in between (finish_run
    packs one at the rate runs end; a test holds the two to the same tuple)."""
    return (run.id, run.job_id, run.scheduled_for, run.trigger.value, run.attempt, status.value,
            run.created_at, run.due_at, run.started_at, finished_at, exit_code, output,
            error, run.owner, None, output_lines,
            None if result is None else json.dumps(result, ensure_ascii=False))


def _unpack(t: _Packed) -> Run:
    return Run(id=t[0], job_id=t[1], scheduled_for=t[2], trigger=_TRIGGER[t[3]], attempt=t[4],
               status=_STATUS[t[5]], created_at=t[6], due_at=t[7], started_at=t[8], finished_at=t[9],
               exit_code=t[10], output=t[11], error=t[12], owner=t[13], lease_expires_at=t[14],
               output_lines=t[15], result=None if t[16] is None else json.loads(t[16]))


# finished runs of a slot that was handed out, as Store.replaced_by_later_slot counts them (retention keeps
# the latest slot's after an active run)
_RAN = frozenset(s.value for s in FINISHED_RUN_STATUSES - {RunStatus.MISSED, RunStatus.SKIPPED})
_SLOT_TRIGGERS = frozenset({Trigger.SCHEDULE.value, Trigger.CATCH_UP.value})
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)


class MemoryStore(Store):
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}  # next_run_at as of the last definition change: see _next
        self._next: dict[str, datetime | None] = {}  # job id -> its current next_run_at
        self._names: dict[str, str] = {}
        self._runs: dict[str, Run | _Packed] = {}  # finished runs packed (see the module's docstring)
        self._slots: set[tuple[str, datetime, int]] = set()
        self._job_runs: dict[str, list[str]] = defaultdict(list)  # run ids in id order
        # every run id in id order, for listing across jobs; ids of deleted runs linger until the list
        # is compacted (deleting from the middle of a long list one by one would cost more)
        self._all_runs: list[str] = []
        self._summaries: dict[str, JobSummary] = {}
        # run outcomes counted as they are recorded, for the last two days: totals per minute (minute ->
        # status -> count) and per job per hour (hour -> (job id, status) -> count), as the SQL store does
        self._totals: dict[datetime, dict[str, int]] = {}
        self._per_job: dict[datetime, dict[tuple[str, str], int]] = {}
        # the buckets the last count went to, with their bounds (see _count)
        self._minute: tuple[datetime, datetime, dict[str, int]] | None = None
        self._hour: tuple[datetime, datetime, dict[tuple[str, str], int]] | None = None
        self._active: dict[str, dict[str, None]] = defaultdict(dict)  # job id -> active run ids
        self._seq = itertools.count()
        # (next_run_at, its jitter offset in µs, seq, job id): the jobs due at one instant come out in the
        # order their jittered slots come due (see claim_due)
        self._due: list[tuple[datetime, int, int, str]] = []
        # (next_run_at + its jitter offset, seq, job id, next_run_at): the same entries in the order they
        # come due, across instants (a job of a later instant may come due before the jittered jobs of an
        # earlier one): what Claim.next_due reports
        self._due_at: list[tuple[datetime, int, str, datetime]] = []
        self._undispatched: dict[str, None] = {}
        self._waiting: list[tuple[datetime, int, str]] = []  # (due_at, seq, run id), undispatched
        self._leases: list[tuple[datetime, int, str]] = []  # (lease_expires_at, seq, run id)
        self._finished: deque[tuple[datetime, str]] = deque()  # (finished_at, run id)
        self._notices: dict[str, Notice] = {}  # id -> notice, in insertion order
        self._notice_keys: dict[str, str] = {}  # key -> id
        self._pending: dict[str, None] = {}  # ids of pending notices (what a claim looks at)

    def data_stamp(self) -> object | None:
        """None: the API keeps no pages of this store. A counter bumped by every write would do, but the
        writes here are many methods changing dicts in place (and, with the API on a thread of its own,
        run on another loop than the reader of the counter): one write that missed the bump would serve
        a stale page, and this store is for tests and embedded use, where the pages are not the cost."""
        return None

    def _run(self, run_id: str) -> Run | None:
        value = self._runs.get(run_id)
        if type(value) is tuple:
            return _unpack(value)
        assert value is None or isinstance(value, Run)
        return value

    def _put(self, run: Run) -> None:
        self._runs[run.id] = _pack(run) if run.status in FINISHED_RUN_STATUSES else run

    # jobs -------------------------------------------------------------------------------------------
    def _job(self, job_id: str) -> Job:
        """The job as it stands (KeyError if there is none)."""
        job, at = self._jobs[job_id], self._next[job_id]
        return job if job.next_run_at == at else evolve(job, next_run_at=at)

    def _set(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._next[job.id] = job.next_run_at

    def _index_due(self, job: Job) -> None:
        if job.status is JobStatus.ACTIVE and job.next_run_at is not None:
            self._push_due(job, job.next_run_at)

    def _push_due(self, job: Job, at: datetime) -> None:
        offset, seq = jitter_order(job.id, at, job.jitter), next(self._seq)
        heapq.heappush(self._due, (at, offset, seq, job.id))
        heapq.heappush(self._due_at, (at + timedelta(microseconds=offset) if offset else at, seq, job.id, at))

    def _next_due(self) -> datetime | None:
        """When the earliest-due job comes due (its jittered slot), None if none is indexed."""
        heap = self._due_at
        while heap:
            due_at, _, job_id, at = heap[0]
            job = self._jobs.get(job_id)
            if job is not None and job.status is JobStatus.ACTIVE and self._next[job_id] == at:
                return due_at
            heapq.heappop(heap)
        return None

    async def add_jobs(self, jobs: Sequence[Job]) -> None:
        check_job_names([job.name for job in jobs], index=True)
        seen: set[str] = set()
        for job in jobs:
            if job.name in self._names or job.name in seen:
                raise NameConflict(job.name)
            seen.add(job.name)
        ids = {job.id for job in jobs}
        if len(ids) < len(jobs) or any(job_id in self._jobs for job_id in ids):
            raise RunConflict("a job with one of these ids already exists")  # as the SQL store says
        for job in jobs:
            self._set(job)
            self._names[job.name] = job.id
            self._index_due(job)

    async def get_job(self, job_id: str) -> Job:
        try:
            return self._job(job_id)
        except KeyError:
            raise JobNotFound(job_id) from None

    async def get_job_by_name(self, name: str) -> Job:
        try:
            return self._job(self._names[name])
        except KeyError:
            raise JobNotFound(name) from None

    async def list_jobs(self, *, status: JobStatus | None = None, type: str | None = None,
                        name: str | None = None, after: str | None = None, limit: int = 100,
                        last_status: Collection[RunStatus] | None = None) -> list[Job]:
        out: list[Job] = []
        if limit <= 0:
            return out
        for job_id in sorted(self._jobs):
            if after is not None and job_id <= after:
                continue
            if last_status is not None:
                summary = self._summaries.get(job_id)
                if summary is None or summary.last_run_status not in last_status:
                    continue
            job = self._job(job_id)
            if ((status is None or job.status is status) and (type is None or job.type == type)
                    and (name is None or job.name.startswith(name))):
                out.append(job)
                if len(out) >= limit:
                    break
        return out

    async def job_summaries(self, job_ids: Collection[str]) -> dict[str, JobSummary]:
        return {job_id: dataclasses.replace(self._summaries.get(job_id) or JobSummary())
                for job_id in job_ids if job_id in self._jobs}

    async def update_job(self, job: Job) -> None:
        old = await self.get_job(job.id)
        if job.name != old.name:
            check_job_names([job.name])
            if job.name in self._names:
                raise NameConflict(job.name)
            del self._names[old.name]
            self._names[job.name] = job.id
        self._set(job)
        if job.next_run_at != old.next_run_at or job.status is not old.status or job.jitter != old.jitter:
            self._index_due(job)  # (jitter: the claim rank is the slot's jitter offset, as on SQL)

    async def change_job(self, read: Job, changes: Mapping[str, Any], *,
                         records: Sequence[Run] = ()) -> JobChange | None:
        if "id" in changes:
            raise ValueError("a job's id never changes")
        if changes.get("name", read.name) != read.name:
            check_job_names([changes["name"]])
        current = await self.get_job(read.id)
        if current.updated_at != read.updated_at or (
                "next_run_at" in changes and current.next_run_at != read.next_run_at):
            return None
        job = evolve(current, **changes)
        if job.name != current.name:
            if job.name in self._names:
                raise NameConflict(job.name)
            del self._names[current.name]
            self._names[job.name] = job.id
        self._set(job)
        if (job.next_run_at != current.next_run_at or job.status is not current.status
                or job.jitter != current.jitter):
            self._index_due(job)  # (a second live entry for the same slot is safe: see claim_due)
        return JobChange(job, [r for r in records if self._insert_run(r, dispatched=True)])

    async def delete_job(self, job_id: str) -> list[Run]:
        job = await self.get_job(job_id)
        removed = [r for r in map(self._run, self._active.get(job_id, ())) if r is not None]
        del self._jobs[job_id]
        del self._next[job_id]
        del self._names[job.name]
        for run_id in self._job_runs.pop(job_id, []):
            self._forget_run(run_id)
        self._active.pop(job_id, None)
        self._summaries.pop(job_id, None)
        for nid in [nid for nid, n in self._notices.items() if n.job_id == job_id]:
            del self._notice_keys[self._notices.pop(nid).key]
            self._pending.pop(nid, None)
        self._compact_all_runs()
        return sorted(removed, key=lambda r: r.id)

    def _forget_run(self, run_id: str) -> None:
        run = self._runs.pop(run_id)
        if type(run) is tuple:
            self._slots.discard((run[1], run[2], run[4]))
        else:
            assert isinstance(run, Run)
            self._slots.discard((run.job_id, run.scheduled_for, run.attempt))
        self._undispatched.pop(run_id, None)

    # scheduling -------------------------------------------------------------------------------------
    def _insert_run(self, run: Run, dispatched: bool) -> bool:
        key = (run.job_id, run.scheduled_for, run.attempt)
        if key in self._slots:
            return False
        self._slots.add(key)
        self._put(run)
        for ids in (self._job_runs[run.job_id], self._all_runs):
            if not ids or ids[-1] < run.id:
                ids.append(run.id)
            else:
                bisect.insort(ids, run.id)
        if run.status in ACTIVE_RUN_STATUSES:
            self._active[run.job_id][run.id] = None
        elif run.finished_at is not None:
            self._finished.append((run.finished_at, run.id))
            self._count(run.finished_at, run.job_id, run.status)
        if run.status is RunStatus.QUEUED and not dispatched:
            self._undispatched[run.id] = None
            heapq.heappush(self._waiting, (run.due_at, next(self._seq), run.id))
        return True

    @property
    def claim_holds_loop(self) -> bool:
        return True  # claim_due never awaits

    async def claim_due(self, now: datetime, limit: int, planner: Planner) -> Claim:
        """Earliest ``next_run_at`` first; the jobs due at one instant smallest jitter offset first (the
        order their runs come due in): a burst of jittered jobs claimed batch by batch claims the runs
        due first first, and later batches hold runs due later (see ``Store.claim_holds_loop``)."""
        claim = Claim()
        due = self._due
        popped: list[tuple[datetime, int, int, str]] = []
        plans: dict[str, tuple[Job, SlotPlan]] = {}
        try:  # plan every claimed job first: a planner that fails leaves nothing changed
            while due and len(plans) < limit and due[0][0] <= now:
                popped.append(heapq.heappop(due))
                at, _, _, job_id = popped[-1]
                job = self._jobs.get(job_id)
                if (job is None or job.status is not JobStatus.ACTIVE or self._next[job_id] != at
                        or job_id in plans):
                    continue  # stale entry: the job changed since it was indexed
                if job.next_run_at != at:
                    job = evolve(job, next_run_at=at)
                plans[job_id] = job, planner(job, list(self._active.get(job_id, ())), now)
        except BaseException:
            for entry in popped:
                heapq.heappush(due, entry)
            raise
        for job_id, (job, plan) in plans.items():
            claim.jobs += 1
            replacing: Run | None = None
            inserted: set[str] = set()
            for run in plan.runs:
                due = run.status is not RunStatus.QUEUED or run.due_at <= now  # (jitter: later)
                if not self._insert_run(run, dispatched=due):
                    claim.duplicates += 1
                    continue
                inserted.add(run.id)
                if run.status is RunStatus.QUEUED:
                    if due:
                        claim.dispatch.append(Dispatch(run, job))
                    else:
                        claim.waiting += 1
                    replacing = run
                else:
                    claim.recorded.append(run)
            if plan.notices:
                self._add_notices([n for n in plan.notices if n.run_id in inserted])
            if replacing is not None:  # a duplicate replaces nothing (its slot was planned again)
                self._replace(plan.cancel, replacing, now, claim)
            at = self._next[job_id] = plan.next_run_at
            if at is not None:
                self._push_due(job, at)  # the job is active
        claim.next_due = self._next_due()
        return claim

    def _replace(self, run_ids: Sequence[str], by: Run, now: datetime, claim: Claim) -> None:
        """Overlap replace: cancel the replaced runs still queued, ask the running ones to stop."""
        for run_id in run_ids:
            run = self._run(run_id)
            if run is None:
                continue
            if run.status is RunStatus.QUEUED:
                claim.cancelled.append(self._cancel(run, now, replaced_reason(by.scheduled_for)))
            elif run.status is RunStatus.RUNNING:
                claim.cancel.append(run_id)

    async def claim_due_runs(self, now: datetime, limit: int) -> list[Dispatch]:
        out: list[Dispatch] = []
        waiting = self._waiting
        while waiting and len(out) < limit and waiting[0][0] <= now:
            _, _, run_id = heapq.heappop(waiting)
            if run_id not in self._undispatched:
                continue
            del self._undispatched[run_id]
            run = self._run(run_id)
            if run is not None and run.status is RunStatus.QUEUED:
                out.append(Dispatch(run, self._job(run.job_id)))
        return out

    async def next_due_time(self) -> datetime | None:
        while self._due:
            at, _, _, job_id = self._due[0]
            job = self._jobs.get(job_id)
            if job is not None and job.status is JobStatus.ACTIVE and self._next[job_id] == at:
                break
            heapq.heappop(self._due)
        while self._waiting and self._waiting[0][2] not in self._undispatched:
            heapq.heappop(self._waiting)
        times = [h[0][0] for h in (self._due, self._waiting) if h]
        return min(times) if times else None

    async def release_undispatched(self, run_ids: Collection[str] | None = None) -> int:
        if run_ids is None:
            run_ids = [r for job_runs in self._active.values() for r in job_runs]
        count = 0
        for run_id in run_ids:
            run = self._run(run_id)
            if run is not None and run.status is RunStatus.QUEUED and run_id not in self._undispatched:
                self._undispatched[run_id] = None
                heapq.heappush(self._waiting, (run.due_at, next(self._seq), run_id))
                count += 1
        return count

    # runs -------------------------------------------------------------------------------------------
    async def add_run(self, run: Run, *, dispatched: bool) -> None:
        if run.job_id not in self._jobs:
            raise JobNotFound(run.job_id)
        if not self._insert_run(run, dispatched):
            raise RunConflict(f"a run of job {run.job_id} for {run.scheduled_for.isoformat()} attempt "
                              f"{run.attempt} already exists")

    async def get_run(self, run_id: str) -> Run:
        run = self._run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    async def list_runs(self, job_id: str | None = None, *, status: Collection[RunStatus] | None = None,
                        before: str | None = None, limit: int = 50,
                        trigger: Collection[Trigger] | None = None, since: datetime | None = None,
                        until: datetime | None = None) -> list[Run]:
        if job_id is not None:
            ids: Sequence[str] = self._job_runs.get(job_id, [])
        else:
            self._compact_all_runs()
            ids = self._all_runs
        end = len(ids) if before is None else bisect.bisect_left(ids, before)
        out: list[Run] = []
        if limit <= 0:
            return out
        runs = self._runs
        statuses = None if status is None else {s.value for s in status}
        triggers = None if trigger is None else {t.value for t in trigger}
        for i in range(end - 1, -1, -1):
            value = runs.get(ids[i])
            if value is None:
                continue  # deleted (see _all_runs)
            if type(value) is not tuple:
                assert isinstance(value, Run)
                value = _pack(value)
            if ((statuses is not None and value[5] not in statuses)
                    or (triggers is not None and value[3] not in triggers)
                    or (since is not None and value[2] < since) or (until is not None and value[2] > until)):
                continue
            out.append(_unpack(value))
            if len(out) >= limit:
                break
        return out

    def _compact_all_runs(self) -> None:
        if len(self._all_runs) > 2 * len(self._runs) + 1000:
            self._all_runs = [r for r in self._all_runs if r in self._runs]

    async def start_run(self, run_id: str, owner: str, now: datetime, lease_until: datetime) -> bool:
        run = self._run(run_id)
        if run is None or run.status is not RunStatus.QUEUED:
            return False
        self._undispatched.pop(run_id, None)
        self._runs[run_id] = evolve(run, status=RunStatus.RUNNING, started_at=now, owner=owner,
                                    lease_expires_at=lease_until)
        heapq.heappush(self._leases, (lease_until, next(self._seq), run_id))
        return True

    async def renew_leases(self, run_ids: Collection[str], owner: str, until: datetime) -> set[str]:
        held = set()
        for run_id in run_ids:
            run = self._run(run_id)
            if run is not None and run.status is RunStatus.RUNNING and run.owner == owner:
                self._runs[run_id] = evolve(run, lease_expires_at=until)
                heapq.heappush(self._leases, (until, next(self._seq), run_id))
                held.add(run_id)
        return held

    async def finish_run(self, run_id: str, owner: str | None, *, status: RunStatus,
                         finished_at: datetime, exit_code: int | None = None, output: str = "",
                         error: str | None = None, retry: Run | None = None,
                         lease_expires_at: datetime | None = None,
                         output_lines: int | None = None, hooks: OutcomeHooks | None = None,
                         result: Any = None) -> bool:
        run = self._run(run_id)
        if run is None or run.status is not RunStatus.RUNNING or run.owner != owner:
            return False
        if lease_expires_at is not None and run.lease_expires_at != lease_expires_at:
            return False  # renewed since the caller read it
        if status not in FINISHED_RUN_STATUSES:
            raise ValueError(f"{status} is not a finished status")
        if retry is not None and (retry.job_id, retry.scheduled_for, retry.attempt) in self._slots:
            raise RunConflict(f"attempt {retry.attempt} of this slot already exists")
        self._runs[run_id] = _pack_finished(  # (finished: packed, the result kept as JSON text)
            run, status, finished_at, exit_code, output, error,
            count_lines(output) if output_lines is None else output_lines, result)
        self._active[run.job_id].pop(run_id, None)
        self._finished.append((finished_at, run_id))
        self._count(finished_at, run.job_id, status)
        summary = self._summaries.get(run.job_id)
        if summary is None:
            summary = self._summaries[run.job_id] = JobSummary()
        before = dataclasses.replace(summary) if hooks is not None else summary
        summary.record(run.id, status, run.scheduled_for, run.started_at, finished_at, retry is None)
        if retry is not None:
            self._insert_run(retry, dispatched=False)
        if hooks is not None:
            facts = run_facts(run.id, status, run.attempt, run.trigger.value, run.scheduled_for,
                              run.started_at, finished_at, exit_code, error, output)
            self._add_notices(outcome_notices(hooks, job_id=run.job_id, run=facts, status=status,
                                              final=retry is None, before=before, after=summary,
                                              now=finished_at, new_id=new_id))
        return True

    # notices ------------------------------------------------------------------------------------------
    def _add_notices(self, notices: Sequence[Notice]) -> int:
        added = 0
        for n in notices:
            if n.key in self._notice_keys or n.job_id not in self._jobs:
                continue
            self._notices[n.id] = dataclasses.replace(n, tries=list(n.tries))
            self._notice_keys[n.key] = n.id
            if n.status is NoticeStatus.PENDING:
                self._pending[n.id] = None
            added += 1
        return added

    async def add_notices(self, notices: Sequence[Notice]) -> int:
        return self._add_notices(notices)

    async def claim_notices(self, now: datetime, limit: int, owner: str, lease_until: datetime
                            ) -> list[Notice]:
        due = sorted((n for n in map(self._notices.__getitem__, self._pending)
                      if n.status is NoticeStatus.PENDING and n.due_at <= now
                      and (n.owner is None or n.lease_until is None or n.lease_until < now)),
                     key=lambda n: (n.due_at, n.id))[:max(limit, 0)]
        for n in due:
            n.owner, n.lease_until = owner, lease_until
        return [dataclasses.replace(n, tries=list(n.tries)) for n in due]

    async def settle_notice(self, notice_id: str, owner: str, *, status: NoticeStatus, now: datetime,
                            due_at: datetime | None = None, error: str | None = None,
                            code: int | None = None, result: str | None = None) -> bool:
        n = self._notices.get(notice_id)
        if n is None or n.owner != owner or n.status is not NoticeStatus.PENDING:
            return False
        n.attempts += 1
        n.tries.append({"at": now.isoformat(), "ok": status is NoticeStatus.DELIVERED, "code": code,
                        "error": error})
        n.last_error, n.last_code, n.owner, n.lease_until = error, code, None, None
        n.status = status
        if status is NoticeStatus.PENDING:
            n.due_at = due_at or now
        else:
            n.finished_at, n.result = now, result
            self._pending.pop(n.id, None)
        return True

    async def list_notices(self, *, run_id: str | None = None, job_id: str | None = None,
                           result: str | None = None, limit: int = 100) -> list[Notice]:
        out = [dataclasses.replace(n, tries=list(n.tries)) for n in self._notices.values()
               if (run_id is None or n.run_id == run_id) and (job_id is None or n.job_id == job_id)
               and (result is None or n.result == result)]
        return sorted(out, key=lambda n: (n.created_at, n.id))[:limit]

    async def record_output(self, outputs: Mapping[str, tuple[str, int]], owner: str) -> set[str]:
        written = set()
        for run_id, (text, lines) in outputs.items():
            run = self._run(run_id)
            if (run is not None and run.status is RunStatus.RUNNING and run.owner == owner
                    and lines >= run.output_lines):
                self._runs[run_id] = evolve(run, output=text, output_lines=lines)
                written.add(run_id)
        return written

    async def cancel_queued_run(self, run_id: str, now: datetime, reason: str, *,
                                status: RunStatus = RunStatus.CANCELLED) -> bool:
        if status not in (RunStatus.CANCELLED, RunStatus.MISSED):
            raise ValueError(f"a queued run ends cancelled or missed, not {status}")
        run = self._run(run_id)
        if run is None or run.status is not RunStatus.QUEUED:
            return False
        self._cancel(run, now, reason, status)
        return True

    def _cancel(self, run: Run, now: datetime, reason: str, status: RunStatus = RunStatus.CANCELLED) -> Run:
        cancelled = evolve(run, status=status, finished_at=now, error=reason)
        self._put(cancelled)
        self._active[run.job_id].pop(run.id, None)
        self._undispatched.pop(run.id, None)
        self._finished.append((now, run.id))
        self._count(now, run.job_id, status)
        return cancelled

    def _count(self, at: datetime, job_id: str, status: RunStatus) -> None:
        # The current minute's and hour's counts are kept at hand: a finish at thousands a second mostly
        # lands in the bucket of the one before, and finding the bucket by ``datetime.replace`` (twice per
        # finish) cost more than the rest of the count. Same tzinfo only: the bounds are wall times.
        value = status.value
        minute = self._minute
        if minute is None or at.tzinfo is not minute[0].tzinfo or not minute[0] <= at < minute[1]:
            minute = self._minute = self._bucket(self._totals, at.replace(second=0, microsecond=0),
                                                 _MINUTE)
        totals = minute[2]
        totals[value] = totals.get(value, 0) + 1
        hour = self._hour
        if hour is None or at.tzinfo is not hour[0].tzinfo or not hour[0] <= at < hour[1]:
            hour = self._hour = self._bucket(self._per_job, at.replace(minute=0, second=0, microsecond=0),
                                             _HOUR)
        per_job = hour[2]
        key = (job_id, value)
        per_job[key] = per_job.get(key, 0) + 1

    @staticmethod
    def _bucket(table: dict[datetime, Any], bucket: datetime, span: timedelta
                ) -> tuple[datetime, datetime, dict[Any, int]]:
        """The counts of ``bucket`` in ``table`` (made, and buckets older than two days dropped, when it is
        new), with the bucket's bounds."""
        counts = table.get(bucket)
        if counts is None:
            counts = table[bucket] = {}
            horizon = bucket - timedelta(days=2)
            for old in [b for b in table if b < horizon]:
                del table[old]
        return bucket, bucket + span, counts

    async def stats(self, since: Sequence[datetime], top: int = 5) -> StoreStats:
        out = StoreStats()
        for job in self._jobs.values():
            out.jobs[job.status] = out.jobs.get(job.status, 0) + 1
        for ids in self._active.values():
            for run_id in ids:
                run = self._run(run_id)
                if run is not None:
                    out.active[run.status] = out.active.get(run.status, 0) + 1
        for start in since:
            window = RunCounts(since=start)
            minute = start.replace(second=0, microsecond=0)
            for bucket, totals in self._totals.items():
                if bucket >= minute:
                    for value, n in totals.items():
                        window.by_status[_STATUS[value]] = window.by_status.get(_STATUS[value], 0) + n
            runs: dict[str, int] = defaultdict(int)
            failures: dict[str, int] = defaultdict(int)
            hour = start.replace(minute=0, second=0, microsecond=0)
            for bucket, per_job in self._per_job.items():
                if bucket >= hour:
                    for (job_id, value), n in per_job.items():
                        runs[job_id] += n
                        if value in (RunStatus.FAILED.value, RunStatus.TIMED_OUT.value):
                            failures[job_id] += n
            window.busiest = sorted(runs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            window.failing = sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            out.windows.append(window)
        return out

    async def expired_leases(self, now: datetime, limit: int) -> list[Run]:
        out: list[Run] = []
        leases = self._leases
        seen = set()
        while leases and len(out) < limit and leases[0][0] < now:
            until, _, run_id = heapq.heappop(leases)
            run = self._run(run_id)
            if (run is None or run.status is not RunStatus.RUNNING or run.lease_expires_at != until
                    or run_id in seen):
                continue
            seen.add(run_id)
            out.append(run)
        for run in out:  # still running until someone finishes them: keep them findable
            heapq.heappush(leases, (run.lease_expires_at or now, next(self._seq), run.id))
        return out

    async def delete_runs(self, job_id: str) -> int:
        await self.get_job(job_id)
        ids = self._job_runs.get(job_id, [])
        keep = [r for r in ids if type(self._runs[r]) is not tuple]  # only finished runs are packed
        for run_id in ids:
            if type(self._runs[run_id]) is tuple:
                self._forget_run(run_id)
        self._job_runs[job_id] = keep
        self._compact_all_runs()
        return len(ids) - len(keep)

    async def prune_runs(self, now: datetime, max_age: timedelta | None, limit: int, *,
                         default_limit: int | None = None) -> int:
        for nid in [nid for nid, n in self._notices.items()  # settled notices past their retention
                    if nid not in self._pending and n.due_at < now - NOTICE_RETENTION]:
            del self._notice_keys[self._notices.pop(nid).key]
        deleted = 0
        for job_id, ids in self._job_runs.items():
            job = self._jobs.get(job_id)
            if job is None:
                continue
            keep = default_limit if job.history_limit is None else job.history_limit
            if keep is None:
                continue
            finished = [r for r in ids if type(self._runs[r]) is tuple]  # only finished runs are packed
            excess = len(finished) - keep
            if excess > 0:
                doomed_ = finished[:excess]
                # not the runs of the latest slot that ran after an active run: they say it was replaced
                # (see the SQL store's retention)
                active = [run.scheduled_for for r in ids if type(run := self._runs[r]) is not tuple]
                ran = [t[2] for r in finished if (t := self._runs[r])[5] in _RAN and t[3] in _SLOT_TRIGGERS]
                if active and ran and (latest := max(ran)) > min(active):
                    doomed_ = [r for r in doomed_ if self._runs[r][2] != latest]
                doomed = set(doomed_[:limit - deleted])
                for run_id in doomed:
                    self._forget_run(run_id)
                ids[:] = [r for r in ids if r not in doomed]
                deleted += len(doomed)
            if deleted >= limit:
                self._compact_all_runs()
                return deleted
        if max_age is None:
            # The age index is only read with a max age; keep it from outgrowing the runs it indexes.
            if len(self._finished) > 2 * len(self._runs) + 1000:
                self._finished = deque(e for e in self._finished if e[1] in self._runs)
        else:
            cutoff = now - max_age
            while self._finished and deleted < limit and self._finished[0][0] < cutoff:
                _, run_id = self._finished.popleft()
                run = self._run(run_id)
                if run is None or run.status not in FINISHED_RUN_STATUSES:
                    continue
                self._forget_run(run_id)
                ids = self._job_runs[run.job_id]
                i = bisect.bisect_left(ids, run_id)
                if i < len(ids) and ids[i] == run_id:
                    del ids[i]
                deleted += 1
        self._compact_all_runs()
        return deleted
