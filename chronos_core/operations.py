"""What users do with jobs and runs: the operations behind both the Python API and the REST API.

Each operation validates its input into precise exceptions, applies the domain rules (the next slot, the
redaction of secrets, the manual trigger), writes through the store and publishes the events. The REST
handlers and ``Chronos.jobs`` call these; they hold no rules of their own.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from .errors import (
    FieldError,
    InvalidArgument,
    InvalidJob,
    JobNotFound,
    NameConflict,
    RunConflict,
    ShellNotAllowed,
    StoreUnavailable,
)
from .events import cancel_request, job_event, publish_best_effort, run_event
from .filters import enum_set
from .hooks import Notice, NoticeKind, NoticeStatus, redact_notify, restore_notify
from .hookspec import NotifyRule, notify_problems
from .ids import new_id
from .logs import follow_output
from .models import (
    Event,
    EventType,
    Job,
    JobSpec,
    JobStatus,
    JobSummary,
    Run,
    RunStatus,
    Trigger,
    new_run,
)
from .payloads import REDACTED, JobTypes, field_errors
from .planning import next_slot, plan_dropped
from .ports import Clock, Dispatch, DispatchQueue, EventBus, Executor, Store, StoreStats, Subscription
from .schedules import OneOffSchedule, parse_schedule, parse_timezone
from .streams import Resumed, resume

__all__ = ["ApplyResult", "Events", "Jobs", "Runs", "merge_patch", "restore_redacted"]

log = logging.getLogger("chronos.operations")


def _spec(data: JobSpec | Mapping[str, Any]) -> JobSpec:
    if isinstance(data, JobSpec):
        return data
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc)) from None


def _notify_errors(rules: Sequence[NotifyRule]) -> list[FieldError]:
    return [FieldError(loc, reason) for loc, reason in notify_problems(rules)]


def restore_redacted(new: Any, old: Any) -> Any:
    """``new`` with every ``"***"`` (as shown to users in place of a secret) put back to the value in
    ``old``, so a job read, edited and written back keeps its secrets."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {k: (old[k] if v == REDACTED and k in old else restore_redacted(v, old.get(k)))
                for k, v in new.items()}
    return new


@dataclasses.dataclass(slots=True)
class ApplyResult:
    """What :meth:`Jobs.apply` did (or, with ``dry_run``, would do), by job name. ``jobs`` are the jobs
    of the applied set as stored afterwards (empty on a dry run)."""

    created: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    unchanged: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)
    dry_run: bool = False
    jobs: list[Job] = dataclasses.field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


