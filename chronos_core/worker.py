"""The worker engine: takes dispatched runs, executes them under a lease and a timeout, streams their
output as ``run.log`` events, records the outcome and schedules the retry.

Every write is fenced: ``start_run`` only moves a queued run to running (a redelivered message for a
run that already started does nothing), and ``finish_run`` only applies while this worker still holds
the lease (a worker that lost its lease cannot overwrite the outcome recorded by whoever took over).
The fence holds inside one worker too: one handler per run id at a time (a second delivery of a run
being handled here is acked and dropped), and a handler goes ahead only if *its own* ``start_run``
applied (after a store error, the stored start time tells it from an earlier handler's).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from .errors import ExecutionFailed, JobNotFound, RunNotFound, StoreUnavailable
from .events import outcome_events, publish_best_effort, run_event, watch
from .hooks import notify_notices, outcome_hooks, run_facts
from .hookspec import NotifyEvent, NotifyRule
from .ids import new_id
from .models import (
    STORE_INT,
    Event,
    EventType,
    Job,
    MisfirePolicy,
    OverlapPolicy,
    Run,
    RunStatus,
    encode_result,
    evolve,
)
from .payloads import JobTypes
from .planning import is_late, late_start, plan_retry_unless_replaced
from .ports import Clock, Dispatch, DispatchQueue, EventBus, ExecutionResult, Executor, Store
from .secrets import secret_forms

__all__ = ["OutputTail", "Worker", "WorkerStats"]

log = logging.getLogger("chronos.worker")

T = TypeVar("T")


class OutputTail:
    """The last ``limit`` characters of a run's output, line by line; what came before is counted.
    ``lines`` counts every line added (the number of the last one); ``stored`` is the count the store
    last received (see ``Worker.flush_output``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lines: deque[str] = deque()
        self._size = 0
        self.dropped = 0
        self.lines = 0
        self.stored = 0

    def add(self, line: str) -> None:
        self.lines += 1
        if len(line) > self.limit:
            self.dropped += len(line) - self.limit
            line = line[-self.limit:]
        self._lines.append(line)
        self._size += len(line) + 1
        while self._size > self.limit and self._lines:
            gone = self._lines.popleft()
            self._size -= len(gone) + 1
            self.dropped += len(gone) + 1

    def text(self) -> str:
        body = "\n".join(self._lines)
        if self.dropped:
            return f"[... {self.dropped} earlier characters not kept]\n{body}"
        return body


class _Masker:
    def __init__(self, secrets: list[str]) -> None:
        self._secrets = secret_forms(secrets)  # each secret as is, URL-encoded, base64, hex...

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "***")
        return text

    def value(self, value: Any) -> Any:
        """A JSON value (a run result) with every string in it, keys too, masked."""
        if not self._secrets:
            return value
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {self(k): self.value(v) for k, v in value.items()}
        return value


async def _finished_within(task: asyncio.Task[ExecutionResult], seconds: float | None) -> bool:
    """Wait until ``task`` is done or ``seconds`` passed (None: no limit); whether it is done. Neither
    its outcome nor a cancellation of the waiter reaches the task: what ``asyncio.wait({task}, timeout)``
    does, without the set, the extra futures and the second callback it makes. A measured speed trick,
    kept to this one function: the worker waits once per run, and this saved ~8.6 µs of CPU per run
    over ``asyncio.wait`` (median of 15 interleaved rounds of 20,000 waits, range -0.9 to 30.6 µs, on a
    shared 2-core machine; a run costs ~130-250 µs there)."""
    if not task.done():
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def wake(_: object) -> None:
            if not waiter.done():
                waiter.set_result(None)

        task.add_done_callback(wake)
        timer = None if seconds is None else loop.call_later(seconds, wake, None)
        try:
            await waiter
        finally:
            task.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()
    return task.done()


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Mark a shared future's error as seen (its waiters may all have gone)."""
    if not fut.cancelled():
        fut.exception()


@dataclass(frozen=True, slots=True)
class _Stop:
    """Why a run's executor task was cancelled: its timeout, or a cancel request with its reason. The
    first cause wins (a request arriving after the timeout does not turn the timeout into a cancel)."""

    reason: str
    timeout: bool = False


