"""The ports: the async interfaces the engines need, each with its contract.

Adapters implement these (``chronos_adapters``); the in-memory ones are the reference implementation and
every contract here is exercised against every adapter by the suites in ``tests/contracts``.
Times are aware UTC datetimes. Unless a method says otherwise, a backend that cannot be reached raises
:class:`~chronos_core.errors.StoreUnavailable` and nothing was done.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Protocol

from .errors import FieldError
from .hooks import Delivery, Notice, NoticeStatus, OutcomeHooks
from .models import Event, EventType, Job, JobStatus, JobSummary, Run, RunStatus, Trigger

__all__ = [
    "Claim",
    "Clock",
    "Dispatch",
    "DispatchQueue",
    "EventBus",
    "ExecutionResult",
    "Executor",
    "JobChange",
    "LogSink",
    "NotifyChannel",
    "Planner",
    "RunCounts",
    "SlotPlan",
    "Store",
    "StoreStats",
    "Subscription",
]


# ------------------------------------------------------------------------------------------- store


@dataclass(slots=True)
class SlotPlan:
    """What to do with one claimed job, decided by the scheduler's planner (pure domain logic).

    ``runs`` are inserted: ``queued`` ones due now are dispatched (a later ``due_at``, the job's
    ``jitter``, waits undispatched for :meth:`Store.claim_due_runs`), the others are records (``missed``,
    ``skipped``). ``next_run_at`` replaces the job's. ``cancel`` lists active run ids the new slot
    replaces (overlap policy ``replace``): in the claim's transaction the store cancels the queued ones
    and returns the running ones in :attr:`Claim.cancel`; none of them when the replacing run is a
    duplicate (its slot already had a run: the slot was planned again, e.g. after a lost race).
    """

    runs: list[Run]
    next_run_at: datetime | None
    cancel: list[str] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    """Notices of the records (``missed``/``skipped`` notifications), inserted in the claim's
    transaction for the runs that went in (not for duplicates)."""


Planner = Callable[[Job, Sequence[str], datetime], SlotPlan]
"""``planner(job, active_run_ids, now)``: the plan for a claimed due job. Pure and synchronous: stores may
call it inside a transaction, in a worker thread. ``active_run_ids`` (the job's queued and running runs)
matter only to the overlap policies ``forbid`` and ``replace``: a store may pass ``[]`` for ``allow``
jobs without looking them up."""


@dataclass(slots=True)
class Dispatch:
    """A run handed to a worker, with the job as it was when the run was created."""

    run: Run
    job: Job


@dataclass(slots=True)
class Claim:
    """The outcome of one claim: runs to dispatch, records written, running runs to ask to stop
    (``cancel``: replaced, overlap ``replace``), queued runs it cancelled (``cancelled``, as stored:
    replaced before they started), duplicate slots (a run for the same (job, slot, attempt) already
    existed: another scheduler fired it), how many jobs it claimed and how many queued runs it inserted
    that are due later (``waiting``: the job's jitter; :meth:`Store.claim_due_runs` hands them out), and
    ``next_due``: when the earliest-due job left unclaimed comes due (its next slot plus its jitter
    offset), None if the store does not tell (the SQL stores) or holds no due job."""

    dispatch: list[Dispatch] = field(default_factory=list)
    recorded: list[Run] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    duplicates: int = 0
    jobs: int = 0
    cancelled: list[Run] = field(default_factory=list)
    waiting: int = 0
    next_due: datetime | None = None


@dataclass(slots=True)
class JobChange:
    """What :meth:`Store.change_job` wrote: the job as now stored, and the records it inserted."""

    job: Job
    recorded: list[Run] = field(default_factory=list)


@dataclass(slots=True)
class RunCounts:
    """The runs that ended since a time, by status (counted to the minute), and the jobs with the most runs
    and with the most failures (``failed`` or ``timed_out``), most first (counted by the hour: from the
    start of the hour ``since`` falls in)."""

    since: datetime
    by_status: dict[RunStatus, int] = field(default_factory=dict)
    busiest: list[tuple[str, int]] = field(default_factory=list)  # (job id, runs)
    failing: list[tuple[str, int]] = field(default_factory=list)  # (job id, failures)


@dataclass(slots=True)
class StoreStats:
    """Counts for a dashboard: jobs by status, runs queued or running now, and runs that ended in each
    window asked for."""

    jobs: dict[JobStatus, int] = field(default_factory=dict)
    active: dict[RunStatus, int] = field(default_factory=dict)
    windows: list[RunCounts] = field(default_factory=list)


class Store(abc.ABC):
    """Jobs and their runs.

    Invariants every implementation keeps:

    * job names are unique (:class:`NameConflict`); ids never change;
    * ``(job_id, scheduled_for, attempt)`` is unique among runs: a slot has at most one first attempt;
    * a run's status only moves forward: queued -> running -> a finished status, or queued -> cancelled;
      ``start_run`` and ``finish_run`` are conditional writes (compare-and-set) that say whether they
      applied, so a redelivered or stale message can never overwrite a newer outcome;
    * ``claim_due`` is atomic: the due jobs it returns, the runs it inserts and the advance of their
      ``next_run_at`` all happen, or none do; two concurrent claims never return the same job for the
      same slot.

    What a store returns (a :class:`Job`, :class:`Run`, :class:`JobSummary`, their payload, result,
    lists) may be shared with every other caller and with the store itself: the memory store hands out
    its own jobs, the SQL store's listings hand out the objects they decoded before from the same row.
    Treat them as read-only: to change one, build a new one (``dataclasses.replace``, a new dict) and
    write that; changed in place, it would change what later reads of that store show, while the stored
    row stays as it was (review-apigil F3).
    """

    # lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open connections / create the schema if the backend needs it. Idempotent."""

    async def stop(self) -> None:
        """Release every resource. Idempotent."""

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def ping(self) -> None:
        """Return if the backend answers; raise :class:`StoreUnavailable` if not."""

    def data_stamp(self) -> object | None:
        """An opaque value that changes whenever anything this store holds may have changed (a write by
        this process or any other), or None when the store cannot tell: then nothing read from it may be
        kept on the strength of the stamp. Cheap, synchronous, and read *before* the reads it vouches
        for: what was read after a stamp is at least as new as the stamp, so a page read and kept under
        it is dropped as soon as a later write moves the stamp on. Equal stamps (``==``) mean nothing
        was committed in between. The default is None (a store that does not implement it keeps
        nothing cached by the API)."""
        return None

    @property
    def claim_holds_loop(self) -> bool:
        """Whether :meth:`claim_due` runs on the event loop without awaiting (the memory store): while a
        batch is claimed nothing else on the loop runs (no worker starts a run). The scheduler then ends
        a tick's claiming after a batch that left runs waiting for their jitter when no job left unclaimed
        is due yet (``Claim.next_due``), so the runs that come due are handed out and started before the
        next batch is claimed. False (the default): the claim runs off the
        loop (a store's threads), and the tick claims on."""
        return False

    # jobs --------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_jobs(self, jobs: Sequence[Job]) -> None:
        """Insert jobs, all or none. :class:`NameConflict` if any name is taken (also within ``jobs``);
        before that, :class:`InvalidJob` at ``(i, "name")`` for a name with whitespace at its ends
        (:func:`~chronos_core.models.check_job_names`: every store refuses it alike)."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> Job:
        """The job; :class:`JobNotFound` if there is none."""

    @abc.abstractmethod
    async def get_job_by_name(self, name: str) -> Job:
        """The job with this name; :class:`JobNotFound` (carrying the name) if there is none."""

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        type: str | None = None,
        name: str | None = None,
        after: str | None = None,
        limit: int = 100,
        last_status: Collection[RunStatus] | None = None,
    ) -> list[Job]:
        """Jobs in id (creation) order, after the id ``after``; ``name`` matches as a prefix;
        ``last_status``: only jobs whose last run (see :meth:`job_summaries`) ended so."""

    @abc.abstractmethod
    async def job_summaries(self, job_ids: Collection[str]) -> dict[str, JobSummary]:
        """The summary of each of these jobs (an empty one for a job whose runs never ran to an end;
        unknown ids are left out). Summaries are written by :meth:`finish_run`, in its transaction:
        reading them costs O(len(job_ids)), never a scan of the history."""

    async def list_jobs_with_summaries(
        self,
        *,
        status: JobStatus | None = None,
        type: str | None = None,
        name: str | None = None,
        after: str | None = None,
        limit: int = 100,
        last_status: Collection[RunStatus] | None = None,
    ) -> list[tuple[Job, JobSummary]]:
        """The page :meth:`list_jobs` gives (the same jobs, filters and order), each job with its summary
        as :meth:`job_summaries` gives it (an empty one for a job without). What a listing shows, read
        together: a backend that can reads both in one query. This default makes the two calls (a job
        deleted between them comes with an empty summary)."""
        jobs = await self.list_jobs(status=status, type=type, name=name, after=after, limit=limit,
                                    last_status=last_status)
        summaries = await self.job_summaries([j.id for j in jobs]) if jobs else {}
        return [(j, summaries.get(j.id) or JobSummary()) for j in jobs]

    @abc.abstractmethod
    async def update_job(self, job: Job) -> None:
        """Replace the stored job with the same id, every field, unconditionally (set-up and tests; the
        operations use :meth:`change_job`). :class:`JobNotFound`, :class:`NameConflict`; a rename to a name
        with whitespace at its ends is :class:`InvalidJob` (as in ``add_jobs``), and so is one by
        :meth:`change_job`."""

    @abc.abstractmethod
    async def change_job(self, read: Job, changes: Mapping[str, Any], *,
                         records: Sequence[Run] = ()) -> JobChange | None:
        """Write only ``changes`` (``Job`` field names -> values; not ``id``) to the job as it was
        ``read``, as a compare-and-set: only while the stored ``updated_at`` is ``read.updated_at`` and,
        when ``next_run_at`` is among the changes, the stored ``next_run_at`` is ``read.next_run_at``.
        Else (a concurrent change, or a claim that moved ``next_run_at``) None and nothing written: read
        again and decide again. Fields not in ``changes`` keep what is stored, so a claim's advance of
        ``next_run_at`` is never wound back. Callers make ``updated_at`` increase with every change (it
        is the row's version). ``records`` (finished runs for slots the change drops, e.g. a pause while
        the scheduler is behind) are inserted in the same transaction, those whose (job, slot, attempt)
        already has a run left out. :class:`JobNotFound`, :class:`NameConflict`."""

    @abc.abstractmethod
    async def delete_job(self, job_id: str) -> list[Run]:
        """Delete the job and all its runs; the active (queued or running) runs it removed, as they were
        when removed, so the caller asks exactly those to stop (a run started after a listing taken
        beforehand would be missed). :class:`JobNotFound` if there is none."""

    # scheduling --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim_due(self, now: datetime, limit: int, planner: Planner) -> Claim:
        """Atomically claim up to ``limit`` active jobs with ``next_run_at <= now`` (earliest first), call
        ``planner(job, active_run_ids, now)`` for each, insert the planned runs, set each job's
        ``next_run_at`` to the planned one, and mark the queued runs due by ``now`` as dispatched.

        A planned run whose (job, slot, attempt) already exists is not inserted and is counted in
        ``duplicates``. Concurrent claims (other processes) never claim the same job at the same time.
        Among jobs due at the same ``next_run_at``, the smallest jitter offset first
        (:func:`~chronos_core.planning.jitter_order`: the order their jittered slots come due in), so
        a burst of jittered jobs claimed batch by batch claims the runs due first first.
        """

    @abc.abstractmethod
    async def claim_due_runs(self, now: datetime, limit: int) -> list[Dispatch]:
        """Queued runs not yet dispatched whose ``due_at <= now`` (retries waiting out their delay, runs
        handed back by :meth:`release_undispatched`), earliest first, marked dispatched, with their
        jobs. Runs of deleted jobs are never returned."""

    @abc.abstractmethod
    async def next_due_time(self) -> datetime | None:
        """The earliest ``next_run_at`` of an active job or ``due_at`` of an undispatched queued run."""

    @abc.abstractmethod
    async def release_undispatched(self, run_ids: Collection[str] | None = None) -> int:
        """Mark queued runs as not dispatched, so the next :meth:`claim_due_runs` hands them out again:
        these ``run_ids`` (runs claimed but not handed to the queue because it failed), or every queued
        run (at start-up when the dispatch queue is not durable: whatever the last process had queued in
        memory is dispatched again). Runs that are not queued any more are left alone. Returns how
        many runs."""

    # runs --------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_run(self, run: Run, *, dispatched: bool) -> None:
        """Insert one run (a manual trigger). :class:`RunConflict` if its (job, slot, attempt) exists,
        :class:`JobNotFound` if its job does not."""

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> Run:
        """The run; :class:`RunNotFound` if there is none."""

    @abc.abstractmethod
    async def list_runs(
        self,
        job_id: str | None = None,
        *,
        status: Collection[RunStatus] | None = None,
        before: str | None = None,
        limit: int = 50,
        trigger: Collection[Trigger] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Run]:
        """Runs newest first (descending id), optionally of one job, with given statuses and triggers and
        ``since <= scheduled_for <= until``, older than the run id ``before`` (keyset pagination). With a
        status filter and no job, the cost is that of ``limit`` rows per status, whatever the history
        holds."""

    @abc.abstractmethod
    async def start_run(self, run_id: str, owner: str, now: datetime, lease_until: datetime) -> bool:
        """queued -> running, owned by ``owner`` until ``lease_until``. False (and nothing written) when
        the run is not queued any more: it already ran, is running elsewhere, or was cancelled."""

    @abc.abstractmethod
    async def renew_leases(self, run_ids: Collection[str], owner: str, until: datetime) -> set[str]:
        """Extend the leases ``owner`` still holds on these running runs; the ids actually renewed."""

    @abc.abstractmethod
    async def finish_run(
        self,
        run_id: str,
        owner: str | None,
        *,
        status: RunStatus,
        finished_at: datetime,
        exit_code: int | None = None,
        output: str = "",
        error: str | None = None,
        retry: Run | None = None,
        lease_expires_at: datetime | None = None,
        output_lines: int | None = None,
        hooks: OutcomeHooks | None = None,
        result: Any = None,
    ) -> bool:
        """Record the outcome of a running run held by ``owner`` and, in the same transaction, insert
        ``retry`` (the next attempt, queued, not dispatched) if given, fold the outcome into the job's
        summary (:meth:`JobSummary.record`, ``final`` when there is no retry) and, with ``hooks`` (the
        job's notifications, chains and auto-pause), insert the notices
        :func:`~chronos_core.hooks.outcome_notices` gives for the summary before and after (the outbox:
        an outcome recorded is never without its notices, nor the other way round). Fenced: False and
        nothing written when the run is not running under ``owner`` any more (the lease expired and
        someone else took over) or, when
        ``lease_expires_at`` is given, when its lease no longer expires at that time (the reaper passes
        the expiry it read in :meth:`expired_leases`: a renewal that landed in between wins, and the live
        attempt is not failed). :class:`RunConflict` (nothing written) when the retry's (job, slot,
        attempt) exists. ``output_lines`` is the run's line count (None: the lines of ``output``);
        ``result`` the attempt's JSON value (:attr:`Run.result`), read back equal."""

    @abc.abstractmethod
    async def record_output(self, outputs: Mapping[str, tuple[str, int]], owner: str) -> set[str]:
        """Store the output so far of running runs: run id -> (tail text, line count). Fenced like
        :meth:`finish_run` (only runs still running under ``owner``) and never backwards (a line count
        below the stored one is ignored). Returns the ids written. This is how every API instance shows
        a running run's output, whichever worker runs it."""

    # notices (the outbox of notifications, chains and pauses; see chronos_core.hooks) ----------------
    @abc.abstractmethod
    async def add_notices(self, notices: Sequence[Notice]) -> int:
        """Insert notices whose ``key`` is new (an existing key is left as it is, also within
        ``notices``); how many went in. Notices of a job that does not exist are dropped."""

    @abc.abstractmethod
    async def claim_notices(self, now: datetime, limit: int, owner: str, lease_until: datetime
                            ) -> list[Notice]:
        """Up to ``limit`` pending notices due by ``now`` (``due_at``, earliest first) that no notifier
        holds (no owner, or a lease that ended before ``now``), now held by ``owner`` until
        ``lease_until``. Concurrent claims never return the same notice."""

    @abc.abstractmethod
    async def settle_notice(self, notice_id: str, owner: str, *, status: NoticeStatus, now: datetime,
                            due_at: datetime | None = None, error: str | None = None,
                            code: int | None = None, result: str | None = None) -> bool:
        """Record one delivery attempt of a notice ``owner`` holds: ``attempts`` + 1, the attempt
        appended to ``tries`` ({at, ok, code, error}), ``last_error``/``last_code``, the lease released;
        ``status`` delivered/failed (final: ``finished_at``, ``result``) or pending again from
        ``due_at``. False (nothing written) when ``owner`` does not hold it any more."""

    @abc.abstractmethod
    async def list_notices(self, *, run_id: str | None = None, job_id: str | None = None,
                           result: str | None = None, limit: int = 100) -> list[Notice]:
        """Notices of a run (or a job, or whose ``result`` is this value: the chain that made a run),
        oldest first."""

    @abc.abstractmethod
    async def cancel_queued_run(self, run_id: str, now: datetime, reason: str, *,
                                status: RunStatus = RunStatus.CANCELLED) -> bool:
        """queued -> cancelled (or, with ``status=MISSED``, missed: a slot that reached a worker past its
        misfire grace), with ``reason`` as its error. False when the run is not queued (it started, or
        finished). ValueError for another status."""

    @abc.abstractmethod
    async def expired_leases(self, now: datetime, limit: int) -> list[Run]:
        """Running runs whose lease expired before ``now``, oldest expiry first."""

    @abc.abstractmethod
    async def delete_runs(self, job_id: str) -> int:
        """Delete the finished runs of a job (active ones stay); how many were deleted.
        :class:`JobNotFound` if there is no such job."""

    @abc.abstractmethod
    async def stats(self, since: Sequence[datetime], top: int = 5) -> StoreStats:
        """Jobs by status, active runs by status, and for each time in ``since`` the runs that ended since
        then (:class:`RunCounts`, ``top`` jobs each). Run outcomes are counted as they are written
        (finishes, recorded slots, cancellations), in totals per minute and per job per hour: deleting or
        pruning runs does not change the counts, and the cost depends on the minutes, jobs and statuses in
        the window, never on how many runs the history holds. Counts older than two days may be dropped."""

    async def replaced_by_later_slot(self, run: Run) -> bool:
        """Whether a later slot of the run's job has a run that was handed out (queued, ran or was
        cancelled; a ``missed``/``skipped`` record of a later slot ran nothing): under overlap
        ``replace`` that run replaced this one, which is then not retried."""
        later = await self.list_runs(run.job_id, since=run.scheduled_for + timedelta(microseconds=1),
                                     limit=1, trigger={Trigger.SCHEDULE, Trigger.CATCH_UP},
                                     status=set(RunStatus) - {RunStatus.MISSED, RunStatus.SKIPPED})
        return bool(later)

    @abc.abstractmethod
    async def prune_runs(self, now: datetime, max_age: timedelta | None, limit: int, *,
                         default_limit: int | None = None) -> int:
        """Delete up to ``limit`` finished runs that exceed their job's ``history_limit`` (oldest first;
        ``default_limit`` for a job that sets none, None: no limit) or finished longer than ``max_age``
        ago. Returns how many; call again while it returns
        ``limit``. Must not hold long locks. Delivered and failed notices older than
        ``hooks.NOTICE_RETENTION`` (by their last attempt) go too (not counted)."""


# ---------------------------------------------------------------------------------------- dispatch


class DispatchQueue(abc.ABC):
    """Carries runs from schedulers to workers.

    Delivery is at least once: a run may be delivered again (after a crash, a rebalance); workers make
    that harmless through ``Store.start_run``. ``ack`` tells the queue a dispatch is fully handled (its
    outcome recorded) and need not be delivered again. ``durable`` says whether queued dispatches survive
    the process: when False, the scheduler re-dispatches unstarted runs from the store at start-up.
    """

    durable: ClassVar[bool] = False

    async def start(self) -> None:
        """Connect. Idempotent."""

    async def stop(self) -> None:
        """Disconnect; a ``get`` waiting meanwhile raises ``asyncio.CancelledError``. Idempotent."""

    @abc.abstractmethod
    async def put(self, dispatches: Sequence[Dispatch]) -> None:
        """Send dispatches; runs of one job keep their order."""

    @abc.abstractmethod
    async def get(self) -> Dispatch:
        """The next dispatch, waiting for one."""

    @abc.abstractmethod
    async def ack(self, dispatch: Dispatch) -> None:
        """The dispatch is handled; it will not be delivered again."""

    async def nack(self, dispatch: Dispatch, reason: str) -> None:
        """The dispatch could not be handled (``reason`` says why): deliver it again later. A durable
        queue may count the tries and move it to a dead-letter place after too many. By default it is
        simply put back."""
        await self.put([dispatch])
        await self.ack(dispatch)

    async def depth(self) -> int | None:
        """How many dispatches wait, if the queue can tell cheaply."""
        return None

    async def sent_before(self, run_ids: Collection[str], before: datetime) -> set[str] | None:
        """Of these runs, those whose dispatch the queue handed to its backend before ``before`` and has
        not been given again since; None if it cannot tell. The scheduler dispatches again a run still
        queued long after it was sent (a broker that lost acknowledged messages), and asks this first
        so that a dispatch still waiting to be sent (the broker is down) is not doubled."""
        return None


# ------------------------------------------------------------------------------------------ events


class Subscription(Protocol):
    """An open subscription: iterate it for events; ``aclose`` ends it. Also an async context manager."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def __anext__(self) -> Event: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Subscription: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class EventBus(abc.ABC):
    """Publishes events to every subscriber, in publication order per job.

    ``publish`` assigns each event an ``id``; ids increase in publication order (per bus), so a subscriber
    that saw id X and subscribes again with ``after=X`` receives what followed, as far as the bus still
    retains it (a bounded window). A subscription is registered when ``subscribe`` returns: nothing
    published after that is missed. A subscriber that falls behind by more than its buffer is closed with
    :class:`SubscriptionOverflow` rather than silently losing events.

    ``thread_safe`` says whether ``publish`` and ``subscribe`` may be called from any thread and event
    loop, each subscription being fed on the loop it subscribed from (``chronos serve`` then runs its API
    on a loop of its own); when False, only from the loop that started the bus.
    """

    thread_safe: ClassVar[bool] = False

    async def start(self) -> None:
        """Connect. Idempotent."""

    async def stop(self) -> None:
        """Close every subscription and disconnect. Idempotent."""

    @abc.abstractmethod
    async def publish(self, events: Sequence[Event]) -> None:
        """Publish events (their ``id`` is set in place)."""

    @abc.abstractmethod
    def subscribe(
        self,
        *,
        job_id: str | None = None,
        run_id: str | None = None,
        types: Collection[EventType] | None = None,
        after: str | None = None,
    ) -> Subscription:
        """Events matching every given filter; with ``after``, first the retained events after that id."""

    def retains(self, after: str) -> bool | None:
        """Whether ``subscribe(after=after)`` can replay everything published after that id (it is still
        in the retained window). ``None``: the bus cannot tell. On ``False`` a consumer that must not
        miss anything (the SSE streams) falls back to the store's run history."""
        return None


# ---------------------------------------------------------------------------------------- executor


class LogSink(Protocol):
    """Where an executor sends output lines as they come: ``await log(line, stream)``."""

    def __call__(self, line: str, stream: str = "stdout") -> Awaitable[None]: ...


@dataclass(slots=True)
class ExecutionResult:
    """How an attempt ended. ``output`` is appended after the logged lines (e.g. a response body);
    ``result`` is a JSON value kept as the run's ``result`` (see ``chronos_core.models.RESULT_LIMIT``)."""

    ok: bool
    exit_code: int | None = None
    output: str = ""
    error: str | None = None
    retryable: bool = True
    result: Any = None


class Executor(abc.ABC):
    """Runs jobs of one type (``type_name``).

    ``execute`` streams output through ``log`` as it comes and returns the outcome. It raises
    :class:`~chronos_core.errors.ExecutionFailed` (with ``retryable``) for failures it can classify; any
    other exception counts as a retryable failure. The worker enforces the per-attempt timeout and
    cancellation by cancelling the task: on ``asyncio.CancelledError`` the executor must release what it
    holds (kill its process group, close its connection) before re-raising.
    """

    type_name: ClassVar[str]

    async def start(self) -> None:
        """Open shared resources (HTTP client pools, engines). Idempotent."""

    async def stop(self) -> None:
        """Close them. Idempotent."""

    def check_payload(self, payload: Mapping[str, Any]) -> list[FieldError]:
        """Why this executor, as configured, could never run a (valid) payload — e.g. it names a
        connection that is not configured — as field errors (``("payload", "connection")``); checked
        when a job is created or changed, so such a job is refused at once instead of failing at every
        slot. Called on the event loop: no I/O. None by default."""
        return []

    @abc.abstractmethod
    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult: ...


# ------------------------------------------------------------------------------------ notification


class NotifyChannel(abc.ABC):
    """Delivers notices of one channel (``channel``: ``webhook``, ``email``), the notice's ``target``
    naming where (``{"webhook": {...}}``) and its ``data`` what (``hooks.message_data``).

    ``deliver`` makes one attempt and says how it went; it does not retry (the notifier does, with
    backoff). A failure that trying again cannot fix (a refused address, a 4xx other than 408/429) is
    ``retryable=False``. It must give up within its own timeout, and never put a secret of the target
    (header values, the signing secret) in the error it returns.
    """

    channel: ClassVar[str]

    async def start(self) -> None:
        """Open shared resources. Idempotent."""

    async def stop(self) -> None:
        """Close them. Idempotent."""

    @abc.abstractmethod
    async def deliver(self, notice: Notice) -> Delivery: ...


# ------------------------------------------------------------------------------------------- clock


class Clock(abc.ABC):
    """Time, for the engines. ``now`` is an aware UTC datetime."""

    @abc.abstractmethod
    def now(self) -> datetime: ...

    @abc.abstractmethod
    async def sleep_until(self, deadline: datetime | None, wake: WakeSignal) -> None:
        """Return at ``deadline`` (never, if None) or as soon as ``wake`` is set, whichever is first."""


class WakeSignal(Protocol):
    def is_set(self) -> bool: ...

    async def wait(self) -> bool | None: ...