class Jobs:
    """Create, read, change, pause, trigger and delete jobs; read and clear their history."""

    def __init__(self, store: Store, queue: DispatchQueue, bus: EventBus, clock: Clock,
                 job_types: JobTypes, *, allow_shell: bool = True,
                 executors: Mapping[str, Executor] | None = None) -> None:
        self._store = store
        self._queue = queue
        self._bus = bus
        self._clock = clock
        self.types = job_types
        self.allow_shell = allow_shell
        # the executors this process knows (a live mapping: types registered later count): each may
        # refuse a payload its configuration could never run (Executor.check_payload)
        self.executors: Mapping[str, Executor] = executors if executors is not None else {}

    # validation -----------------------------------------------------------------------------------
    def validate(self, data: JobSpec | Mapping[str, Any], *, previous: Job | None = None) -> JobSpec:
        """The spec, checked as a whole; :class:`InvalidJob` lists every bad field at once. A job that
        could never run is refused too: an ``@at`` time already past (unless ``previous``, the stored
        job, had the same schedule), a payload an executor here cannot run (an unknown connection)."""
        spec = _spec(data)
        errors: list[FieldError] = []
        if spec.type not in self.types:
            errors.append(FieldError(("type",), f"unknown job type {spec.type!r}; known: "
                                     f"{', '.join(self.types.names)}"))
        elif spec.type == "shell" and not self.allow_shell:
            raise ShellNotAllowed()
        else:
            try:
                payload = self.types.validate(spec.type, spec.payload)
                spec = spec.model_copy(update={"payload": payload})
            except InvalidJob as exc:
                errors.extend(exc.errors)
            else:
                executor = self.executors.get(spec.type)
                if executor is not None:
                    errors.extend(executor.check_payload(payload))
        if spec.start_at and spec.start_at.tzinfo is None:
            errors.append(FieldError(("start_at",), "needs a UTC offset, e.g. 2027-01-01T09:00:00Z"))
        if spec.end_at and spec.end_at.tzinfo is None:
            errors.append(FieldError(("end_at",), "needs a UTC offset, e.g. 2027-01-01T09:00:00Z"))
        for name in ("start_at", "end_at"):
            value = getattr(spec, name)
            try:
                if value is not None and value.tzinfo is not None:
                    value.astimezone(UTC)
            except OverflowError:  # 0001-01-01T00:00+14:00 is before the first UTC time there is
                errors.append(FieldError((name,), "out of the supported range (years 1-9999 in UTC)"))
        if (spec.start_at and spec.end_at and spec.start_at.tzinfo and spec.end_at.tzinfo
                and spec.end_at <= spec.start_at):
            errors.append(FieldError(("end_at",), "must be after start_at"))
        # the header bounds (the byte bound too, which JobSpec checked already): on input only, never
        # when a store reads a job back (review-secfix F3); update measures again once *** is restored
        errors.extend(_notify_errors(spec.notify))
        caught: list[InvalidJob] = []
        try:
            parse_timezone(spec.timezone)
            zone = spec.timezone
        except InvalidJob as exc:
            caught.append(exc)
            zone = "UTC"  # still check the expression itself
        try:
            schedule = parse_schedule(spec.schedule, zone)
        except InvalidJob as exc:
            caught.append(exc)
        else:
            changed = previous is None or (previous.schedule, previous.timezone) != (spec.schedule or None,
                                                                                   spec.timezone)
            now = self._clock.now()
            if changed and isinstance(schedule, OneOffSchedule) and schedule.at <= now:
                errors.append(FieldError(("schedule",), "the @at time is in the past "
                                         f"(now: {now.isoformat(timespec='seconds')}), so the job would "
                                         "never run; give a future time, or no schedule for a job run by "
                                         "hand"))
        for i, ex in enumerate(spec.exclude):
            if ex.cron is not None:
                try:
                    parse_schedule(ex.cron, zone)
                except InvalidJob as exc:
                    errors.extend(FieldError(("exclude", i, "cron"), e.reason) for e in exc.errors)
                    continue
                if len(ex.cron.split()) not in (5, 6):
                    errors.append(FieldError(("exclude", i, "cron"), "a cron window has 5 fields (or 6, "
                                             "seconds first), e.g. '* * * * sat,sun' or '* 0-6 * * *'"))
        if len(caught) == 1 and not errors:
            raise caught[0]  # the only problem: keep its precise type (InvalidSchedule)
        for err in caught:
            errors.extend(err.errors)
        if errors:
            raise InvalidJob(errors)
        return spec

    def _build(self, spec: JobSpec, now: datetime) -> Job:
        job = Job(id=new_id(), name=spec.name, type=spec.type, payload=spec.payload,
                  schedule=spec.schedule or None, timezone=spec.timezone, description=spec.description,
                  retry=spec.retry, timeout=spec.timeout, overlap=spec.overlap, misfire=spec.misfire,
                  misfire_grace=spec.misfire_grace, status=spec.status, start_at=spec.start_at,
                  end_at=spec.end_at, history_limit=spec.history_limit, created_at=now, updated_at=now,
                  notify=list(spec.notify), then=list(spec.then),
                  pause_after_failures=spec.pause_after_failures, alert_after=spec.alert_after,
                  jitter=spec.jitter, exclude=list(spec.exclude))
        if job.status is JobStatus.ACTIVE:
            job.next_run_at = next_slot(job, now)
        return job

    # commands -------------------------------------------------------------------------------------
    async def create(self, data: JobSpec | Mapping[str, Any]) -> Job:
        """Create a job. :class:`InvalidJob` / :class:`InvalidSchedule` / :class:`NameConflict`."""
        spec = self.validate(data)
        await self._check_chains([spec])
        return (await self._add([spec]))[0]

    async def _check_chains(self, specs: Sequence[JobSpec], *, index: bool = False) -> None:
        """Refuse ``then`` chains that lead back to the job (A→B→A), through the stored jobs and the
        ``specs`` (which replace stored jobs of the same name); the error shows the cycle."""
        given = {s.name: [c.job for c in s.then] for s in specs}
        cache: dict[str, builtins.list[str]] = {}

        async def targets(name: str) -> builtins.list[str]:
            if name in given:
                return given[name]
            if name not in cache:
                try:
                    cache[name] = [c.job for c in (await self._store.get_job_by_name(name)).then]
                except LookupError:
                    cache[name] = []
            return cache[name]

        errors: builtins.list[FieldError] = []
        for i, spec in enumerate(specs):
            if not spec.then:
                continue
            # depth-first from the job's targets, the path kept: a path reaching the job is a cycle
            stack: builtins.list[builtins.list[str]] = [[spec.name, t] for t in reversed(given[spec.name])]
            seen: set[str] = set()
            while stack and len(seen) < 10_000:
                path = stack.pop()
                last = path[-1]
                if last == spec.name:
                    loc: tuple[str | int, ...] = (i, "then") if index else ("then",)
                    errors.append(FieldError(loc, "the chain comes back to this job: "
                                             + " -> ".join(path)))
                    break
                if last in seen:
                    continue
                seen.add(last)
                stack.extend([*path, t] for t in reversed(await targets(last)))
        if errors:
            raise InvalidJob(errors)

    async def create_many(self, items: Iterable[JobSpec | Mapping[str, Any]]) -> list[Job]:
        """Create many jobs in one write, all or none. Field errors are located by the item's index
        (``(3, "schedule")``)."""
        specs: list[JobSpec] = []
        for i, item in enumerate(items):
            try:
                specs.append(self.validate(item))
            except InvalidJob as exc:
                raise InvalidJob([dataclasses.replace(e, loc=(i, *e.loc)) for e in exc.errors]) from None
        await self._check_chains(specs, index=True)
        return await self._add(specs)

    async def _add(self, specs: Sequence[JobSpec]) -> list[Job]:
        now = self._clock.now()
        jobs = [self._build(s, now) for s in specs]
        await self._store.add_jobs(jobs)
        await publish_best_effort(self._bus, [job_event(EventType.JOB_CREATED, j, now) for j in jobs], log)
        return jobs

    async def apply(self, specs: Iterable[JobSpec | Mapping[str, Any]], *, prune: bool = False,
                    dry_run: bool = False) -> ApplyResult:
        """Make the jobs named in ``specs`` be as given (jobs as code): create the missing ones, update
        those whose definition differs, leave the rest alone; with ``prune``, delete every other job.
        Applying the same set twice changes nothing the second time. A job's ``status`` (paused by hand)
        stays unless the spec gives one. Everything is validated before
        anything is written (:class:`InvalidJob` locates a field by the item's index, a name given twice
        included); then each job is written on its own, so a failure midway (the store down) leaves the
        earlier ones applied and applying again completes it. ``dry_run``: only say what would change.
        A job of the set created elsewhere meanwhile (programs declaring their jobs at every start,
        started together) makes it read again and decide again."""
        items = list(specs)
        for tries in range(_APPLY_TRIES):
            try:
                return await self._apply(items, prune, dry_run)
            except NameConflict:
                if tries == _APPLY_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def _apply(self, items: builtins.list[JobSpec | Mapping[str, Any]], prune: bool,
                     dry_run: bool) -> ApplyResult:
        result = ApplyResult(dry_run=dry_run)
        plan: list[tuple[JobSpec, Job | None]] = []
        errors: list[FieldError] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            try:
                spec = _spec(item)
                if spec.name in seen:
                    errors.append(FieldError((i, "name"), f"{spec.name!r} is also job #{seen[spec.name]} "
                                             "of this set"))
                    continue
                seen[spec.name] = i
                old = await self._by_name(spec.name)
                if old is not None and "status" not in spec.model_fields_set:
                    # paused or resumed by hand: a set that does not say keeps it so
                    spec = spec.model_copy(update={"status": old.status})
                if old is not None and spec.type == old.type:
                    spec = spec.model_copy(update={"payload": self.types.restore(
                        spec.type, spec.payload, old.payload)})
                plan.append((self.validate(spec, previous=old), old))
            except InvalidJob as exc:
                errors.extend(dataclasses.replace(e, loc=(i, *e.loc)) for e in exc.errors)
        if errors:
            raise InvalidJob(errors)
        to_create = [spec for spec, old in plan if old is None]
        for spec, old in plan:
            if old is None:
                result.created.append(spec.name)
            elif _definition(old.spec()) == _definition(spec):
                result.unchanged.append(spec.name)
            else:
                result.updated.append(spec.name)
        stale: list[Job] = []
        if prune:
            after = None
            while page := await self._store.list_jobs(after=after, limit=500):
                stale.extend(j for j in page if j.name not in seen)
                after = page[-1].id
            result.deleted = [j.name for j in stale]
        if dry_run:
            return result
        created = {j.name: j for j in await self._add(to_create)} if to_create else {}
        for spec, old in plan:
            if old is None:
                result.jobs.append(created[spec.name])
            elif spec.name in result.updated:
                result.jobs.append(await self.update(old.id, spec))
            else:
                result.jobs.append(old)
        for job in stale:
            with contextlib.suppress(JobNotFound):  # deleted meanwhile: what prune wanted
                await self.delete(job.id)
        return result

    async def _by_name(self, name: str) -> Job | None:
        try:
            return await self._store.get_job_by_name(name)
        except JobNotFound:
            return None

    async def get(self, job_id: str) -> Job:
        return await self._store.get_job(job_id)

    async def get_by_name(self, name: str) -> Job:
        return await self._store.get_job_by_name(name)

    async def list(self, *, status: JobStatus | str | None = None, type: str | None = None,
                   name: str | None = None, after: str | None = None, limit: int = 100,
                   last_status: Collection[RunStatus | str] | RunStatus | str | None = None) -> list[Job]:
        """Jobs in creation order after the job id ``after``; ``name`` is a prefix; ``last_status``: jobs
        whose last run ended so (e.g. ``{"failed", "timed_out"}``)."""
        return await self._store.list_jobs(status=JobStatus(status) if status else None, type=type,
                                           name=name, after=after, limit=limit,
                                           last_status=_statuses(last_status, "last_status"))

    async def list_with_summaries(self, *, status: JobStatus | str | None = None, type: str | None = None,
                                  name: str | None = None, after: str | None = None, limit: int = 100,
                                  last_status: Collection[RunStatus | str] | RunStatus | str | None = None
                                  ) -> builtins.list[tuple[Job, JobSummary]]:
        """:meth:`list` with each job's summary of its runs (see :meth:`summaries`), read together."""
        return await self._store.list_jobs_with_summaries(
            status=JobStatus(status) if status else None, type=type, name=name, after=after, limit=limit,
            last_status=_statuses(last_status, "last_status"))

    async def summaries(self, jobs: Iterable[Job]) -> dict[str, JobSummary]:
        """Each job's summary of its runs (kept by the engines with every outcome; see ``JobSummary``)."""
        return await self._store.job_summaries([j.id for j in jobs])

    @staticmethod
    def next_runs(job: Job, count: int = 3) -> builtins.list[datetime]:
        """The job's next ``count`` fire times (from its ``next_run_at``; none while paused)."""
        out: builtins.list[datetime] = []
        t = job.next_run_at
        while t is not None and len(out) < count:
            out.append(t)
            try:
                t = next_slot(job, t)
            except (OverflowError, ValueError):  # past year 9999
                break
        return out

    async def update(self, job_id: str, data: JobSpec | Mapping[str, Any]) -> Job:
        """Replace a job's definition (id, creation time and history stay). Secrets shown as ``***``
        keep their stored value. The next slot is recomputed when timing fields change (or the job had
        none, e.g. it was parked after it could not be planned); slots due but not fired yet that this
        takes away are recorded ``skipped``.

        Only the fields that changed are written, as a compare-and-set on the job as read (see
        :meth:`Store.change_job`): a claim advancing ``next_run_at`` meanwhile is never wound back, and
        a concurrent change makes this one read the job again and decide again."""
        given = _spec(data)

        async def change(old: Job, now: datetime) -> tuple[dict[str, Any], list[Run]] | None:
            spec = given
            if spec.type == old.type:  # secrets shown as *** stay, unless what they are bound to changed
                spec = spec.model_copy(update={"payload": self.types.restore(spec.type, spec.payload,
                                                                             old.payload)})
            spec = self.validate(spec, previous=old)
            if spec.notify:  # webhook secrets and headers shown as *** stay, unless the url moved
                spec = spec.model_copy(update={"notify": restore_notify(spec.notify, old.notify)})
                # measured again as it will be stored: the *** put back may be far longer than sent
                # (review-secfix F1: PUT/PATCH/apply grew notify past NOTIFY_MAX_BYTES on memory and
                # SQLite while MySQL refused); a job stored over a bound must be brought within it
                if errors := _notify_errors(spec.notify):
                    raise InvalidJob(errors)
            await self._check_chains([spec])
            job = self._build(spec, old.created_at)
            if job.status is JobStatus.PAUSED and old.status is JobStatus.PAUSED:
                job.paused_reason = old.paused_reason  # why Chronos paused it, while it stays paused
            changes = {f: getattr(job, f) for f in _DEFINITION if getattr(job, f) != getattr(old, f)}
            records: list[Run] = []
            if job.status is JobStatus.ACTIVE:
                same = all(getattr(old, f) == getattr(job, f) for f in _TIMING)
                if not same or old.next_run_at is None:  # new timing, or a parked job: re-armed
                    changes["next_run_at"] = next_slot(job, now)
            elif old.next_run_at is not None:
                changes["next_run_at"] = None
            if "next_run_at" in changes:
                why = ("the job was paused" if job.status is JobStatus.PAUSED
                       else "the job's timing was changed")
                records = self._dropped(old, now, why)
            return changes, records
        return await self._change(job_id, change, EventType.JOB_UPDATED)

    def _dropped(self, old: Job, now: datetime, why: str) -> builtins.list[Run]:
        """Records of the slots of ``old`` due by ``now`` that the scheduler has not fired yet (it is
        behind), which a change of ``next_run_at`` takes away."""
        if old.status is not JobStatus.ACTIVE or old.next_run_at is None or old.next_run_at > now:
            return []
        return plan_dropped(old, now, f"{why} before the scheduler fired this slot")

    async def _change(self, job_id: str,
                      decide: Callable[[Job, datetime], Awaitable[tuple[dict[str, Any], builtins.list[Run]]
                                                                  | None]],
                      kind: EventType) -> Job:
        """Read the job, let ``decide(old, now)`` say what changes (None: nothing) and which records go
        with it, and write that conditionally; again from a fresh read while another write got there
        first."""
        for _ in range(_CHANGE_TRIES):
            old = await self._store.get_job(job_id)
            now = self._clock.now()
            decided = await decide(old, now)
            if decided is None:
                return old
            changes, records = decided
            # updated_at is the row's version: it moves forward with every change, even within one tick
            changes["updated_at"] = now if now > old.updated_at else old.updated_at + _US
            done = await self._store.change_job(old, changes, records=records)
            if done is None:
                continue  # changed meanwhile (another write, or a claim moved next_run_at)
            events = [job_event(kind, done.job, now)]
            events.extend(run_event(r, now) for r in done.recorded)
            await publish_best_effort(self._bus, events, log)
            return done.job
        raise StoreUnavailable(f"job {job_id} kept changing while this change was being written; "
                               "try again")

    async def patch(self, job_id: str, patch: Mapping[str, Any]) -> Job:
        """Change some fields of a job's definition: ``patch`` is a JSON merge patch (RFC 7396) of its
        definition (``Job.spec()`` as JSON): objects merge, ``null`` removes a member (the field takes its
        default), anything else replaces. Then as :meth:`update`."""
        old = await self._store.get_job(job_id)
        current = old.spec().model_dump(mode="json", by_alias=True)
        # merged into the job as shown (secrets as ***): update's rules then decide whether the stored
        # secrets stay (a patch moving the url to another origin must send them again)
        current["payload"] = self.types.redact(old.type, old.payload)
        current["notify"] = redact_notify(old.notify)
        return await self.update(job_id, merge_patch(current, patch))

    async def pause(self, job_id: str) -> Job:
        """Stop firing the job's slots (a manual trigger still works). No slots are generated while
        paused; resuming starts from the next slot after the moment of resuming."""
        return await self._set_status(job_id, JobStatus.PAUSED)

    async def resume(self, job_id: str) -> Job:
        return await self._set_status(job_id, JobStatus.ACTIVE)

    async def set_status(self, job_id: str, status: JobStatus | str) -> Job:
        try:
            value = JobStatus(status)
        except ValueError:
            raise InvalidArgument.single(("status",), "must be 'active' or 'paused'") from None
        return await self._set_status(job_id, value)

    async def _set_status(self, job_id: str, status: JobStatus) -> Job:
        """Only the status and the next slot are written, conditionally (a concurrent PUT is not lost);
        a pause records the slots due but not fired yet (the scheduler is behind) as skipped."""
        async def change(old: Job, now: datetime) -> tuple[dict[str, Any], builtins.list[Run]] | None:
            if old.status is status:
                return None
            nxt = next_slot(dataclasses.replace(old, status=status), now) if status is JobStatus.ACTIVE \
                else None
            changes: dict[str, Any] = {"status": status, "next_run_at": nxt}
            if old.paused_reason is not None:
                changes["paused_reason"] = None
            return changes, self._dropped(old, now, "the job was paused")
        kind = EventType.JOB_RESUMED if status is JobStatus.ACTIVE else EventType.JOB_PAUSED
        return await self._change(job_id, change, kind)

    async def delete(self, job_id: str) -> None:
        """Delete the job and its history; runs still going are asked to cancel."""
        job = await self._store.get_job(job_id)
        removed = await self._store.delete_job(job_id)  # the active runs, as the delete found them
        now = self._clock.now()
        # queued ones too: one may be starting as it is deleted (a worker not holding it ignores it)
        events = [cancel_request(r.id, now, "job deleted", job_id) for r in removed]
        events.append(job_event(EventType.JOB_DELETED, job, now))
        # best-effort: a running run of a deleted job is also stopped by its worker's next heartbeat
        await publish_best_effort(self._bus, events, log, f"job {job_id} deleted")

    async def trigger(self, job_id: str) -> Run:
        """Run the job now, whatever its schedule, status or overlap policy; the run is returned queued."""
        job = await self._store.get_job(job_id)
        if job.type == "shell" and not self.allow_shell:
            raise ShellNotAllowed()  # stored before shell was switched off: it could only fail
        now = self._clock.now()
        run = new_run(job.id, now, Trigger.MANUAL, now)
        try:
            await self._store.add_run(run, dispatched=True)
        except StoreUnavailable:
            # The insert may have committed with its answer lost (the connection broke after the commit):
            # then the run is recorded as handed out, and nothing will put it. Leave it to the scheduler
            # (a no-op if it was not inserted); the caller still gets the error.
            with contextlib.suppress(StoreUnavailable):
                await self._store.release_undispatched([run.id])
            raise
        # best-effort: an error here must not leave the run recorded but in nobody's hands
        await publish_best_effort(self._bus, [run_event(run, now)], log, f"run {run.id}")
        try:
            await self._queue.put([Dispatch(run, job)])
        except Exception as exc:
            # Recorded but in nobody's hands: leave it to the scheduler's next tick to hand out.
            log.warning("run %s: the dispatch queue failed (%s); the scheduler will dispatch it", run.id, exc)
            await self._store.release_undispatched([run.id])
        return run

    async def history(self, job_id: str, *, status: Collection[RunStatus | str] | RunStatus | str |
                      None = None, before: str | None = None, limit: int = 50) -> builtins.list[Run]:
        """The job's runs, newest first; ``before`` is the id of the last run of the previous page."""
        try:
            statuses = _statuses(status)
        except InvalidArgument:
            await self._store.get_job(job_id)  # an unknown job is said first
            raise
        runs = await self._store.list_runs(job_id, status=statuses, before=before, limit=limit)
        if not runs:  # runs found say the job exists (a job's runs are deleted with it): no second read
            await self._store.get_job(job_id)
        return runs

    async def delete_history(self, job_id: str) -> int:
        """Delete the job's finished runs; returns how many."""
        return await self._store.delete_runs(job_id)


