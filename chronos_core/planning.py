"""The scheduling rules as pure functions: which slots of a due job fire, which are recorded as missed
or skipped, what comes next, and what a failed attempt's retry looks like. The engines and the stores
call these; they hold no state and do no I/O, so every rule is tested here without a clock or a store."""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from .hookspec import Exclusion
from .models import Job, MisfirePolicy, OverlapPolicy, Run, RunStatus, Trigger, evolve, new_run
from .ports import SlotPlan
from .schedules import Schedule, parse_schedule, parse_timezone

__all__ = [
    "MAX_CATCH_UP",
    "MAX_SLOTS_LISTED",
    "MAX_SLOTS_WALKED",
    "Limits",
    "excluded_by",
    "is_late",
    "jitter_offset",
    "jitter_order",
    "late_start",
    "next_slot",
    "plan_dropped",
    "plan_due_job",
    "plan_refused",
    "plan_retry",
    "plan_retry_unless_replaced",
    "plan_unplannable",
    "replaced_reason",
    "schedule_of",
]

MAX_SLOTS_LISTED = 1000
"""Missed slots recorded one by one per claim; further ones (a long outage of a per-second job) are
recorded as one summary run naming how many and which range."""

MAX_SLOTS_WALKED = 100_000
"""Past this many missed slots the planner stops walking them one by one and leaps to the latest ones."""

MAX_CATCH_UP = 100
"""The bound of ``fire_all``: at most this many catch-up runs per claim; older missed slots are recorded."""

_US = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Limits:
    max_slots_listed: int = MAX_SLOTS_LISTED
    max_catch_up: int = MAX_CATCH_UP


@lru_cache(maxsize=65536)
def _schedule(expression: str | None, timezone: str, anchor: datetime | None) -> Schedule:
    return parse_schedule(expression, timezone, anchor=anchor)


def schedule_of(job: Job) -> Schedule:
    """The job's parsed schedule (cached; ``@every`` is anchored at ``start_at`` or ``created_at``). Only
    ``@every`` takes the anchor: the jobs of one cron expression and zone share one schedule (and its
    last answer: a burst of 10,000 jobs at ``0 0 * * *`` computes their next slot once)."""
    expression = job.schedule
    every = expression is not None and expression.lstrip()[:6].lower() == "@every"
    return _schedule(expression, job.timezone, (job.start_at or job.created_at) if every else None)


def next_slot(job: Job, after: datetime) -> datetime | None:
    """The job's first slot strictly after ``after``, within its ``start_at``/``end_at`` window."""
    if job.start_at is not None and after < job.start_at:
        after = job.start_at - _US
    t = schedule_of(job).next_after(after)
    if t is not None and job.end_at is not None and t > job.end_at:
        return None
    return t


def _record(job: Job, slot: datetime, now: datetime, status: RunStatus, reason: str,
            trigger: Trigger = Trigger.SCHEDULE) -> Run:
    return new_run(job.id, slot, trigger, now, status=status, finished_at=now, error=reason)


def plan_refused(plan: SlotPlan, reason: str, now: datetime) -> SlotPlan:
    """``plan`` for a job this process refuses to run (a shell job with shell off): the runs it would
    start are recorded ``skipped`` with the reason instead."""
    plan.runs = [evolve(r, status=RunStatus.SKIPPED, finished_at=now, error=f"skipped: {reason}")
                 if r.status is RunStatus.QUEUED else r for r in plan.runs]
    return plan


def plan_unplannable(job: Job, now: datetime, exc: BaseException) -> SlotPlan:
    """The plan for a job the planner failed on: its slot recorded ``missed`` with the reason, and no
    further slot until the job is changed (one bad job must not stall the others)."""
    slot = job.next_run_at or now
    return SlotPlan(runs=[_record(job, slot, now, RunStatus.MISSED,
                                  f"missed: the job could not be planned ({type(exc).__name__}: {exc}); "
                                  "it fires again once it is updated")], next_run_at=None)


def plan_due_job(job: Job, active_run_ids: Sequence[str], now: datetime,
                 limits: Limits = Limits()) -> SlotPlan:
    """The plan for a job whose ``next_run_at <= now``: see ``MisfirePolicy`` and ``OverlapPolicy``;
    then the job's ``exclude`` (slots inside are recorded ``skipped``) and ``jitter`` (a queued slot is
    due at its deterministic offset, see :func:`jitter_offset`)."""
    plan = _plan_due_job(job, active_run_ids, now, limits)
    if job.exclude or job.jitter:
        _shape(job, plan, now)
    return plan