@dataclass(slots=True)
class _InFlight:
    """Everything this worker knows about one run it is handling, from the delivery to the recorded
    outcome (one handler per run id; see :meth:`Worker.process`)."""

    job: Job
    run: Run  # as dispatched; once started here, as started
    held: bool = False  # started here, its outcome not recorded yet: its lease is renewed
    tail: OutputTail | None = None  # while executing: its output so far (stored every output_interval)
    task: asyncio.Task[ExecutionResult] | None = None  # while the executor runs
    stop: _Stop | None = None  # why ``task`` was cancelled


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How an execution ended, before it is recorded (``extra``: output to add to the tail; ``value``:
    the result, a JSON value masked, or None when too long, ``extra`` then saying so)."""

    status: RunStatus
    exit_code: int | None = None
    error: str | None = None
    retryable: bool = False
    extra: str = ""
    value: Any = None


@dataclass
class WorkerStats:
    started: int = 0
    finished: int = 0
    stale: int = 0
    duplicates: int = 0  # deliveries dropped because a handler here had the run already
    by_status: dict[str, int] = dataclasses.field(default_factory=dict)


class Worker:
    """Executes dispatched runs, at most ``concurrency`` at a time."""

    def __init__(self, store: Store, queue: DispatchQueue, bus: EventBus, clock: Clock,
                 executors: Mapping[str, Executor], *, job_types: JobTypes | None = None,
                 concurrency: int = 16, lease: float = 30.0, output_limit: int = 64 * 1024,
                 line_limit: int = 16 * 1024, owner: str | None = None,
                 store_retry_for: float = 300.0, output_interval: float = 1.0,
                 default_notify: Sequence[NotifyRule] = ()) -> None:
        self._store = store
        self._queue = queue
        self._bus = bus
        self._clock = clock
        self.executors = dict(executors)
        self._types = job_types or JobTypes()
        self.concurrency = concurrency
        self.lease = timedelta(seconds=lease)
        self.output_limit = output_limit
        self.line_limit = line_limit
        self.owner = owner or f"worker-{new_id()[-12:]}"
        self.store_retry_for = store_retry_for
        # how often the output so far of running runs goes to the store (every API instance reads it)
        self.output_interval = timedelta(seconds=output_interval)
        # notifications for jobs that set none (the service-wide default list)
        self.default_notify = tuple(default_notify)
        self.stats = WorkerStats()
        self._runs: dict[str, _InFlight] = {}  # the runs a handler here is handling, by run id
        # cancel requests for runs whose executor had not started yet (the run may not even have reached
        # this worker: every worker hears every request); applied when it starts, bounded
        self._early_cancels: OrderedDict[str, str] = OrderedDict()
        self._maskers: dict[tuple[str, datetime], _Masker] = {}
        # job id -> the latest start time of a run of it started here (the fire_once check of late runs)
        self._starts: dict[str, datetime] = {}
        # job id -> the summary's last start, for the late runs waiting for it (one store read for all)
        self._summary_wanted: dict[str, asyncio.Future[datetime | None]] = {}
        self._summary_reader: asyncio.Task[None] | None = None
        # job id -> done when the late fire_once run of it deciding now has started (or not): the next
        # late run of the job decides after it: late runs of one job taken together (a worker draining a
        # backlog with concurrency > 1) see each other's starts, so one of them runs
        self._late_deciding: dict[str, asyncio.Future[None]] = {}
        self._handlers: set[asyncio.Task[Run | None]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._background: list[asyncio.Task[None]] = []
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def active(self) -> int:
        """How many runs are executing here now."""
        return sum(1 for f in self._runs.values() if f.task is not None)

    def _executing(self) -> list[tuple[str, _InFlight]]:
        return [(run_id, f) for run_id, f in self._runs.items() if f.tail is not None]

    # lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start taking runs from the queue (in background tasks)."""
        if self._loop_task is not None:
            return
        ready = asyncio.Event()
        self._background = [
            asyncio.create_task(self._watch_cancels(ready), name="chronos-worker-cancels"),
            asyncio.create_task(self._heartbeat(), name="chronos-worker-heartbeat"),
            asyncio.create_task(self._output_loop(), name="chronos-worker-output"),
        ]
        await ready.wait()
        self._loop_task = asyncio.create_task(self._consume(), name="chronos-worker")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking runs; let running attempts finish for up to ``grace`` seconds, then cancel them
        (recorded as ``cancelled``)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._handlers:
            if running := self._executing():
                log.info("shutting down: waiting up to %gs for %d running run(s): %s", grace,
                         len(running), self._describe(running))
            _, pending = await asyncio.wait(set(self._handlers), timeout=grace)
            if running := self._executing():
                log.info("shutting down: cancelling %d run(s) still running after %gs: %s",
                         len(running), grace, self._describe(running))
            for run_id in [run_id for run_id, f in self._runs.items() if f.task is not None]:
                self.cancel(run_id, f"worker {self.owner} shut down before the run finished")
            if pending:  # executors clean up (kill their process group) and outcomes are recorded
                _, pending = await asyncio.wait(pending, timeout=max(grace, 10.0))
            for task in pending:  # e.g. still waiting for the store: stop waiting; leases cover it
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        if self._summary_reader is not None:
            self._summary_reader.cancel()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._background = []

    @staticmethod
    def _describe(running: list[tuple[str, _InFlight]], most: int = 20) -> str:
        items = [f"{f.job.name} (run {run_id})" for run_id, f in running[:most]]
        more = len(running) - len(items)
        return ", ".join(items) + (f" and {more} more" if more > 0 else "")

    def cancel(self, run_id: str, reason: str) -> bool:
        """Cancel a run this worker is executing; False if it holds no such run (yet: a request that
        arrives between the run's start and its executor's start is kept briefly and applied then)."""
        f = self._runs.get(run_id)
        if f is None or f.task is None:
            self._early_cancels[run_id] = reason
            while len(self._early_cancels) > 10_000:
                self._early_cancels.popitem(last=False)
            return False
        if f.task.done():
            return False
        self._stop(f, _Stop(reason))
        return True

    @staticmethod
    def _stop(f: _InFlight, stop: _Stop) -> None:
        """Cancel the run's executor task, recording why (the first cause is kept)."""
        assert f.task is not None
        if f.stop is None:
            f.stop = stop
        f.task.cancel()

    async def _consume(self) -> None:
        never = asyncio.Event()
        while True:
            await self._slots.acquire()
            try:
                dispatch = await self._queue.get()
            except Exception as exc:  # the queue's backend is down: keep consuming once it is back
                self._slots.release()
                log.error("taking a run from the queue failed, trying again in 1s: %s", exc)
                await self._clock.sleep_until(self._clock.now() + timedelta(seconds=1), never)
                continue
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self.process(dispatch))
            self._handlers.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Run | None]) -> None:
        self._handlers.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("run handler failed", exc_info=task.exception())

    async def _watch_cancels(self, ready: asyncio.Event) -> None:
        async def on_event(event: Event) -> None:
            if event.run_id:
                self.cancel(event.run_id, str(event.data.get("reason") or "cancelled"))

        await watch(self._bus, {EventType.RUN_CANCEL_REQUESTED}, on_event, ready, self._clock)

    async def _heartbeat(self) -> None:
        never = asyncio.Event()
        period = self.lease / 3
        ok = True
        while True:
            # after a failed renewal, try again soon: the lease must not run out while the store is back
            pause = period if ok else min(period, timedelta(seconds=1))
            await self._clock.sleep_until(self._clock.now() + pause, never)
            ok = await self.renew_leases()

    async def renew_leases(self) -> bool:
        """Extend the leases of the runs this worker holds (executing, or recording their outcome);
        cancel those it no longer holds. False if the store could not be reached."""
        ids = [run_id for run_id, f in self._runs.items() if f.held]
        if not ids:
            return True
        try:
            held = await self._store.renew_leases(ids, self.owner, self._clock.now() + self.lease)
        except Exception as exc:  # the store is down: keep running, try again soon
            log.warning("lease renewal failed: %s", exc)
            return False
        for run_id in ids:
            if run_id not in held:
                self.cancel(run_id, "the worker lost its lease on the run")
        # overlap replace: the newer slot's stop request is only an event (best-effort, and lost with a
        # claim whose answer was lost); the store says so too, so a replaced run does not run on beside
        # its replacement until it ends
        for run_id in held:
            f = self._runs.get(run_id)
            if f is not None and f.tail is not None and \
                    f.job.overlap is OverlapPolicy.REPLACE and await self._replaced(f.run):
                self.cancel(run_id, "replaced by a newer slot (overlap replace)")
        return True

    async def _output_loop(self) -> None:
        never = asyncio.Event()
        while True:
            await self._clock.sleep_until(self._clock.now() + self.output_interval, never)
            await self.flush_output()

    async def flush_output(self) -> None:
        """Store the output so far of the runs whose output grew since the last flush, so that any API
        instance shows it (``Store.record_output``: fenced by the lease, never backwards)."""
        grown = {run_id: f.tail for run_id, f in self._runs.items()
                 if f.tail is not None and f.tail.lines != f.tail.stored}
        if not grown:
            return
        snapshot = {run_id: (tail.text(), tail.lines) for run_id, tail in grown.items()}
        try:
            await self._store.record_output(snapshot, self.owner)
        except Exception as exc:  # the live view lags; the outcome still records the whole tail
            log.debug("storing the output so far failed: %s", exc)
            return
        for run_id, (_, lines) in snapshot.items():
            grown[run_id].stored = max(grown[run_id].stored, lines)

    # one run ----------------------------------------------------------------------------------------
    async def process(self, dispatch: Dispatch) -> Run | None:
        """Execute one dispatched run to its end; the finished run, or None if it was not runnable
        (already started elsewhere, finished or cancelled, or being handled here already) or the outcome
        could not be recorded."""
        run_id = dispatch.run.id
        if run_id in self._runs:
            # A second delivery (the outbox relay sent the row again, a redelivery after a rebalance)
            # while a handler here has the run: that handler starts it or finds it not runnable.
            log.info("run %s is being handled here already: dropping a second delivery of it", run_id)
            self.stats.duplicates += 1
            await self._queue.ack(dispatch)
            return None
        f = self._runs[run_id] = _InFlight(dispatch.job, dispatch.run)
        try:
            try:
                result = await self._process(f)
            except asyncio.CancelledError:
                raise  # not acked: a durable queue delivers it again; the store's lease rules hold
            except Exception as exc:
                # Not handled (the store stayed unavailable past the retry window, or a bug): hand it
                # back rather than lose it; a durable queue counts the tries and dead-letters it.
                log.error("run %s could not be handled, handing it back: %s", run_id, exc)
                await self._queue.nack(dispatch, f"{type(exc).__name__}: {exc}")
                return None
            await self._queue.ack(dispatch)
            return result
        finally:
            del self._runs[run_id]

    async def _process(self, f: _InFlight) -> Run | None:
        run, job = f.run, f.job
        now = self._clock.now()
        tried: list[datetime] = []  # the start time of each try: the token of this handler's start

        def start() -> Awaitable[bool]:
            nonlocal now  # each try starts (and leases) from its own time: an outage may be long
            now = self._clock.now()
            tried.append(now)
            return self._store.start_run(run.id, self.owner, now, now + self.lease)

        async def started_here(stored: Run) -> bool:
            # After a store error, the run running under this owner may be an earlier handler's start (a
            # delivery handled before, whose outcome could not be recorded): only a start time this
            # handler wrote says the start is its own. The try that applied set ``now``.
            nonlocal now
            if stored.started_at not in tried:
                return False
            now = stored.started_at
            return True

        deciding: asyncio.Future[None] | None = None
        try:
            if is_late(job, run, now):  # past its misfire grace: maybe recorded missed instead
                last = None
                if job.misfire is MisfirePolicy.FIRE_ONCE:
                    while (other := self._late_deciding.get(job.id)) is not None:
                        await asyncio.wait([other])
                    deciding = self._late_deciding[job.id] = asyncio.get_running_loop().create_future()
                    last = await self._last_started(job.id, run.due_at)
                if (late := late_start(job, run, now, last)) is not None:
                    self._decided(job.id, deciding)  # (a record changes no start: next one may go)
                    return await self._record_late(run, late)
            if not await self._persist(start, run.id, RunStatus.RUNNING, started_here):
                return None
            self._started_here(job.id, now)
        finally:
            self._decided(job.id, deciding)
        f.held = True
        f.run = evolve(run, status=RunStatus.RUNNING, started_at=now, owner=self.owner,
                       lease_expires_at=now + self.lease)
        try:
            return await self._run_started(f)
        finally:
            f.held = False
            f.tail = None
            self._early_cancels.pop(run.id, None)

    def _decided(self, job_id: str, deciding: asyncio.Future[None] | None) -> None:
        """The late fire_once run of the job deciding under ``deciding`` is done deciding (its start is
        confirmed or refused, or it is to be recorded missed): the next one of the job may check."""
        if deciding is not None and not deciding.done():
            deciding.set_result(None)
            if self._late_deciding.get(job_id) is deciding:
                del self._late_deciding[job_id]

    def _started_here(self, job_id: str, at: datetime) -> None:
        """Note that a run of the job started here at ``at`` (see :meth:`_last_started`)."""
        known = self._starts.get(job_id)
        if known is None or at > known:
            if known is None and len(self._starts) >= 100_000:
                self._starts.clear()  # (a bound; what is forgotten is read from the store again)
            self._starts[job_id] = at

    async def _last_started(self, job_id: str, due_at: datetime) -> datetime | None:
        """For the ``fire_once`` check of a late run due at ``due_at``: when a run of the job started last,
        as far as it matters — whether one started at or after ``due_at``. A run this worker started
        answers it without the store (a worker that falls behind takes one late run of each of its jobs
        after the other, and each would cost a read); else the job's summary (its last finished attempt's
        start, by any worker), read for all the late runs that ask at once in one call
        (:meth:`_read_summaries`), an outage waited out as for the start."""
        known = self._starts.get(job_id)
        if known is not None and known >= due_at:
            return known
        waiting = self._summary_wanted.get(job_id)
        if waiting is None:
            waiting = self._summary_wanted[job_id] = asyncio.get_running_loop().create_future()
            waiting.add_done_callback(_retrieved)
        # (whether or not the request was there already: a reader cancelled by stop() leaves the
        # requests made during its last read waiting, and a worker started again must serve them)
        if self._summary_reader is None or self._summary_reader.done():
            self._summary_reader = asyncio.create_task(self._read_summaries(),
                                                       name="chronos-worker-summaries")
        stored = await asyncio.shield(waiting)  # (one caller's cancellation is not the others')
        known = self._starts.get(job_id)  # (a start here meanwhile)
        if known is None or (stored is not None and stored > known):
            return stored
        return known

    async def _read_summaries(self) -> None:
        """Read the summaries the late runs waiting in :meth:`_last_started` want, in one store call per
        round; requests made while a round's read is under way wait for the next round."""
        await asyncio.sleep(0)  # the handlers taken together reach their check before the read starts
        while self._summary_wanted:
            wanted, self._summary_wanted = self._summary_wanted, {}
            ids = list(wanted)
            try:
                found = await self._retrying(functools.partial(self._store.job_summaries, ids))
            except BaseException as exc:
                for fut in wanted.values():
                    if not fut.done():
                        if isinstance(exc, Exception):
                            fut.set_exception(exc)
                        else:
                            fut.cancel()
                if not isinstance(exc, Exception):
                    raise
                continue
            for job_id, fut in wanted.items():
                summary = found.get(job_id)
                if not fut.done():
                    fut.set_result(None if summary is None else summary.last_run_started_at)

    async def _record_late(self, run: Run, reason: str) -> Run | None:
        """A slot that waited in the queue past its misfire grace: recorded missed (if still queued)."""
        now = self._clock.now()

        async def mine(stored: Run) -> bool:  # after a store error: this record, not another write
            return stored.finished_at == now and (stored.error or "")[:200] == reason[:200]

        if not await self._persist(
                lambda: self._store.cancel_queued_run(run.id, now, reason, status=RunStatus.MISSED),
                run.id, RunStatus.MISSED, mine, owned=False):
            return None  # started elsewhere, finished or cancelled meanwhile
        missed = evolve(run, status=RunStatus.MISSED, finished_at=now, error=reason)
        self.stats.by_status["missed"] = self.stats.by_status.get("missed", 0) + 1
        await self._publish([run_event(missed, now)], run.id)
        return missed

    async def _run_started(self, f: _InFlight) -> Run | None:
        job, run = f.job, f.run
        self.stats.started += 1
        assert run.started_at is not None
        await self._publish([run_event(run, run.started_at)], run.id)  # the run goes ahead regardless
        tail = f.tail = OutputTail(self.output_limit)
        alert = self._watch_running_long(job, run)
        try:
            outcome = await self._execute(f, tail)
        finally:
            f.tail = None
            if alert is not None:
                alert.cancel()
        status, exit_code, error, value = outcome.status, outcome.exit_code, outcome.error, outcome.value
        if exit_code is not None and not STORE_INT[0] <= exit_code <= STORE_INT[1]:
            # an executor's code (a python job's ExecutionFailed(exit_code=2**40)): a store's INT column
            # cannot hold it, and the finish would fail as a store error (review-secfix F2)
            note = f"exit code {exit_code} not recorded: outside the 32-bit range a store holds"
            exit_code = None
            if status is RunStatus.SUCCEEDED:
                tail.add(note)
            else:
                error = f"{error}; {note}" if error else note
        if outcome.extra:
            for line in outcome.extra.splitlines():
                tail.add(line)
        end = self._clock.now()
        retry = None
        if status in (RunStatus.FAILED, RunStatus.TIMED_OUT):
            if outcome.retryable:
                # (replaced: the stop request never reached this worker; it stays replaced)
                retry, not_retried = await plan_retry_unless_replaced(job, run, end, self._replaced)
                if not_retried is not None:
                    error = f"{error}; {not_retried}"
                elif retry is None and job.retry.max_attempts > 1:
                    error = f"{error}; no retry left (attempt {run.attempt} of {job.retry.max_attempts})"
            elif run.attempt < job.retry.max_attempts and "not retried" not in (error or ""):
                error = f"{error}; not retried: the failure is permanent"
        finished = evolve(run, status=status, finished_at=end, exit_code=exit_code,
                          output=tail.text(), error=error, output_lines=tail.lines, result=value)

        async def mine(stored: Run) -> bool:
            # After a store error this outcome may have applied, or the reaper's finish (same owner, same
            # status possibly) may have: only ours carries this end time and error, and this retry.
            if stored.finished_at != end or stored.exit_code != exit_code or \
                    (stored.error or "")[:200] != (error or "")[:200]:
                return False
            if retry is not None:
                try:
                    await self._store.get_run(retry.id)
                except RunNotFound:
                    return False
            return True

        ok = await self._persist(lambda: self._store.finish_run(
            run.id, self.owner, status=status, finished_at=end, exit_code=exit_code,
            output=finished.output, error=error, retry=retry, output_lines=tail.lines, result=value,
            hooks=outcome_hooks(job, self.default_notify, status, retry is None)), run.id, status, mine)
        if not ok:
            self.stats.stale += 1
            if await self._job_deleted(job):
                log.info("run %s of job %s: the job was deleted while the run was going; its outcome "
                         "(%s) is not recorded", run.id, job.name, status.value)
            else:
                log.warning("run %s of job %s: outcome %s not recorded, the lease was taken over",
                            run.id, job.name, status.value)
            return None
        log.info("job %s: run %s %s in %.3gs%s%s", job.name, run.id, status.value,
                 (end - (run.started_at or end)).total_seconds(),
                 f" (attempt {run.attempt})" if run.attempt > 1 else "",
                 f": {error[:300]}" if error and status is not RunStatus.SUCCEEDED else "")
        self.stats.finished += 1
        self.stats.by_status[status.value] = self.stats.by_status.get(status.value, 0) + 1
        # recorded: a bus error must not hand the dispatch back
        await self._publish(outcome_events(finished, retry, end), run.id)
        return finished

    async def _replaced(self, run: Run) -> bool:
        try:
            return await self._store.replaced_by_later_slot(run)
        except Exception as exc:  # cannot tell: keep the retry (a run too many, rather than one lost)
            log.warning("run %s: cannot tell whether a newer slot replaced it (%s); retrying it", run.id, exc)
            return False

    def _watch_running_long(self, job: Job, run: Run) -> asyncio.Task[None] | None:
        """With the job's ``alert_after``: a timer that, if the attempt is still going then, writes its
        ``running_long`` notifications (once: their key is the run's; the run goes on)."""
        rules = job.notify or self.default_notify
        if job.alert_after is None or not any(NotifyEvent.RUNNING_LONG in r.on for r in rules):
            return None
        assert run.started_at is not None
        deadline = run.started_at + timedelta(seconds=job.alert_after)

        async def alert() -> None:
            await self._clock.sleep_until(deadline, asyncio.Event())
            now = self._clock.now()
            facts = run_facts(run.id, RunStatus.RUNNING, run.attempt, run.trigger.value, run.scheduled_for,
                              run.started_at, None, None, None, "")
            notices = notify_notices(rules, NotifyEvent.RUNNING_LONG, key=run.id, job_id=job.id,
                                     job_name=job.name, run=facts, now=now, new_id=new_id)
            for n in notices:
                n.data["reason"] = (f"still running after {job.alert_after:g}s (alert_after); it goes on "
                                    f"{'until its timeout' if job.timeout else 'until it ends'}")
            for pause in (1, 2, 5, 10, 30):  # the store may be away for a moment
                try:
                    await self._store.add_notices(notices)
                    log.warning("job %s: run %s still running after %gs", job.name, run.id, job.alert_after)
                    return
                except StoreUnavailable as exc:
                    log.warning("run %s: the running_long notice could not be written (%s)", run.id, exc)
                    await self._clock.sleep_until(self._clock.now() + timedelta(seconds=pause),
                                                  asyncio.Event())

        return asyncio.create_task(alert(), name=f"chronos-alert-{run.id}")

    async def _publish(self, events: list[Event], run_id: str) -> None:
        await publish_best_effort(self._bus, events, log, f"run {run_id}")

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """A store read, tried again while the store is unavailable (as :meth:`_persist`): a run must not
        be handed back at once for an outage (an in-process queue gives it straight back; Kafka
        dead-letters it after a few tries)."""
        never = asyncio.Event()
        deadline = self._clock.now() + timedelta(seconds=self.store_retry_for)
        pause = 0.1
        while True:
            try:
                return await call()
            except StoreUnavailable as exc:
                if self._clock.now() >= deadline:
                    raise
                log.warning("store unavailable, trying again in %.1fs: %s", pause, exc)
            await self._clock.sleep_until(self._clock.now() + timedelta(seconds=pause), never)
            pause = min(pause * 2, 5.0)

    async def _persist(self, write: Callable[[], Awaitable[bool]], run_id: str, status: RunStatus,
                       mine: Callable[[Run], Awaitable[bool]] | None = None, *, owned: bool = True) -> bool:
        """A fenced store write, tried again while the store is unavailable (for up to
        ``store_retry_for`` seconds): a database restart must not lose a run's start or outcome.

        The write is a compare-and-set, so trying it again is safe; but a first try may have been
        applied before the connection broke, making the next one report False. So after a failure a
        False is checked against the stored run: if it shows this worker's write (its status and owner,
        and what ``mine`` checks: the reaper finishes a run under the same owner), the write applied.
        ``owned=False``: a write that leaves no owner (a late slot recorded missed): ``mine`` alone says."""
        try:  # the common case first, without the retry loop's state
            return await write()
        except StoreUnavailable as exc:
            error = exc
        never = asyncio.Event()
        deadline = self._clock.now() + timedelta(seconds=self.store_retry_for)
        pause = 0.1
        while True:
            if self._clock.now() >= deadline:
                raise error
            log.warning("store unavailable, trying again in %.1fs: %s", pause, error)
            await self._clock.sleep_until(self._clock.now() + timedelta(seconds=pause), never)
            pause = min(pause * 2, 5.0)
            try:
                if await write():
                    return True
                stored = await self._store.get_run(run_id)
                return stored.status is status and (not owned or stored.owner == self.owner) and (
                    mine is None or await mine(stored))
            except StoreUnavailable as exc:
                error = exc

    async def _job_deleted(self, job: Job) -> bool:
        try:
            await self._store.get_job(job.id)
        except JobNotFound:
            return True
        except Exception:  # the store is down: say nothing more than that the outcome was not recorded
            return False
        return False

    def _masker(self, job: Job) -> _Masker:
        """The job's secret masker, kept per job version (validating the payload for it is costly)."""
        key = (job.id, job.updated_at)
        mask = self._maskers.get(key)
        if mask is None:
            if len(self._maskers) >= 100_000:
                self._maskers.clear()
            mask = self._maskers[key] = _Masker(self._types.secrets(job.type, job.payload))
        return mask

    async def _execute(self, f: _InFlight, tail: OutputTail) -> _Outcome:
        """Run the executor under the timeout, its output going to ``tail``."""
        job, run = f.job, f.run
        executor = self.executors.get(job.type)
        if executor is None:
            return _Outcome(RunStatus.FAILED, error=f"no executor for job type {job.type!r} on worker "
                            f"{self.owner}")
        mask = self._masker(job)
        limit = self.line_limit
        lost = 0  # run.log events the bus refused: the line is still kept in the tail

        async def emit(line: str, stream: str = "stdout") -> None:
            nonlocal lost
            text = mask(line.rstrip("\r\n"))  # masked whole, then cut: no secret is split by a cut
            events = []
            # one numbered line per event, as stored: a text with newlines inside is several lines, and a
            # line longer than the limit goes in pieces of the limit
            for part in text.split("\n") if "\n" in text else (text,):
                for piece in (part[i:i + limit] for i in range(0, len(part), limit)) if part else ("",):
                    tail.add(piece)
                    events.append(Event(type=EventType.RUN_LOG, time=self._clock.now(), job_id=run.job_id,
                                        run_id=run.id, data={"line": piece, "stream": stream,
                                                             "attempt": run.attempt, "seq": tail.lines}))
            try:
                await self._bus.publish(events)
            except Exception as exc:  # the live view misses a line; the run must not fail for it
                lost += 1
                if lost == 1:
                    log.warning("run %s: publishing its output failed (%s: %s); the stored output keeps "
                                "it", run.id, type(exc).__name__, exc)

        task = f.task = asyncio.create_task(executor.execute(job, run, emit))
        early = self._early_cancels.pop(run.id, None)
        if early is not None:
            self.cancel(run.id, early)
        try:
            if not await _finished_within(task, job.timeout):
                self._stop(f, _Stop(f"timed out after {job.timeout:g}s", timeout=True))
                with contextlib.suppress(BaseException):
                    await task
            if f.stop is not None and f.stop.timeout:
                return _Outcome(RunStatus.TIMED_OUT, error=f.stop.reason, retryable=True)
            if task.cancelled():
                return _Outcome(RunStatus.CANCELLED, error=(f.stop.reason if f.stop else "") or "cancelled")
            try:
                result = task.result()
            except ExecutionFailed as exc:
                return _Outcome(RunStatus.FAILED, exc.exit_code, mask(str(exc)), exc.retryable)
            except Exception as exc:
                return _Outcome(RunStatus.FAILED, error=mask(f"{type(exc).__name__}: {exc}"), retryable=True)
            status = RunStatus.SUCCEEDED if result.ok else RunStatus.FAILED
            error = None if result.ok else mask(result.error or f"exit code {result.exit_code}")
            text, note = encode_result(result.result)
            extra = mask(result.output) if not note else "\n".join(filter(None, (mask(result.output), note)))
            value = None if text is None else mask.value(json.loads(text))  # plain JSON, as stored
            return _Outcome(status, result.exit_code, error, result.retryable, extra, value)
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        finally:
            f.task = None
            f.stop = None