_DEFINITION = tuple(f.name for f in dataclasses.fields(Job)
                    if f.name not in ("id", "created_at", "updated_at", "next_run_at"))
"""The fields of a job a PUT replaces: all but its id, creation time, version and next slot."""
_TIMING = ("schedule", "timezone", "start_at", "end_at", "status")
_CHANGE_TRIES = 50
_APPLY_TRIES = 5
_US = timedelta(microseconds=1)


def _definition(spec: JobSpec) -> dict[str, Any]:
    """A spec as comparable data (what :meth:`Jobs.apply` compares; times compare as instants)."""
    data = spec.model_dump(by_alias=True)
    data["schedule"] = data.get("schedule") or None
    return data


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: ``patch`` applied to ``target`` (neither is changed)."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _statuses(status: Collection[RunStatus | str] | RunStatus | str | None,
              name: str = "status") -> set[RunStatus] | None:
    return enum_set(RunStatus, status, name, "run status")


def _triggers(trigger: Collection[Trigger | str] | Trigger | str | None) -> set[Trigger] | None:
    return enum_set(Trigger, trigger, "trigger", "trigger")


class Runs:
    """Read and cancel runs."""

    def __init__(self, store: Store, bus: EventBus, clock: Clock) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock

    async def get(self, run_id: str) -> Run:
        return await self._store.get_run(run_id)

    async def notices(self, run_id: str) -> builtins.list[Notice]:
        """What the run's outcome set off (notifications, chained runs, an auto-pause) and how each
        delivery went. :class:`RunNotFound` if there is no such run."""
        await self._store.get_run(run_id)
        return await self._store.list_notices(run_id=run_id)

    async def links(self, run: Run) -> tuple[str | None, builtins.list[str]]:
        """The run that chained this one (or None) and the runs this one chained."""
        parent = None
        if run.trigger is Trigger.CHAIN:
            made = [n for n in await self._store.list_notices(result=run.id, limit=10)
                    if n.kind is NoticeKind.CHAIN]
            parent = made[0].run_id if made else None
        children = [n.result for n in await self._store.list_notices(run_id=run.id)
                    if n.kind is NoticeKind.CHAIN and n.status is NoticeStatus.DELIVERED and n.result]
        return parent, children

    async def list(self, *, job_id: str | None = None, status: Collection[RunStatus | str] | str |
                   None = None, before: str | None = None, limit: int = 50,
                   trigger: Collection[Trigger | str] | str | None = None, since: datetime | None = None,
                   until: datetime | None = None) -> builtins.list[Run]:
        """Runs of every job (or of ``job_id``), newest first, older than the run id ``before``;
        ``since``/``until`` bound ``scheduled_for`` (inclusive)."""
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise InvalidArgument.single((name,), "needs a UTC offset, e.g. 2027-01-01T09:00:00Z")
        return await self._store.list_runs(job_id, status=_statuses(status), before=before, limit=limit,
                                           trigger=_triggers(trigger), since=since, until=until)

    async def stats(self, windows: Sequence[timedelta] = (timedelta(hours=1), timedelta(days=1)),
                    top: int = 5) -> StoreStats:
        """Jobs by status, runs queued/running now, and per window (the last hour and day by default) the
        runs that ended by status and the ``top`` busiest and most failing jobs (counted per minute by
        the store as outcomes are written: cheap to poll)."""
        now = self._clock.now()
        return await self._store.stats([now - w for w in windows], top)

    async def follow(self, run_id: str, *, follow: bool = True) -> AsyncIterator[str]:
        """The run's output line by line, like ``kubectl logs [-f]``: what it printed so far (from the
        store, so from any process), then, with ``follow``, each new line until the run ends.
        :class:`RunNotFound` if there is no such run."""
        async for line in follow_output(self._store, self._bus, run_id, follow=follow):
            yield line

    async def cancel(self, run_id: str) -> Run:
        """Cancel a queued run at once, or ask the worker holding a running one to stop it (it ends
        ``cancelled``). :class:`RunConflict` if the run already finished."""
        run = await self._store.get_run(run_id)
        now = self._clock.now()
        if run.status is RunStatus.QUEUED and await self._store.cancel_queued_run(
                run_id, now, "cancelled before it started"):
            run = await self._store.get_run(run_id)
            await publish_best_effort(self._bus, [run_event(run, now)], log, f"run {run_id}")
            return run
        run = await self._store.get_run(run_id)
        if run.status is RunStatus.RUNNING:
            await self._bus.publish([cancel_request(run.id, now, "cancelled by request", run.job_id)])
            return run
        raise RunConflict(f"run {run_id} already finished ({run.status.value}); nothing to cancel")