def jitter_offset(job_id: str, slot: datetime, jitter: float) -> timedelta:
    """Where in ``[0, jitter]`` seconds after its nominal time a slot starts: a hash of the job and the
    slot, so every scheduler computes the same offset, and the jobs put at ``0 * * * *`` spread out."""
    digest = hashlib.sha256(f"{job_id}|{slot.isoformat()}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64  # [0, 1)
    return timedelta(microseconds=round(fraction * jitter * 1_000_000))


def jitter_order(job_id: str, slot: datetime | None, jitter: float | None) -> int:
    """The slot's :func:`jitter_offset` in microseconds (0 without jitter or slot): what stores order the
    jobs due at one instant by, so that they are claimed in the order their jittered slots come due."""
    if not jitter or slot is None:
        return 0
    return jitter_offset(job_id, slot, jitter) // _US


def _window_matches(expression: str, timezone: str, anchor: datetime, slot: datetime) -> bool:
    """Whether the slot falls in a cron window: the minute (5 fields) or second (6) it is in matches."""
    unit = timedelta(seconds=1) if len(expression.split()) == 6 else timedelta(minutes=1)
    start = slot - (slot - datetime.min.replace(tzinfo=slot.tzinfo)) % unit
    return _schedule(expression, timezone, anchor).next_after(start - _US) == start


def excluded_by(job: Job, slot: datetime) -> tuple[int, Exclusion] | None:
    """The first of the job's exclusions the slot falls in (ranges are ``[from, to)`` in the job's zone
    when they carry no offset), or None."""
    zone = None
    for i, ex in enumerate(job.exclude):
        if ex.cron is not None:
            if _window_matches(ex.cron, job.timezone, job.created_at, slot):
                return i, ex
            continue
        assert ex.from_ is not None and ex.to is not None
        lo, hi = ex.from_, ex.to
        if lo.tzinfo is None:
            zone = zone or parse_timezone(job.timezone)
            lo, hi = lo.replace(tzinfo=zone), hi.replace(tzinfo=zone)
        if lo <= slot < hi:
            return i, ex
    return None


def _describe(ex: Exclusion) -> str:
    if ex.cron is not None:
        return f"cron {ex.cron}"
    assert ex.from_ is not None and ex.to is not None
    return f"{ex.from_.isoformat()} to {ex.to.isoformat()}"


def _shape(job: Job, plan: SlotPlan, now: datetime) -> None:
    fired = False
    for k, run in enumerate(plan.runs):
        if run.status is not RunStatus.QUEUED:
            continue
        hit = excluded_by(job, run.scheduled_for) if job.exclude else None
        if hit is not None:
            i, ex = hit
            plan.runs[k] = Run(id=run.id, job_id=run.job_id, scheduled_for=run.scheduled_for,
                               trigger=run.trigger, attempt=1, status=RunStatus.SKIPPED, created_at=now,
                               due_at=run.due_at, finished_at=now,
                               error=f"skipped: excluded by exclude[{i}] ({_describe(ex)})")
            continue
        fired = True
        if job.jitter and run.trigger is Trigger.SCHEDULE:
            run.due_at = run.scheduled_for + jitter_offset(job.id, run.scheduled_for, job.jitter)
    if not fired:
        plan.cancel = []  # nothing runs instead of what overlap replace would cancel


def _on_time(job: Job, s: datetime, cutoff: datetime) -> bool:
    """Whether slot ``s`` is reached within the grace: from its jittered time for a job with ``jitter``
    (the slot is due then, as :func:`is_late` judges it at start), so a jittered slot claimed late (a big
    burst claimed over many ticks, a scheduler that comes back) still starts at its jittered time."""
    return s >= cutoff or (bool(job.jitter) and s + jitter_offset(job.id, s, job.jitter or 0) >= cutoff)


def _plan_due_job(job: Job, active_run_ids: Sequence[str], now: datetime, limits: Limits) -> SlotPlan:
    cutoff = now - timedelta(seconds=job.misfire_grace)  # slots before it were missed
    s = job.next_run_at
    if (s is not None and s <= now and _on_time(job, s, cutoff)
            and (not active_run_ids or job.overlap is OverlapPolicy.ALLOW)):
        # The usual case, decided without the general walk below (same outcome): one slot due, on time,
        # nothing in its way.
        nxt = next_slot(job, s)
        if nxt is None or nxt > now:
            return SlotPlan(runs=[new_run(job.id, s, Trigger.SCHEDULE, now)], next_run_at=nxt, cancel=[])
    return _plan_walk(job, active_run_ids, now, limits, cutoff)


def _plan_walk(job: Job, active_run_ids: Sequence[str], now: datetime, limits: Limits,
               cutoff: datetime) -> SlotPlan:
    """The general case of :func:`plan_due_job`: walk every slot up to ``now``."""
    s = job.next_run_at
    due: list[datetime] = []
    missed: deque[datetime] = deque(maxlen=limits.max_slots_listed)  # the latest ones
    dropped, first_dropped, last_dropped = 0, None, None
    uncounted: datetime | None = None
    walked = 0
    leap_to = cutoff - timedelta(seconds=job.jitter or 0)  # (no slot before it is on time, jittered)
    while s is not None and s <= now:
        if _on_time(job, s, cutoff):
            due.append(s)
        else:
            if len(missed) == missed.maxlen:  # the oldest listed slot goes into the summary
                first_dropped = first_dropped or missed[0]
                last_dropped = missed[0]
                dropped += 1
            missed.append(s)
            walked += 1
            if walked == MAX_SLOTS_WALKED:
                nxt = next_slot(job, s)
                if nxt is not None and nxt < leap_to:
                    # An outage too long to walk slot by slot: leap to the last slots before the cutoff.
                    w = _tail_window(job, s, leap_to, limits.max_slots_listed)
                    first_dropped = first_dropped or missed[0]
                    uncounted, s = w, next_slot(job, w)
                    missed.clear()
                    continue
        s = next_slot(job, s)
    summary: Run | None = None
    if uncounted is not None and first_dropped is not None:
        # up to the leap's landing point, or further: the walk after the leap may have dropped slots
        # from the list too (the leap lands *at least* max_slots_listed slots before the cutoff)
        end = uncounted if last_dropped is None or last_dropped < uncounted else last_dropped
        summary = _record(job, first_dropped, now, RunStatus.MISSED,
                          f"more than {MAX_SLOTS_WALKED} slots from {first_dropped.isoformat()} up to "
                          f"{end.isoformat()} were missed (too many to count one by one; listed as one)")
    elif dropped and first_dropped is not None and last_dropped is not None:
        summary = _record(job, first_dropped, now, RunStatus.MISSED,
                          f"{dropped} slots from {first_dropped.isoformat()} to {last_dropped.isoformat()} "
                          f"were missed (more than {limits.max_slots_listed} in one outage; listed as one)")

    listed = list(missed)
    runs: list[Run] = []
    fire: list[tuple[datetime, Trigger]] = [(d, Trigger.SCHEDULE) for d in due]
    late = f"missed: the scheduler reached it more than {job.misfire_grace:g}s late"
    if listed:
        if job.misfire is MisfirePolicy.SKIP:
            keep: list[datetime] = []
        elif job.misfire is MisfirePolicy.FIRE_ONCE:
            keep = [] if due else listed[-1:]
        else:
            keep = listed[-limits.max_catch_up:]
        why = {
            MisfirePolicy.SKIP: late + " (misfire policy skip)",
            MisfirePolicy.FIRE_ONCE: late + (" (misfire policy fire_once: an on-time slot runs instead)"
                                            if due else " (misfire policy fire_once: the latest one runs)"),
            MisfirePolicy.FIRE_ALL: late + f" (misfire policy fire_all runs at most "
                                           f"{limits.max_catch_up} catch-up runs)",
        }[job.misfire]
        kept = set(keep)
        runs.extend(_record(job, m, now, RunStatus.MISSED, why) for m in listed if m not in kept)
        fire = [(k, Trigger.CATCH_UP) for k in keep] + fire
    if summary is not None:
        runs.insert(0, summary)

    cancel: list[str] = []
    if fire:
        if job.overlap is OverlapPolicy.FORBID:
            if active_run_ids:
                blocked, fire = fire, []
                why_skip = f"skipped: the previous run {active_run_ids[0]} is still active (overlap forbid)"
            else:
                blocked, fire = fire[1:], fire[:1]
                why_skip = f"skipped: the run for {fire[0][0].isoformat()} is still active (overlap forbid)"
            runs.extend(_record(job, b, now, RunStatus.SKIPPED, why_skip, t) for b, t in blocked)
        elif job.overlap is OverlapPolicy.REPLACE:
            cancel = list(active_run_ids)
            newest = fire[-1][0].isoformat()
            runs.extend(_record(job, b, now, RunStatus.SKIPPED,
                                f"skipped: replaced by the run for {newest} (overlap replace)", t)
                        for b, t in fire[:-1])
            fire = fire[-1:]
        runs.extend(new_run(job.id, f, t, now) for f, t in fire)
    return SlotPlan(runs=runs, next_run_at=s, cancel=cancel)


def is_late(job: Job, run: Run, now: datetime) -> bool:
    """Whether a run reaching a worker at ``now`` is a late slot the misfire policy may drop: a slot's
    first attempt (not a catch-up, retry or manual run) past the job's ``misfire_grace``, of a job whose
    policy is not ``fire_all`` (late runs are what it asks for). Late from when it was due: its slot, or
    for a job with ``jitter`` its slot plus the slot's offset (handed out then, it is on time)."""
    return (run.trigger is Trigger.SCHEDULE and run.attempt == 1 and job.misfire is not MisfirePolicy.FIRE_ALL
            and (now - run.due_at).total_seconds() > job.misfire_grace)


def late_start(job: Job, run: Run, now: datetime, last_started: datetime | None = None) -> str | None:
    """Why a run that reaches a worker at ``now`` is recorded ``missed`` instead of started (None: it
    starts). The misfire grace holds when a run finally starts, as at claim (:func:`is_late`: a queue
    backed up, workers down). ``skip`` records every late run. ``fire_once`` runs one late run for a
    backlog: a late run is recorded only if a run of the job started at or after it was due
    (``last_started``: the latest start the worker knows of, a run it started itself or the job's
    summary's last finished attempt), which stands for it; so a job its workers trail steadily still
    runs, about once per lag."""
    if not is_late(job, run, now):
        return None
    late = (now - run.due_at).total_seconds()
    if job.misfire is MisfirePolicy.FIRE_ONCE:
        if last_started is None or last_started < run.due_at:
            return None
        why = (f"misfire policy fire_once: the run started at {last_started.isoformat()} stands for it")
    else:
        why = "misfire policy skip"
    since = "its slot" if run.due_at == run.scheduled_for else "its start time (its slot plus its jitter)"
    return (f"missed: it reached a worker {late:.3g}s after {since}, past the misfire grace "
            f"({job.misfire_grace:g}s; {why})")


def replaced_reason(slot: datetime) -> str:
    """The error of a queued run cancelled by a newer slot's run (overlap ``replace``)."""
    return f"cancelled: replaced by the run for {slot.isoformat()} before it started (overlap replace)"


def plan_dropped(job: Job, now: datetime, reason: str, limits: Limits = Limits()) -> list[Run]:
    """Records (``skipped``, ``reason``) of the job's slots from its ``next_run_at`` up to ``now``: the
    slots a change (a pause, new timing) takes away before the scheduler fired them, as it does when it
    is behind. The first ``max_slots_listed`` one by one, the rest as one summary record (the walk stops
    after ``MAX_SLOTS_WALKED`` of them: the summary then says "at least")."""
    out: list[Run] = []
    s = job.next_run_at
    more, first_more, last_more = 0, None, None
    while s is not None and s <= now:
        if len(out) < limits.max_slots_listed:
            out.append(_record(job, s, now, RunStatus.SKIPPED, f"skipped: {reason}"))
        else:
            first_more, last_more, more = first_more or s, s, more + 1
            if more == MAX_SLOTS_WALKED:
                last_more = now
                break
        s = next_slot(job, s)
    if first_more is not None and last_more is not None:
        count = f"at least {more}" if more == MAX_SLOTS_WALKED else str(more)
        out.append(_record(job, first_more, now, RunStatus.SKIPPED,
                           f"skipped: {reason}: {count} more slots from {first_more.isoformat()} to "
                           f"{last_more.isoformat()} (listed as one)"))
    return out


def _tail_window(job: Job, start: datetime, cutoff: datetime, n: int) -> datetime:
    """A time in [start, cutoff) after which at least ``n`` of the job's slots come before ``cutoff``
    (or ``start`` itself), found by doubling a look-back from the cutoff."""
    back = timedelta(seconds=1)
    while True:
        w = cutoff - back
        if w <= start:
            return start
        count, t = 0, next_slot(job, w)
        while t is not None and t < cutoff and count < n:
            count, t = count + 1, next_slot(job, t)
        if count >= n:
            return w
        back *= 2


def plan_retry(job: Job, run: Run, now: datetime, rng: random.Random | None = None) -> Run | None:
    """The next attempt after ``run`` failed (queued, due after the policy's delay), or None when the
    retry policy allows no more attempts."""
    if not job.retry.should_retry(run.attempt):
        return None
    wait = job.retry.next_delay(run.attempt, rng)
    return new_run(run.job_id, run.scheduled_for, Trigger.RETRY, now, attempt=run.attempt + 1,
                   due_at=now + timedelta(seconds=wait))


NOT_RETRIED_REPLACED = "not retried: a newer slot replaced it (overlap replace)"


async def plan_retry_unless_replaced(job: Job, run: Run, now: datetime,
                                     replaced: Callable[[Run], Awaitable[bool]]
                                     ) -> tuple[Run | None, str | None]:
    """The retry of a failed attempt (:func:`plan_retry`), unless overlap ``replace`` put a newer slot's
    run in its place meanwhile: a replaced run stays replaced. ``replaced`` (a store read) is asked only
    for a ``replace`` job that would be retried. The retry (or None) and, when the replacement is what
    stopped it, the note for the run's error. One rule for the worker (an attempt it ran) and the
    reaper (an attempt whose worker died)."""
    retry = plan_retry(job, run, now)
    if retry is not None and job.overlap is OverlapPolicy.REPLACE and await replaced(run):
        return None, NOT_RETRIED_REPLACED
    return retry, None
