"""The scheduler engine: fires due slots, dispatches due retries, and reaps runs whose worker died.

It sleeps until the store's next due time (woken early when a job is created, changed or resumed, or a
retry is scheduled), then claims due jobs in batches. The store does the claim atomically; the rules of
what fires come from :func:`~chronos_core.planning.plan_due_job`. Any number of schedulers can share one
store: the claim and the unique (job, slot, attempt) key keep every slot to one first attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import BackendUnavailable, ChronosError, JobNotFound
from .events import cancel_request, outcome_events, publish_best_effort, run_event, watch
from .hooks import outcome_hooks, record_notices
from .hookspec import NotifyRule
from .models import Event, EventType, Job, Run, RunStatus
from .planning import Limits, plan_due_job, plan_refused, plan_retry_unless_replaced, plan_unplannable
from .ports import Clock, Dispatch, DispatchQueue, EventBus, SlotPlan, Store

__all__ = ["Scheduler", "SchedulerStats"]

log = logging.getLogger("chronos.scheduler")

_REAP_EVERY = timedelta(seconds=1)
_MAX_PAUSE = timedelta(milliseconds=50)

_WAKE_ON = frozenset({EventType.JOB_CREATED, EventType.JOB_UPDATED, EventType.JOB_RESUMED,
                      EventType.RUN_RETRY_SCHEDULED})


@dataclass
class SchedulerStats:
    ticks: int = 0
    fired: int = 0
    recorded: int = 0
    duplicates: int = 0
    retries_dispatched: int = 0
    reaped: int = 0
    redispatched: int = 0
    pruned: int = 0
    last_lag: float = 0.0


class Scheduler:
    """Fires due work. ``tick()`` does one round at ``clock.now()``; ``run()`` loops until stopped."""

    def __init__(self, store: Store, queue: DispatchQueue, bus: EventBus, clock: Clock, *,
                 batch_size: int = 1000, max_sleep: float = 5.0, limits: Limits | None = None,
                 publish_queued: bool = True, history_max_age: float | None = None,
                 history_max_runs: int | None = None,
                 prune_interval: float = 60.0, min_interval: float = 0.005,
                 reap_grace: float = 10.0, max_queued: int | None = None,
                 refuse: Callable[[Job], str | None] | None = None,
                 redispatch_after: float | None = 120.0,
                 default_notify: Sequence[NotifyRule] = ()) -> None:
        self._store = store
        self._queue = queue
        self._bus = bus
        self._clock = clock
        self.batch_size = batch_size
        # The next claim's size (see _fire): a tenth of a batch after an idle tick or a batch that left
        # runs waiting for their jitter, doubling with each batch that did not, up to batch_size.
        self._claim_size = self._small_claim
        self.max_sleep = max_sleep
        self.limits = limits or Limits()
        self.publish_queued = publish_queued
        self.history_max_age = None if history_max_age is None else timedelta(seconds=history_max_age)
        self.history_max_runs = history_max_runs  # per job that sets no history_limit (None: no limit)
        self.prune_interval = timedelta(seconds=prune_interval)
        self.min_interval = timedelta(seconds=min_interval)
        self.reap_grace = timedelta(seconds=reap_grace)
        # Backpressure: claim no more while this many dispatches wait in the queue (for queues that can
        # tell their depth). Slots not claimed stay due in the store, and one reached later than its
        # misfire grace is recorded as missed, instead of piling up runs that start ever later.
        self.max_queued = max_queued
        self._held_back = False
        self._next_prune: datetime | None = None
        self._next_reap: datetime | None = None
        self._reap_hold_until: datetime | None = None
        self._unsure = False  # a tick failed on the store: see _settle_unsure
        self.stats = SchedulerStats()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._planner = self._plan
        # A run still queued this long after its dispatch was sent was lost by the queue's backend (a
        # broker restarted without its data): dispatch it again (a durable queue only; None: never).
        self.redispatch_after = None if redispatch_after is None else timedelta(seconds=redispatch_after)
        self._next_redispatch: datetime | None = None
        # run id -> (how often, when last) this scheduler dispatched it again: the n-th time waits
        # redispatch_after x 2^n, so a run that stays queued is not sent again and again
        self._redispatched: dict[str, tuple[int, datetime]] = {}
        # why a job's slots cannot run here (e.g. shell jobs while shell is off): they are recorded
        # skipped with that reason instead of being dispatched to fail
        self.refuse = refuse
        self.default_notify = tuple(default_notify)  # for jobs without notify (the service's default)

    def wake(self) -> None:
        """Look for due work now rather than at the planned time."""
        self._wake.set()

    async def start(self) -> None:
        """Recover (see :meth:`recover`) and start the loop in a background task."""
        if self._task is None:
            await self.recover()
            self._stopping = False
            self._task = asyncio.create_task(self.run(), name="chronos-scheduler")

    async def stop(self) -> None:
        """Finish the current tick and stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def recover(self) -> int:
        """With a queue that does not survive the process, runs queued by a previous process are lost
        from it: hand them out again (starting them twice is prevented by the store)."""
        if self._queue.durable:
            return 0
        released = await self._store.release_undispatched()
        if released:
            log.info("dispatching again %d runs queued by a previous process", released)
        return released

    def _plan(self, job: Job, active: Sequence[str], now: datetime) -> SlotPlan:
        """The planner, guarded: one job that cannot be planned must not stall every other job. Its
        slot is recorded as missed with the reason and it gets no further slot until it is changed."""
        try:
            plan = plan_due_job(job, active, now, self.limits)
            reason = self.refuse(job) if self.refuse is not None else None
            if reason is not None:
                plan = plan_refused(plan, reason, now)
            rules = job.notify or self.default_notify
            if rules:
                plan.notices = record_notices(rules, job.id, job.name, plan.runs, now)
            return plan
        except Exception as exc:
            log.exception("cannot plan job %s", job.id)
            return plan_unplannable(job, now, exc)

    async def _room(self) -> int | None:
        """How many more dispatches the queue may take now (None: no bound)."""
        if self.max_queued is None:
            return None
        depth = await self._queue.depth()
        return None if depth is None else max(0, self.max_queued - depth)

    async def tick(self) -> datetime | None:
        """Fire what is due now (as far as ``max_queued`` lets it; on a store whose claim holds the loop
        the claiming may end after a batch that left jittered runs waiting, see ``_fire``: the next due
        time returned is then already due), dispatch due retries, reap and prune; return the next due
        time (None: nothing scheduled).

        The phases are independent: one that fails for another reason than an unreachable store or
        queue (:class:`BackendUnavailable`, raised at once) is logged and the others still run, so e.g. a
        run that cannot be handed out never stops reaping or pruning."""
        now = self._clock.now()
        self.stats.ticks += 1
        if self._unsure:
            await self._settle_unsure()
        room = await self._room()
        # Due retries and recovered runs first, up to a fair share (half the room, or one batch when the
        # queue is not bounded): new slots must not take all the room while they wait ever longer. Then
        # the slots, then the due runs again with whatever room the slots left.
        share = self.batch_size if room is None else (room + 1) // 2
        left = await self._phase("dispatching due runs", self._dispatch_due(now, share), share)
        if room is not None and left is not None:
            room -= share - left
        room = await self._phase("firing due slots", self._fire(now, room), room)
        if self.redispatch_after is not None and (self._next_redispatch is None
                                                  or now >= self._next_redispatch):
            self._next_redispatch = now + max(self.redispatch_after / 4, _REAP_EVERY)
            await self._phase("dispatching lost runs again", self.redispatch_lost(now), 0)
        room = await self._phase("dispatching due runs", self._dispatch_due(now, room), room)
        self._held_back = room is not None and room <= 0
        held = self._reap_hold_until is not None and now < self._reap_hold_until
        if not held and (self._next_reap is None or now >= self._next_reap):  # once a second is enough
            self._next_reap = now + _REAP_EVERY
            await self._phase("reaping", self.reap(now), 0)
        if self._next_prune is None or now >= self._next_prune:
            self._next_prune = now + self.prune_interval
            await self._phase("pruning", self.prune(now), 0)
        return await self._store.next_due_time()

    async def _phase(self, what: str, work: Awaitable[int | None], fallback: int | None) -> int | None:
        """Await one phase of a tick; a failure other than an unreachable backend is logged, and the tick
        goes on with ``fallback``."""
        try:
            return await work
        except BackendUnavailable:  # the store, or the queue's broker
            self._unsure = True  # a claim may have applied although its answer was lost
            raise
        except Exception:
            log.exception("scheduler: %s failed; the tick goes on", what)
            return fallback

    async def _settle_unsure(self) -> None:
        """After a store error in a tick, a claim may have committed although its answer was lost (the
        connection broke after the commit): its runs are marked handed out, yet nothing was put. A durable
        queue covers that (the outbox row is written in the claim's transaction; :meth:`redispatch_lost`
        looks again later); with an in-process queue, the queued runs it does not hold are handed out
        again (one a worker took meanwhile is refused by ``start_run`` or dropped as a second delivery)."""
        if not self._queue.durable:
            queued: list[str] = []
            cursor: str | None = None
            while True:
                page = await self._store.list_runs(status=[RunStatus.QUEUED], before=cursor,
                                                   limit=self.batch_size)
                queued.extend(r.id for r in page)
                if len(page) < self.batch_size:
                    break
                cursor = page[-1].id
            outside = await self._queue.sent_before(queued, self._clock.now()) if queued else set()
            ids = queued if outside is None else [r for r in queued if r in outside]
            released = await self._store.release_undispatched(ids) if ids else 0
            if released:
                log.warning("dispatching again %d queued run(s) the queue does not hold (a claim's answer "
                            "was lost with the store connection)", released)
        self._unsure = False

    async def _batches(self, room: int | None, batch: Callable[[int], Awaitable[tuple[int, bool]]]
                       ) -> int | None:
        """Backpressure: call ``batch(limit)`` (claim up to ``limit``, dispatch; it returns how many it
        dispatched and whether to claim on: a full batch came back) while the queue has room (None:
        unbounded) and the batch says so; the room left."""
        while room is None or room > 0:
            limit = self.batch_size if room is None else min(self.batch_size, room)
            dispatched, more = await batch(limit)
            if room is not None:
                room -= dispatched
            if not more:
                break
        return room

    @property
    def _small_claim(self) -> int:
        return max(1, self.batch_size // 10)

    async def _fire(self, now: datetime, room: int | None) -> int | None:
        """Claim due jobs in batches; the room left in the queue.

        A batch's size follows what the claims before found (slow start): a tenth of ``batch_size``
        after a claim that found nothing or left runs waiting for their jitter while no unclaimed job
        was due yet (``Claim.next_due``), twice the last claim's jobs otherwise (up to ``batch_size``).
        A jittered run that comes due while a batch is claimed
        waits for that claim to end (on SQLite a cold batch of 1,000 takes 0.1-0.4 s): the burst's first
        batch, and every batch claimed while jittered runs are due one after the other, stays small, so
        its claim is short. An unjittered burst grows to full batches after a few claims."""

        async def batch(limit: int) -> tuple[int, bool]:
            limit = min(limit, self._claim_size)
            claim = await self._store.claim_due(now, limit, self._planner)
            # Runs left waiting for their jitter: the next claim stays small (and, on a store whose claim
            # holds the loop, the tick ends) unless a job left unclaimed is due already: one of a later
            # instant may come due before the jittered jobs of an earlier one it is claimed after.
            hold = bool(claim.waiting) and (claim.next_due is None or claim.next_due > self._clock.now())
            self._claim_size = (self._small_claim if hold
                                else min(self.batch_size, max(self._small_claim, 2 * claim.jobs)))
            self.stats.fired += len(claim.dispatch)
            self.stats.recorded += len(claim.recorded)
            self.stats.duplicates += claim.duplicates
            # events first: a worker must not report a run started before it was reported queued
            events: list[Event] = [run_event(r, now) for r in claim.recorded]
            if self.publish_queued:
                events.extend(run_event(d.run, now) for d in claim.dispatch)
            events.extend(run_event(r, now) for r in claim.cancelled)  # replaced before they started
            events.extend(cancel_request(run_id, now, "replaced by a newer slot (overlap replace)")
                          for run_id in claim.cancel)
            await self._publish(events)
            if claim.dispatch:
                self.stats.last_lag = (self._clock.now() - claim.dispatch[-1].run.scheduled_for
                                       ).total_seconds()
                await self._dispatch(claim.dispatch)
            handed = len(claim.dispatch)
            more = claim.jobs == limit
            if more and handed < limit:
                # More to claim: first hand out the queued runs due meanwhile (the jittered slots of the
                # batches before), or a burst of 10,000 jittered jobs starts the earliest ones only once
                # the last batch is claimed.
                handed = limit - (await self._dispatch_due(self._clock.now(), limit - handed) or 0)
                if hold and self._store.claim_holds_loop:
                    # A claim that holds the loop keeps the workers from starting what was just handed
                    # out: end the tick here, and claim the rest in the next one (due at once). No job
                    # left unclaimed is due yet (claim.next_due), so none waits for that.
                    more = False
            return handed, more

        return await self._batches(room, batch)

    async def _dispatch_due(self, now: datetime, room: int | None) -> int | None:
        """Hand out queued runs whose time has come (retries, released runs); the room left."""

        async def batch(limit: int) -> tuple[int, bool]:
            due = await self._store.claim_due_runs(now, limit)
            if due:
                self.stats.retries_dispatched += len(due)
                if self.publish_queued:
                    await self._publish([run_event(d.run, now) for d in due])
                await self._dispatch(due)
            return len(due), len(due) == limit

        return await self._batches(room, batch)

    async def redispatch_lost(self, now: datetime, pages: int = 100) -> int:
        """Dispatch again the runs still queued ``redispatch_after`` after their dispatch was sent and
        after the workers acknowledged everything sent until then: the queue's backend lost them (a
        broker restarted without its data acknowledged them, then forgot them). They are released
        (:meth:`Store.release_undispatched`), and the due-runs phase hands them out again; a copy that
        does arrive after all is refused by ``start_run``. The queue tells which
        (:meth:`DispatchQueue.sent_before`): not a dispatch still waiting to be sent (the broker is
        down), nor one in a backlog the workers have not reached yet (a backlog is not a loss). A run
        dispatched again that stays queued is dispatched again after ``redispatch_after`` x 2, x 4...
        (up to x 64). With a queue that cannot tell (None), every run queued that long qualifies. How
        many runs were dispatched again."""
        if self.redispatch_after is None or not self._queue.durable:
            return 0  # an in-process queue loses nothing while the process lives (recover() after)
        before = now - self.redispatch_after
        candidates: list[Run] = []
        cursor: str | None = None
        for _ in range(pages):  # newest first; a slot scheduled after ``before`` cannot qualify
            page = await self._store.list_runs(status=[RunStatus.QUEUED], until=before, before=cursor,
                                               limit=self.batch_size)
            candidates.extend(r for r in page if max(r.created_at, r.due_at) < before)
            if len(page) < self.batch_size:
                break
            cursor = page[-1].id
        queued = {r.id for r in candidates}
        for run_id in [r for r in self._redispatched if r not in queued]:  # started, or gone
            del self._redispatched[run_id]

        def due(run: Run) -> bool:
            n, when = self._redispatched.get(run.id, (0, None))
            return when is None or now - when >= self.redispatch_after * 2 ** min(n, 6)
        candidates = [r for r in candidates if due(r)]
        if not candidates:
            return 0
        sent = await self._queue.sent_before([r.id for r in candidates], before)
        lost = [r for r in candidates if sent is None or r.id in sent]
        if not lost:
            return 0
        released = await self._store.release_undispatched([r.id for r in lost])
        for r in lost:
            self._redispatched[r.id] = (self._redispatched.get(r.id, (0, now))[0] + 1, now)
        if released:
            self.stats.redispatched += released
            oldest = min(max(r.created_at, r.due_at) for r in lost)
            log.warning("dispatching %d run(s) again: still queued %.0fs or more after they were sent "
                        "(the oldest since %s); the queue's broker may have lost them (restarted without "
                        "its data?)", released, self.redispatch_after.total_seconds(), oldest.isoformat())
        return released

    def _hold_reaping(self) -> None:
        """After losing the store, reap nothing until ``reap_grace`` after it answers again: workers cut
        off just as long could not renew their leases, and must get the chance to before they are
        declared dead."""
        self._reap_hold_until = self._clock.now() + self.reap_grace

    async def _publish(self, events: list[Event]) -> None:
        """Events describe what the store already holds; a bus outage must not stop the dispatch."""
        await publish_best_effort(self._bus, events, log)

    async def _dispatch(self, dispatches: list[Dispatch]) -> None:
        """Hand claimed runs to the queue. If that fails they are committed but in nobody's hands:
        mark them undispatched again, so the next tick hands them out once the queue is back."""
        try:
            await self._queue.put(dispatches)
        except BaseException:
            ids = [d.run.id for d in dispatches]
            try:
                await self._store.release_undispatched(ids)
            except Exception as exc:  # pragma: no cover - store and queue down at once
                log.error("cannot release %d undispatched runs: %s (they are handed out again at "
                          "the next start)", len(ids), exc)
            raise

    async def prune(self, now: datetime) -> int:
        """Enforce history retention (per-job ``history_limit``, global ``history_max_age``) in small
        batches, so no write lock is held for long."""
        total = 0
        for _ in range(100):
            n = await self._store.prune_runs(now, self.history_max_age, self.batch_size,
                                             default_limit=self.history_max_runs)
            total += n
            if n < self.batch_size:
                break
            await asyncio.sleep(0)
        self.stats.pruned += total
        return total

    async def reap(self, now: datetime) -> int:
        """Fail the runs whose worker stopped renewing its lease, and schedule their retries."""
        # A grace beyond the lease: a worker that was cut off from the store as long as the lease
        # lasted gets a moment to renew (or record its outcome) once the store is back.
        expired = await self._store.expired_leases(now - self.reap_grace, self.batch_size)
        events: list[Event] = []
        for run in expired:
            try:
                job = await self._store.get_job(run.job_id)
            except JobNotFound:
                continue
            error = f"worker {run.owner} stopped renewing its lease (lost or killed)"
            # (replaced: its worker died before it could stop it; it stays replaced)
            retry, not_retried = await plan_retry_unless_replaced(job, run, now,
                                                                  self._store.replaced_by_later_slot)
            if not_retried is not None:
                error += f"; {not_retried}"
            # fenced on the lease expiry read: a renewal landing in between means the worker is alive
            if await self._store.finish_run(run.id, run.owner, status=RunStatus.FAILED, finished_at=now,
                                            output=run.output, error=error, retry=retry,
                                            lease_expires_at=run.lease_expires_at,
                                            output_lines=run.output_lines,
                                            hooks=outcome_hooks(job, self.default_notify, RunStatus.FAILED,
                                                                retry is None)):
                self.stats.reaped += 1
                done = dataclasses.replace(run, status=RunStatus.FAILED, finished_at=now, error=error)
                events.extend(outcome_events(done, retry, now))
        await self._publish(events)
        return len(expired)

    async def run(self) -> None:
        """Loop until :meth:`stop`: tick, then sleep until the next due time or a wake-up."""
        watcher = asyncio.create_task(self._watch_bus(), name="chronos-scheduler-wake")
        try:
            while not self._stopping:
                self._wake.clear()
                began, handed = self._clock.now(), self.stats.fired + self.stats.retries_dispatched
                try:
                    nxt = await self.tick()
                except ChronosError as exc:  # store or queue unavailable: keep trying
                    log.warning("scheduler tick failed: %s", exc)
                    nxt = None
                    self._hold_reaping()
                except Exception:  # a driver error or a bug: log it loudly, and keep the loop alive
                    log.exception("scheduler tick failed")
                    nxt = None
                    self._hold_reaping()
                ended = self._clock.now()
                cap = ended + timedelta(seconds=self.max_sleep)
                until = cap if nxt is None or nxt > cap else nxt
                if self.stats.fired + self.stats.retries_dispatched > handed:
                    # Busy (new slots, or queued runs come due: retries, the jittered slots of a burst,
                    # due one after the other): let what comes due meanwhile form one batch. Ticks start
                    # at least ``min_interval`` apart, and the pause after one lasts as long as it took, up
                    # to 50 ms (a store whose every claim costs transactions gets fewer, larger ones; the
                    # cap keeps larger batches from lengthening the pause that made them larger).
                    floor = max(began + self.min_interval, ended + min(ended - began, _MAX_PAUSE))
                    if until < floor:
                        until = floor
                if self._held_back:  # the queue is full: look again shortly, not at once
                    until = max(until, ended + self.min_interval)
                await self._clock.sleep_until(until, self._wake)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _watch_bus(self) -> None:
        async def on_event(event: Event) -> None:
            if event.type is not EventType.RUN_RETRY_SCHEDULED and event.data.get("next_run_at", "") is None:
                return  # a job with no slot to fire (run by hand only, paused, ended): nothing to tick for
            self._wake.set()

        await watch(self._bus, set(_WAKE_ON), on_event, None, self._clock)