class Events:
    """Live events: ``async for event in chronos.events.subscribe(job_id=...)``; ``resume`` for a
    client coming back with the id of the last event it saw (the SSE streams use it)."""

    def __init__(self, bus: EventBus, store: Store, clock: Clock) -> None:
        self._bus = bus
        self._store = store
        self._clock = clock

    def subscribe(self, *, job_id: str | None = None, run_id: str | None = None,
                  types: Collection[EventType | str] | None = None,
                  after: str | None = None) -> Subscription:
        kinds = {EventType(t) for t in types} if types is not None else None
        return self._bus.subscribe(job_id=job_id, run_id=run_id, types=kinds, after=after)

    async def resume(self, *, job_id: str | None = None, run_id: str | None = None,
                     types: Collection[EventType | str] | str | None = None, after: str | None = None,
                     history: int = 20) -> Resumed:
        """A subscription resumed after the event id ``after``: from the bus while it still retains it,
        else starting with the runs' current state from history (see :mod:`chronos_core.streams`).
        ``types``: as for run filters (a collection or a comma-separated string). Close
        ``.subscription`` when done (``async with resumed.subscription``)."""
        kinds = enum_set(EventType, types, "types", "event type")
        return await resume(self._bus, self._store, self._clock, job_id=job_id, run_id=run_id, types=kinds,
                            after=after, history=history)

    async def stream(self, **filters: Any) -> AsyncIterator[Event]:
        async with self.subscribe(**filters) as sub:
            async for event in sub:
                yield event
