"""The notifier engine: delivers the notices the stores write with the outcomes (see ``hooks``).

Each tick claims the due pending notices under a lease (two notifiers never hold the same one), then per
notice: ``notify`` sends the message on its channel (:class:`~chronos_core.ports.NotifyChannel`),
``chain`` inserts the chained job's run (trigger ``chain``, its id derived from the notice so a second
try cannot make a second run) and hands it to the dispatch queue, ``pause`` pauses the job with the
reason and adds its ``paused`` notifications. The attempt is recorded on the notice
(``Store.settle_notice``): delivered, pending again after a backoff (``hooks.BACKOFF``), or failed after
the last attempt. A channel that is down only delays its own notices: runs never wait for one.

Delivery is at least once: a notifier that dies after sending but before recording sends again once the
lease ends. Webhooks carry ``X-Chronos-Delivery: <notice id>`` so a receiver can tell a repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from .errors import JobNotFound, RunConflict
from .events import job_event, publish_best_effort, run_event
from .hooks import Delivery, Notice, NoticeKind, NoticeStatus, backoff, notify_notices
from .hookspec import NotifyEvent, NotifyRule
from .ids import new_id
from .models import EventType, JobStatus, Run, RunStatus, Trigger, evolve
from .planning import plan_dropped
from .ports import Clock, Dispatch, DispatchQueue, EventBus, NotifyChannel, Store

__all__ = ["Notifier", "NotifierStats"]

log = logging.getLogger("chronos.notifier")
_WAKE_ON = frozenset({EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_TIMED_OUT,
                      EventType.RUN_CANCELLED, EventType.RUN_MISSED, EventType.RUN_SKIPPED})


@dataclass
class NotifierStats:
    delivered: int = 0
    retried: int = 0
    failed: int = 0


class Notifier:
    def __init__(self, store: Store, queue: DispatchQueue, bus: EventBus, clock: Clock,
                 channels: Mapping[str, NotifyChannel], *, owner: str | None = None,
                 default_notify: Sequence[NotifyRule] = (), batch_size: int = 50,
                 lease: float = 60.0, interval: float = 1.0, concurrency: int = 32,
                 min_interval: float = 0.2) -> None:
        self._store = store
        self._queue = queue
        self._bus = bus
        self._clock = clock
        self.channels = dict(channels)
        self.owner = owner or f"notifier-{uuid.uuid4().hex[:12]}"
        self.default_notify = tuple(default_notify)
        self.batch_size = batch_size
        self.lease = timedelta(seconds=lease)
        self.interval = timedelta(seconds=interval)
        self.min_interval = timedelta(seconds=min_interval)
        self.concurrency = concurrency  # deliveries at once (each well within the lease)
        self._inflight: set[asyncio.Task[None]] = set()
        self.stats = NotifierStats()
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()  # ends the pause between claims (only stop() may cut it short)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._stopped = asyncio.Event()
            self._task = asyncio.create_task(self.run(), name="chronos-notifier")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._stopped.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        from .events import watch

        async def on_event(_: object) -> None:
            self._wake.set()

        watcher = asyncio.create_task(watch(self._bus, set(_WAKE_ON), on_event, None, self._clock),
                                      name="chronos-notifier-wake")
        try:
            while not self._stopping:
                began = self._clock.now()
                self._wake.clear()
                try:
                    busy = await self._start_due() >= self.batch_size
                except Exception as exc:  # the store is down, or a bug: keep the loop alive
                    log.warning("notifier tick failed: %s: %s", type(exc).__name__, exc)
                    busy = False
                if not busy:
                    await self._clock.sleep_until(self._clock.now() + self.interval, self._wake)
                # at most one claim per min_interval: run events wake it at the rate runs end
                await self._clock.sleep_until(began + self.min_interval, self._stopped)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            # deliveries still going: a moment to end, then cancelled (their lease ends: tried again)
            if self._inflight:
                await asyncio.wait(set(self._inflight), timeout=2)
                for task in list(self._inflight):
                    task.cancel()
                await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _start_due(self) -> int:
        """Claim what is due as far as ``concurrency`` leaves room and start handling each in its own
        task, without waiting: a slow or hanging endpoint holds up only its own notices."""
        room = min(self.batch_size, self.concurrency - len(self._inflight))
        if room <= 0:
            return 0
        now = self._clock.now()
        notices = await self._store.claim_notices(now, room, self.owner, now + self.lease)
        for n in notices:
            task = asyncio.create_task(self._handle(n), name=f"chronos-notice-{n.id}")
            self._inflight.add(task)
            task.add_done_callback(self._done)
        return len(notices)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()  # room again

    async def tick(self) -> int:
        """Claim the due notices and handle each (concurrently), waiting for all; how many were
        claimed. (For tests and tools; the loop does not wait, see ``_start_due``.)"""
        now = self._clock.now()
        notices = await self._store.claim_notices(now, self.batch_size, self.owner, now + self.lease)
        if notices:
            await asyncio.gather(*(self._handle(n) for n in notices))
        return len(notices)

    async def _handle(self, notice: Notice) -> None:
        try:
            if notice.kind is NoticeKind.CHAIN:
                outcome = await self._chain(notice)
            elif notice.kind is NoticeKind.PAUSE:
                outcome = await self._pause(notice)
            else:
                outcome = await self._send(notice)
        except Exception as exc:  # a channel's bug or the store: an attempt that failed, retried
            outcome = Delivery(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        await self._settle(notice, outcome)

    async def _settle(self, notice: Notice, outcome: Delivery) -> None:
        now = self._clock.now()
        attempts = notice.attempts + 1
        if outcome.ok:
            status, due = NoticeStatus.DELIVERED, None
            self.stats.delivered += 1
        else:
            wait = backoff(attempts) if outcome.retryable else None
            status = NoticeStatus.PENDING if wait is not None else NoticeStatus.FAILED
            due = None if wait is None else now + wait
            if wait is None:
                self.stats.failed += 1
                log.error("notice %s (%s %s of job %s) not delivered, given up after %d attempt(s): %s",
                          notice.id, notice.kind.value, notice.event, notice.job_id, attempts, outcome.error)
            else:
                self.stats.retried += 1
                log.warning("notice %s (%s %s of job %s): attempt %d failed (%s); next in %ss", notice.id,
                            notice.kind.value, notice.event, notice.job_id, attempts, outcome.error,
                            int(wait.total_seconds()))
        try:
            await self._store.settle_notice(notice.id, self.owner, status=status, now=now, due_at=due,
                                            error=outcome.error, code=outcome.code, result=outcome.result)
        except Exception as exc:  # its lease ends, and it is tried again: at least once
            log.warning("notice %s: recording the attempt failed (%s); it will be tried again", notice.id,
                        exc)

    async def _send(self, notice: Notice) -> Delivery:
        kind = next(iter(notice.target), "")
        channel = self.channels.get(kind)
        if channel is None:
            return Delivery(ok=False, retryable=False,
                            error=f"no {kind or 'notification'} channel is configured in this service")
        return await channel.deliver(notice)

    async def _chain(self, notice: Notice) -> Delivery:
        name = str(notice.target.get("job", ""))
        try:
            job = await self._store.get_job_by_name(name)
        except JobNotFound:
            return Delivery(ok=False, retryable=False, error=f"the chained job {name!r} does not exist")
        now = self._clock.now()
        # the child's id is derived from the notice: a second try after a crash finds the run it made
        child_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"chronos:chain:{notice.id}"))
        with contextlib.suppress(Exception):
            existing = await self._store.get_run(child_id)
            if existing.status is RunStatus.QUEUED:
                # made by a try whose put never came (its insert's answer was lost, or it crashed): leave it
                # to the scheduler rather than queued in nobody's hands (a second delivery is refused)
                await self._store.release_undispatched([existing.id])
            return Delivery(ok=True, result=existing.id)
        run = Run(id=child_id, job_id=job.id, scheduled_for=now, trigger=Trigger.CHAIN, attempt=1,
                  status=RunStatus.QUEUED, created_at=now, due_at=now)
        for _ in range(3):
            try:
                await self._store.add_run(run, dispatched=True)
                break
            except RunConflict:  # another run of that job has exactly this slot time: a moment later
                run = evolve(run, scheduled_for=run.scheduled_for + timedelta(microseconds=1))
        else:
            return Delivery(ok=False, error="could not find a free slot time for the chained run")
        await publish_best_effort(self._bus, [run_event(run, now)], log, f"run {run.id}")
        try:
            await self._queue.put([Dispatch(run, job)])
        except Exception as exc:
            log.warning("chained run %s: the dispatch queue failed (%s); the scheduler will dispatch it",
                        run.id, exc)
            await self._store.release_undispatched([run.id])
        log.info("job %s: run %s chained after run %s (%s)", job.name, run.id, notice.run_id, notice.event)
        return Delivery(ok=True, result=run.id)

    async def _pause(self, notice: Notice) -> Delivery:
        reason = str(notice.target.get("reason", "paused by pause_after_failures"))
        try:
            job = await self._store.get_job(notice.job_id)
        except JobNotFound:
            return Delivery(ok=True, result="the job was deleted")
        now = self._clock.now()
        for _ in range(50):  # a conditional write: a concurrent change (or claim) makes it read again
            if job.status is not JobStatus.ACTIVE:
                break  # paused already (by hand, or by this notice's earlier try)
            version = now if now > job.updated_at else job.updated_at + timedelta(microseconds=1)
            # as Jobs.pause: the slots due but not fired yet (the scheduler is behind) are recorded
            dropped = (plan_dropped(job, now, "the job was paused (pause_after_failures) before the "
                                    "scheduler fired this slot")
                       if job.next_run_at is not None and job.next_run_at <= now else [])
            done = await self._store.change_job(job, {"status": JobStatus.PAUSED, "next_run_at": None,
                                                      "paused_reason": reason, "updated_at": version},
                                                records=dropped)
            if done is not None:
                job = done.job
                event = job_event(EventType.JOB_PAUSED, job, now)
                event.data["reason"] = reason
                events = [event, *(run_event(r, now) for r in done.recorded)]
                await publish_best_effort(self._bus, events, log, f"job {job.id} paused")
                log.warning("job %s %s", job.name, reason)
                break
            job = await self._store.get_job(notice.job_id)
            now = self._clock.now()
        else:
            return Delivery(ok=False, error="the job kept changing while it was being paused")
        run = dict(notice.data.get("run") or {})
        notices = notify_notices(job.notify or self.default_notify, NotifyEvent.PAUSED, key=notice.key,
                                 job_id=job.id, job_name=job.name, run=run, now=now, new_id=new_id)
        for n in notices:
            n.data["reason"] = reason
        await self._store.add_notices(notices)
        return Delivery(ok=True, result=reason)
